"""PPO under DDP (2 gloo processes on CPU, Fabric's own launcher): each rank samples its own prompts, the policy
adapter, the critic adapter and the value head train, and the ranks stay in sync (gradients all-reduced): after
the run every trainable weight is identical on both ranks, and it moved away from where it started."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.distributed

SCRIPT = r'''
"""`python script.py RUN_DIR`; Fabric re-executes it for rank 1."""
import json
import sys
from pathlib import Path

import torch

import medlab
from medlab.objectives.ppo import PPOPolicy

RUN_DIR = Path(sys.argv[1])
MODULES = []


def rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


class Recording(PPOPolicy):
    """PPOPolicy that keeps the prompt ids of each experience and its trainable weights at the first step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ids, self.start, self.end = [], None, None
        MODULES.append(self)

    def make_experience(self, batch):
        self.ids.append(list(batch["ids"]))
        return super().make_experience(batch)

    def training_step(self, batch, batch_idx):
        if self.start is None:  # after DDP's broadcast of rank 0's weights
            self.start = {n: p.detach().clone() for n, p in self.named_parameters() if p.requires_grad}
        return super().training_step(batch, batch_idx)

    def on_train_end(self):  # before on_fit_end drops the critic adapter from the policy model
        self.end = {n: p.detach().clone() for n, p in self.named_parameters() if p.requires_grad}


overrides = ["strategy=ddp", "strategy.devices=2", "strategy.accelerator=cpu", "data.batch_size=2",
             "trainer.max_steps=4", "objective.num_ppo_epochs=2", "objective.num_mini_batches=1",
             "objective.max_new_tokens=8",
             "objective.num_generations=2", "trainer.log_every_n_steps=1", "trainer.val_every_n_steps=null",
             "trainer.progress_bar=false", "logger=csv", "export.enabled=false", "trainer.save_final_checkpoint=false",
             "trainer.ckpt_every_n_steps=null", "objective._target_=__main__.Recording"]
cfg = medlab.compose("ppo_lora", overrides, run_dir=str(RUN_DIR))
result = medlab.run(cfg)
module = MODULES[0]
trainable = module.end
groups = {"policy": [n for n in trainable if ".default." in n],
          "critic_adapter": [n for n in trainable if ".critic." in n],
          "value_head": [n for n in trainable if n.startswith("critic.value_head")]}
(RUN_DIR / f"rank{rank()}.json").write_text(json.dumps({
    "status": result.metrics["status"], "global_step": result.metrics["global_step"], "ids": module.ids,
    "sums": {n: float(p.double().sum()) for n, p in trainable.items()},
    "moved": {g: any(not torch.equal(trainable[n], module.start[n]) for n in names) for g, names in groups.items()},
    "sizes": {g: len(names) for g, names in groups.items()},
    "losses": [h["train/loss"] for h in result.history if "train/loss" in h],
}))
'''


def _env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in {"LOCAL_RANK", "RANK", "GLOBAL_RANK", "NODE_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
                        "MASTER_ADDR", "MASTER_PORT"} and not k.startswith(("SLURM_", "TORCHELASTIC_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def test_ppo_lora_under_ddp_keeps_policy_critic_and_value_head_in_sync(tmp_path):
    script = tmp_path / "ppo_ddp.py"
    script.write_text(SCRIPT)
    run_dir = tmp_path / "run"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    try:
        out = subprocess.run([sys.executable, str(script), str(run_dir)], cwd=cwd, env=_env(), capture_output=True,
                             text=True, timeout=300, start_new_session=True)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"PPO under DDP still running after 300 s:\n{str(e.stdout)[-3000:]}")
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    r0, r1 = (json.loads((run_dir / f"rank{r}.json").read_text()) for r in (0, 1))
    for r in (r0, r1):
        assert r["status"] == "completed" and r["global_step"] == 4
        assert all(v > 0 for v in r["sizes"].values()), r["sizes"]
        assert all(r["moved"].values()), r["moved"]  # policy adapter, critic adapter and value head all trained
        assert len(r["losses"]) == 4 and all(abs(v) < 1e6 for v in r["losses"])
    # each rank sampled its own prompts (2 experiences of 2 optimizer steps, 2 prompts each), disjoint per experience
    assert len(r0["ids"]) == len(r1["ids"]) == 2
    assert all(not set(a) & set(b) for a, b in zip(r0["ids"], r1["ids"]))
    # gradients all-reduced: every trainable weight is the same on both ranks after 4 optimizer steps
    assert r0["sums"].keys() == r1["sums"].keys()
    for name in r0["sums"]:
        assert r0["sums"][name] == pytest.approx(r1["sums"][name], rel=1e-6, abs=1e-7), name
