"""FSDP2 (``strategy=fsdp``) on 2 CPU processes (gloo): equivalence, sharded checkpoints, exact resume, export.

- 2 FSDP2 ranks x 4 rows equal one process x 8 rows, step for step (full fine-tune and LoRA);
- every checkpoint is sharded (one DCP shard per rank + metadata, COMPLETE last);
- the whole process group SIGKILLed in the middle of a sharded save (every shard written, no COMPLETE yet) leaves
  the previous checkpoint as the latest, and ``trainer.resume=auto`` then reproduces the uninterrupted run;
- a sharded checkpoint resumes on 1 process (2 -> 1) and a one-process checkpoint resumes sharded (1 -> 2);
- the run's ``export/`` (gathered from the shards) equals a one-process export of the same checkpoint, tensor for
  tensor, loads with transformers, and ``python -m medlab.export`` consolidates a sharded checkpoint the same way;
- one rank raising mid-step ends every rank non-zero, quickly.

The runs go through a small script (Fabric's launcher re-executes it for rank 1) that writes rank 0's logged
history to ``history.json``; independent runs are started side by side to halve the wall time.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import time
from pathlib import Path

import pytest
import torch
from test_distributed import Tree

pytestmark = [pytest.mark.distributed, pytest.mark.usefixtures("one_thread")]
# a whole process tree; generous because the 2-core test machine is shared (a hang still fails, it does not block)
PROCESS_TIMEOUT = 600

FSDP = ["strategy=fsdp", "strategy.accelerator=cpu", "strategy.devices=2", "data.batch_size=4"]
SINGLE = ["data.batch_size=8"]
COMMON = ["data.limit=64", "trainer.max_steps=6", "trainer.log_every_n_steps=1", "trainer.val_every_n_steps=null",
          "trainer.ckpt_every_n_steps=2", "trainer.keep_last_k=10", "trainer.progress_bar=false", "logger=csv"]

SCRIPT = r'''
"""python script.py ARGS_JSON: one medlab run (+ a fault), rank 0's history -> RUN_DIR/history.json."""
import json
import os
import signal
import sys
from pathlib import Path

import torch

import medlab
from medlab.engine import checkpoint as ckpt

args = json.loads(sys.argv[1])
run_dir = Path(args["run_dir"])
# trees started side by side must not meet at one rendezvous port (rank 1 inherits rank 0's environment)
os.environ.setdefault("MASTER_PORT", str(args["port"]))
fault = args.get("fault") or [None, None]


def rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


class RaiseOnRank:
    def on_train_batch_start(self, batch, idx):
        if idx == 1 and rank() == fault[1]:
            raise RuntimeError(f"injected failure on rank {fault[1]}")


if fault[0] == "kill_in_save":
    original = ckpt._commit

    def commit(tmp, final, step, *a, **k):
        if step == fault[1]:  # every rank's shard is on disk, COMPLETE is not: the whole job dies, like a lost node
            (run_dir / "killed_at").write_text(str(sorted(p.name for p in tmp.iterdir())))
            os.killpg(os.getpgid(0), signal.SIGKILL)
        return original(tmp, final, step, *a, **k)

    ckpt._commit = commit

cfg = medlab.compose(args.get("experiment"), args["overrides"], run_dir=str(run_dir))
result = medlab.run(cfg, callbacks=[RaiseOnRank()] if fault[0] == "raise" else None)
if rank() == 0:
    rows = [{k: h[k] for k in ("step", "train/loss", "train/lr")} for h in result.history if "train/loss" in h]
    (run_dir / "history.json").write_text(json.dumps(rows))
'''


def start(tmp_path: Path, name: str, overrides: list[str], fault=None, experiment=None) -> tuple[Tree, Path]:
    script = tmp_path / "fsdp_script.py"
    if not script.exists():
        script.write_text(SCRIPT)
    run_dir = tmp_path / name
    cwd = tmp_path / f"cwd-{name}"
    cwd.mkdir()
    args = {"run_dir": str(run_dir), "overrides": overrides, "fault": fault, "experiment": experiment,
            "port": _free_port()}
    return Tree([sys.executable, str(script), json.dumps(args)], cwd, tmp_path / f"{name}.log"), run_dir


_PORTS: set[int] = set()


def _free_port() -> int:
    """A free TCP port, never one handed out before in this session."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _PORTS:
            _PORTS.add(port)
            return port


def finish(*trees: Tree) -> None:
    """Wait for every tree (a hang fails), then require each to have exited 0 with no process left."""
    try:
        results = [t.wait(PROCESS_TIMEOUT) for t in trees]
    finally:
        for t in trees:
            t.kill()
    for t, (rc, left) in zip(trees, results):
        assert rc == 0 and not left, t.output()[-4000:]


def history(run_dir: Path) -> dict[int, dict]:
    return {row["step"]: row for row in json.loads((run_dir / "history.json").read_text())}


def assert_same_steps(a: dict, b: dict, steps, tol: float) -> float:
    """Losses and learning rates equal within ``tol`` at ``steps``; returns the largest loss difference."""
    worst = 0.0
    for s in steps:
        assert a[s]["train/lr"] == pytest.approx(b[s]["train/lr"], rel=0, abs=tol), (s, a[s], b[s])
        assert a[s]["train/loss"] == pytest.approx(b[s]["train/loss"], rel=0, abs=tol), (s, a[s], b[s])
        worst = max(worst, abs(a[s]["train/loss"] - b[s]["train/loss"]))
    return worst


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The uninterrupted FSDP2 run, its one-process twin, the FSDP2 run killed mid-save at step 4 and resumed, and
    the two cross-world-size resumes -- started in two waves of side-by-side process trees."""
    tmp = tmp_path_factory.mktemp("fsdp")
    whole, whole_dir = start(tmp, "whole", [*FSDP, *COMMON])
    single, single_dir = start(tmp, "single", [*SINGLE, *COMMON])
    killed, killed_dir = start(tmp, "killed", [*FSDP, *COMMON, "export.enabled=false"], fault=["kill_in_save", 4])
    t0 = time.monotonic()
    finish(whole, single)
    rc, left = killed.wait(PROCESS_TIMEOUT)
    killed.kill()
    assert rc != 0 and not left, killed.output()[-4000:]
    out = {"whole": whole_dir, "single": single_dir, "killed": killed_dir, "tmp": tmp}
    out["latest_after_kill"] = sorted(p.name for p in (killed_dir / "checkpoints").iterdir())
    out["killed_at"] = (killed_dir / "killed_at").read_text()

    resumed, _ = _restart(tmp, killed_dir, [*FSDP, *COMMON, "export.enabled=false", "trainer.resume=auto"])
    to_one, to_one_dir = start(tmp, "to_one", [*SINGLE, *COMMON, "export.enabled=false",
                                               f"trainer.resume={whole_dir}/checkpoints/step-00000002"])
    to_two, to_two_dir = start(tmp, "to_two", [*FSDP, *COMMON, "export.enabled=false",
                                               f"trainer.resume={single_dir}/checkpoints/step-00000002"])
    finish(resumed, to_one, to_two)
    out.update(to_one=to_one_dir, to_two=to_two_dir, seconds=time.monotonic() - t0)
    return out


def _restart(tmp: Path, run_dir: Path, overrides: list[str]) -> tuple[Tree, Path]:
    """The same run dir again (resume=auto), from a fresh working dir."""
    script = tmp / "fsdp_script.py"
    cwd = tmp / f"cwd-{run_dir.name}-again"
    cwd.mkdir()
    args = {"run_dir": str(run_dir), "overrides": overrides, "fault": None, "experiment": None, "port": _free_port()}
    return Tree([sys.executable, str(script), json.dumps(args)], cwd, tmp / f"{run_dir.name}-again.log"), run_dir


def test_fsdp_two_ranks_equal_one_process_full_fine_tune(runs):
    a, b = history(runs["whole"]), history(runs["single"])
    assert sorted(a) == sorted(b) == list(range(1, 7))
    worst = assert_same_steps(a, b, range(1, 7), 1e-5)
    assert a[6]["train/loss"] < a[1]["train/loss"] - 0.05  # it learned: equal losses are not a constant model
    print(f"fsdp vs single (full fine-tune): max |loss diff| over 6 steps = {worst:.2e}")


def test_checkpoints_are_sharded_and_complete(runs):
    ckpt = runs["whole"] / "checkpoints" / "step-00000006"
    marker = json.loads((ckpt / "COMPLETE").read_text())
    assert marker["format"] == "sharded" and marker["world_size"] == 2
    for name in (".metadata", "__0_0.distcp", "__1_0.distcp", "rng-rank0.pt", "rng-rank1.pt", "state.pt"):
        assert marker["files"][name] == (ckpt / name).stat().st_size > 0, name
    assert not list(runs["whole"].rglob(".tmp-*"))
    state = torch.load(ckpt / "state.pt", weights_only=True)
    assert state["loop"]["global_step"] == 6 and state["scheduler"]["last_epoch"] == 6
    assert state["loop"]["batch_in_epoch"] == 6  # the data position


def test_kill_mid_save_keeps_the_previous_checkpoint_and_resume_is_exact(runs):
    # killed with every shard written and no COMPLETE: step-4 never became a checkpoint, step-2 is the latest
    assert "__0_0.distcp" in runs["killed_at"] and "__1_0.distcp" in runs["killed_at"]
    assert "COMPLETE" not in runs["killed_at"]
    names = runs["latest_after_kill"]
    assert "step-00000002" in names and "step-00000004" not in names
    assert any(n.startswith(".tmp-step-00000004") for n in names), names
    # resume=auto continued from step 2: steps 3..6 equal the uninterrupted run
    a, b = history(runs["whole"]), history(runs["killed"])
    assert sorted(b) == [3, 4, 5, 6], sorted(b)
    assert_same_steps(a, b, range(3, 7), 1e-6)
    exact = all(a[s]["train/loss"] == b[s]["train/loss"] and a[s]["train/lr"] == b[s]["train/lr"] for s in range(3, 7))
    assert exact  # bit-exact: same shards, optimizer state, scheduler, data position and per-rank RNG
    final = json.loads((runs["killed"] / "metrics.json").read_text())
    assert final["global_step"] == 6 and final["status"] == "completed"


def test_resume_on_a_different_world_size(runs):
    # 2 -> 1: the sharded step-2 checkpoint read into one process (DCP reshards by name)
    a, b = history(runs["whole"]), history(runs["to_one"])
    assert sorted(b) == [3, 4, 5, 6]
    assert_same_steps(a, b, range(3, 7), 1e-5)
    # 1 -> 2: the one-process step-2 checkpoint sharded over two ranks
    a, b = history(runs["single"]), history(runs["to_two"])
    assert sorted(b) == [3, 4, 5, 6]
    assert_same_steps(a, b, range(3, 7), 1e-5)


def _tensors(export_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(export_dir.glob("*.safetensors")):
        out.update(load_file(str(f)))
    assert out, f"no weights in {export_dir}"
    return out


def _max_diff(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def test_consolidated_export_equals_a_one_process_export_and_loads(runs, tmp_path):
    from transformers import AutoModelForCausalLM

    from medlab.commands import export as export_cmd

    whole = runs["whole"]
    exported = _tensors(whole / "export")
    # python -m medlab.export on a copy of the run: its latest (sharded) checkpoint consolidated in one process
    copy = tmp_path / "copy"
    shutil.copytree(whole, copy, ignore=shutil.ignore_patterns("export"))
    export_cmd.main([f"run_dir={copy}", "export.format=hf", "export.checkpoint=latest"])
    assert _max_diff(exported, _tensors(copy / "export")) <= 1e-6
    model = AutoModelForCausalLM.from_pretrained(str(whole / "export"))
    ids = torch.tensor([[1, 5, 9, 13]])
    reloaded = AutoModelForCausalLM.from_pretrained(str(copy / "export"))
    torch.testing.assert_close(model(ids).logits, reloaded(ids).logits, rtol=0, atol=1e-6)


def test_fsdp_lora_with_activation_checkpointing_equals_one_process(tmp_path):
    """LoRA (no dropout: ranks draw other masks than one process): the frozen base is sharded too, only the adapters
    train; with activation checkpointing inside the sharded blocks (recomputation leaves the gradients unchanged)
    per-step losses equal one process's without it."""
    lora = ["adapter=lora", "adapter.dropout=0.0", "trainer.max_steps=4", "trainer.ckpt_every_n_steps=null",
            "export.enabled=true"]
    fsdp, fsdp_dir = start(tmp_path, "lora_fsdp", [*FSDP, *COMMON, *lora, "trainer.activation_checkpointing=true"])
    single, single_dir = start(tmp_path, "lora_single", [*SINGLE, *COMMON, *lora])
    finish(fsdp, single)
    a, b = history(fsdp_dir), history(single_dir)
    assert sorted(a) == [1, 2, 3, 4]
    worst = assert_same_steps(a, b, range(1, 5), 1e-5)
    assert a[4]["train/loss"] != a[1]["train/loss"]
    print(f"fsdp vs single (LoRA): max |loss diff| over 4 steps = {worst:.2e}")
    # the export is the adapter alone, gathered from the shards, equal to the one-process run's
    assert (fsdp_dir / "export" / "adapter_config.json").exists()
    assert _max_diff(_tensors(fsdp_dir / "export"), _tensors(single_dir / "export")) <= 1e-5
    state = torch.load(fsdp_dir / "checkpoints" / "step-00000004" / "state.pt", weights_only=True)
    assert state["trainable_keys"] and all("lora_" in k for k in state["trainable_keys"])


def test_one_rank_raising_ends_every_rank(tmp_path):
    tree, run_dir = start(tmp_path, "raise", [*FSDP, *COMMON], fault=["raise", 1])
    t0 = time.monotonic()
    rc, left = tree.wait(PROCESS_TIMEOUT)
    out = tree.output()
    tree.kill()
    assert not left and rc != 0, out[-4000:]
    assert "injected failure on rank 1" in out
    assert time.monotonic() - t0 < PROCESS_TIMEOUT
    assert not (run_dir / "history.json").exists()


@pytest.mark.slow
def test_fsdp_bi_encoder_with_gradcache_and_cross_rank_negatives_equals_ddp(tmp_path):
    """GradCache runs its own backward passes under FSDP2 (a unit per backbone, the temperature replicated and
    averaged by the loop); with cross-rank negatives its per-step losses equal DDP's on the same batches."""
    bi = ["model=tiny_bert", "+model.arch.hidden_dropout_prob=0.0", "+model.arch.attention_probs_dropout_prob=0.0",
          "data.limit=16", "data.val_limit=8", "data.max_length=48", "data.query_max_length=32", "data.batch_size=4",
          "objective.gradcache_chunk_size=2", "trainer.max_steps=3", "trainer.log_every_n_steps=1",
          "trainer.progress_bar=false", "logger=csv", "trainer.ckpt_every_n_steps=null", "export.enabled=false",
          "strategy.accelerator=cpu", "strategy.devices=2"]
    fsdp, fsdp_dir = start(tmp_path, "bi_fsdp", ["strategy=fsdp", *bi], experiment="biencoder")
    ddp, ddp_dir = start(tmp_path, "bi_ddp", ["strategy=ddp", *bi], experiment="biencoder")
    finish(fsdp, ddp)
    a, b = history(fsdp_dir), history(ddp_dir)
    assert sorted(a) == [1, 2, 3]
    assert_same_steps(a, b, range(1, 4), 1e-5)
    assert a[3]["train/loss"] != a[1]["train/loss"]


def test_fsdp_preference_objectives_equal_one_process(tmp_path):
    """DPO (full fine-tune: its frozen reference copy is sharded with the policy) and KTO (its KL reference point is
    reduced over ranks) under FSDP2 equal one process on the same global batch, step for step."""
    pref = ["data.group_by_length=false", "trainer.max_steps=3", "trainer.ckpt_every_n_steps=null",
            "export.enabled=false", "data.limit=32", "trainer.log_every_n_steps=1", "trainer.val_every_n_steps=null",
            "trainer.progress_bar=false", "logger=csv"]
    trees, dirs = [], {}
    for experiment in ("dpo", "kto"):
        for kind, extra in (("fsdp", FSDP), ("single", SINGLE)):
            tree, dirs[experiment, kind] = start(tmp_path, f"{experiment}_{kind}", [*extra, *pref],
                                                 experiment=experiment)
            trees.append(tree)
    finish(*trees)
    for experiment in ("dpo", "kto"):
        a, b = history(dirs[experiment, "fsdp"]), history(dirs[experiment, "single"])
        assert sorted(a) == [1, 2, 3]
        assert_same_steps(a, b, range(1, 4), 1e-5)
        assert a[3]["train/loss"] != a[1]["train/loss"]
    assert history(dirs["dpo", "fsdp"])[1]["train/loss"] == pytest.approx(0.6931471805599453, abs=1e-6)  # ln 2
