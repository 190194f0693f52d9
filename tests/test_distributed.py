"""Multi-process runs on CPU (gloo) through Fabric's own launcher.

- DDP over 2 processes equals one process with the same global batch, step for step (train and val loss).
- One rank raising does not leave the other hanging (RELIABILITY 7): the whole process tree exits non-zero.
- A non-finite loss on one rank skips the step on every rank (RELIABILITY 5), and the ranks stay in sync.

Fabric's subprocess launcher re-executes the command line for rank 1 (``python -m medlab ...`` under Hydra,
with rank 0's ``hydra.run.dir``; ``python script.py ...`` otherwise), so the failure-injection tests run a small
script file that composes the config with ``medlab.compose`` and calls ``medlab.run`` with a callback or an
objective subclass defined in the script (``objective._target_=__main__.NaNOnRank``).
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.distributed

PROCESS_TIMEOUT = 150  # seconds for a whole process tree; a hang fails the test instead of blocking the suite


def _env() -> dict:
    env = dict(os.environ)
    env["MEDLAB_CACHE_DIR"] = os.environ["MEDLAB_CACHE_DIR"]  # the session's tmp cache (conftest)
    env["PYTHONUNBUFFERED"] = "1"
    env["OMP_NUM_THREADS"] = "1"  # 2 ranks on 2 cores: no oversubscription
    # Fabric must launch its own 2 processes, not join an outer torchrun/SLURM job the tests may run in.
    for key in list(env):
        if key in _LAUNCHER_VARS or key.startswith(("SLURM_", "TORCHELASTIC_")):
            del env[key]
    return env


_LAUNCHER_VARS = {"LOCAL_RANK", "RANK", "GLOBAL_RANK", "NODE_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                  "MASTER_PORT"}


def _session_pids(sid: int) -> list[int]:
    """Live (non-zombie) processes whose session id is ``sid``: everything a ``start_new_session`` child started."""
    pids: list[int] = []
    if not Path("/proc").is_dir():  # not Linux: cannot look, assume none (the exit code is still checked)
        return pids
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp session ...
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


class Tree:
    """A command started in its own session, so its whole process tree can be watched and, if need be, killed."""

    def __init__(self, cmd: list[str], cwd: Path, log: Path):
        self.cmd, self.log = cmd, log
        self._out = open(log, "w")
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=self._out, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait(self, timeout: float = PROCESS_TIMEOUT) -> tuple[int, list[int]]:
        """(exit code of the launched process, pids of its tree still alive a few seconds after it exited)."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill()
            pytest.fail(f"{' '.join(self.cmd)} still running after {timeout}s (hang):\n{self.output()[-4000:]}")
        deadline = time.monotonic() + 10  # stragglers get a moment to notice and exit
        while (left := _session_pids(self.proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        if left:
            self._kill()
        self._out.close()
        return rc, left

    def kill(self) -> None:
        """SIGKILL whatever is left of this tree (a no-op once it is gone)."""
        self._kill()
        if not self._out.closed:
            self._out.close()

    def _kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # only the session this test started
        except ProcessLookupError:
            pass
        self.proc.wait()

    def output(self) -> str:
        if not self._out.closed:
            self._out.flush()
        return self.log.read_text(errors="replace")


def _cli(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "medlab", *overrides, "logger=csv", "trainer.progress_bar=false"]


def _read_csv(path: Path) -> dict[str, dict[int, float]]:
    """{column: {step: value}} from a medlab metrics.csv (train and val rows are separate rows)."""
    out: dict[str, dict[int, float]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step = int(row["step"])
            for key, value in row.items():
                if key != "step" and value not in ("", None):
                    col = out.setdefault(key, {})
                    assert step not in col, f"{key} logged twice at step {step}"
                    col[step] = float(value)
    return out


def _checkpoints(run_dir: Path) -> list[Path]:
    root = run_dir / "checkpoints"
    return sorted(p for p in root.iterdir() if p.name.startswith("step-")) if root.exists() else []


# ---------------------------------------------------------------------------------------------- DDP == 1 process

def test_ddp_two_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    """rank r takes order[r::2] of each epoch's permutation, so the two ranks' batch j (4 rows each) is the single
    process's batch j (8 rows); micro-batch losses are weighted by label tokens over all ranks, so the gradient,
    the optimizer step and the logged token-weighted loss are those of the big batch.

    The DDP run uses the default run dir (``outputs/runs/sft/<time>_<uid>`` under the working dir), exactly as
    ``python -m medlab strategy=ddp strategy.devices=2`` in the README: Fabric's launcher re-executes the
    command for rank 1 with rank 0's ``hydra.run.dir``, so exactly one run dir may appear.
    """
    common = ["trainer.max_steps=6", "trainer.log_every_n_steps=1", "trainer.val_every_n_steps=3"]
    cwd = tmp_path / "cwd"  # an empty working dir: every relative path a rank writes shows up here
    cwd.mkdir()
    single_dir = tmp_path / "single"
    # The two runs are independent: run them side by side to halve the wall time.
    ddp = Tree(_cli("strategy=ddp", "strategy.devices=2", "data.batch_size=4", *common), cwd, tmp_path / "ddp.log")
    single = Tree(_cli("data.batch_size=8", *common, f"hydra.run.dir={single_dir}"), cwd, tmp_path / "single.log")
    try:
        rc_ddp, left_ddp = ddp.wait()
        rc_single, left_single = single.wait()
    finally:  # a hang in one must not leave the other running
        ddp.kill()
        single.kill()
    assert rc_ddp == 0 and not left_ddp, ddp.output()[-4000:]
    assert rc_single == 0 and not left_single, single.output()[-4000:]

    # one run dir (rank 1 used rank 0's), one checkpoint in it, nothing else written under the working dir
    assert [p.relative_to(cwd).as_posix() for p in cwd.glob("*/*/*")] == ["outputs/runs/sft"]
    run_dirs = list((cwd / "outputs" / "runs" / "sft").iterdir())
    assert len(run_dirs) == 1, run_dirs
    ddp_dir = run_dirs[0]
    assert [p.name for p in _checkpoints(ddp_dir)] == ["step-00000006"]
    ckpt = _checkpoints(ddp_dir)[0]
    assert (ckpt / "COMPLETE").exists() and (ckpt / "rng-rank0.pt").exists() and (ckpt / "rng-rank1.pt").exists()
    assert not list(ddp_dir.rglob(".tmp-*"))

    ddp_m, single_m = _read_csv(ddp_dir / "metrics.csv"), _read_csv(single_dir / "metrics.csv")
    assert sorted(ddp_m["train/loss"]) == list(range(1, 7))
    assert sorted(ddp_m["val/loss"]) == [3, 6]
    for key in ("train/loss", "val/loss", "val/token_acc", "train/lr"):
        assert ddp_m[key].keys() == single_m[key].keys(), key
        for step in ddp_m[key]:
            assert ddp_m[key][step] == pytest.approx(single_m[key][step], abs=1e-5), (key, step, ddp_m, single_m)
    # the run learned something, so equal losses are not equal by accident of a constant model
    assert ddp_m["train/loss"][6] != ddp_m["train/loss"][1]

    ddp_j = json.loads((ddp_dir / "metrics.json").read_text())
    single_j = json.loads((single_dir / "metrics.json").read_text())
    assert ddp_j["status"] == single_j["status"] == "completed"
    assert ddp_j["global_step"] == single_j["global_step"] == 6
    assert ddp_j["val/loss"] == pytest.approx(single_j["val/loss"], abs=1e-5)
    assert ddp_j["tokens_seen"] == single_j["tokens_seen"]  # a global count, summed over ranks


# ---------------------------------------------------------------------------------------------- failure injection

SCRIPT = r'''
"""Run by the tests as `python script.py MODE RUN_DIR RANK`; Fabric re-executes it for rank 1."""
import json
import sys
from pathlib import Path

import torch

import medlab
from medlab.objectives.causal_lm import CausalLM

MODE, RUN_DIR, BAD_RANK = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])


def rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


class RaiseOnRank:
    """Fabric callback: rank BAD_RANK raises when its 2nd micro-batch starts (the other rank carries on)."""

    def on_train_batch_start(self, batch, idx):
        if idx == 1 and rank() == BAD_RANK:
            raise RuntimeError(f"injected failure on rank {BAD_RANK}")


MODULES = []


class NaNOnRank(CausalLM):
    """CausalLM whose loss is NaN on rank BAD_RANK only, at its 2nd micro-batch (= optimizer step 2)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.snapshots = {}  # micro-step -> weights when it starts (1: before the NaN step, 2: after it)
        MODULES.append(self)

    def training_step(self, batch, batch_idx):
        if batch_idx in (1, 2):
            self.snapshots[batch_idx] = [p.detach().clone() for p in self.parameters()]
        out = super().training_step(batch, batch_idx)
        if batch_idx == 1 and rank() == BAD_RANK:
            out["loss"] = out["loss"] * float("nan")
        return out


overrides = ["strategy=ddp", "strategy.devices=2", "data.batch_size=4", "data.limit=64", "trainer.max_steps=4",
             "trainer.log_every_n_steps=1", "trainer.val_every_n_steps=4", "trainer.progress_bar=false",
             "logger=csv", "export.enabled=false"]
if MODE == "nan":
    overrides.append("objective._target_=__main__.NaNOnRank")
cfg = medlab.compose(None, overrides, run_dir=str(RUN_DIR))
result = medlab.run(cfg, callbacks=[RaiseOnRank()] if MODE == "raise" else None)

module = MODULES[0] if MODULES else None
params = torch.cat([p.detach().reshape(-1).double() for p in module.parameters()]) if module else None
same = lambda a, b: all(torch.equal(x, y) for x, y in zip(a, b))  # noqa: E731
(RUN_DIR / f"rank{rank()}.json").write_text(json.dumps({
    "nan_step_changed_nothing": same(module.snapshots[1], module.snapshots[2]) if module else None,
    "later_steps_learned": not same(module.snapshots[2], list(module.parameters())) if module else None,
    "skipped_steps": result.metrics["skipped_steps"],
    "status": result.metrics["status"],
    "param_sum": float(params.sum()) if params is not None else None,
    "param_abs_sum": float(params.abs().sum()) if params is not None else None,
    "finite": bool(torch.isfinite(params).all()) if params is not None else None,
}))
'''


def _script(tmp_path: Path, mode: str, bad_rank: int) -> tuple[Tree, Path]:
    script = tmp_path / "ddp_script.py"
    script.write_text(SCRIPT)
    run_dir = tmp_path / "run"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    tree = Tree([sys.executable, str(script), mode, str(run_dir), str(bad_rank)], cwd, tmp_path / "out.log")
    return tree, run_dir


@pytest.mark.parametrize("bad_rank", [1, 0])
def test_one_rank_fails_and_no_rank_hangs(tmp_path, bad_rank):
    """RELIABILITY 7: a rank raising mid-training ends the whole process tree with a non-zero code, quickly,
    whichever rank it is (rank 1 is a child of the launcher; rank 0 is the launcher itself)."""
    tree, run_dir = _script(tmp_path, "raise", bad_rank)
    t0 = time.monotonic()
    rc, left = tree.wait()
    out = tree.output()
    assert not left, f"processes {left} outlived the failed run:\n{out[-4000:]}"
    assert rc != 0, out[-4000:]
    assert f"injected failure on rank {bad_rank}" in out
    assert time.monotonic() - t0 < PROCESS_TIMEOUT
    assert not list(run_dir.glob("rank*.json"))  # no rank reached the end of run()
    assert not (run_dir / "metrics.json").exists()


def test_nonfinite_loss_on_one_rank_skips_the_step_on_every_rank(tmp_path):
    """RELIABILITY 5: rank 1's loss is NaN at step 2; both ranks skip step 2 (count 1), keep identical finite
    weights, and the run completes with a finite validation loss."""
    tree, run_dir = _script(tmp_path, "nan", 1)
    rc, left = tree.wait()
    out = tree.output()
    assert rc == 0 and not left, out[-4000:]
    ranks = [json.loads((run_dir / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["skipped_steps"] for r in ranks] == [1, 1], ranks
    assert all(r["status"] == "completed" and r["finite"] for r in ranks), ranks
    assert all(r["nan_step_changed_nothing"] and r["later_steps_learned"] for r in ranks), ranks
    # DDP replicas still hold the same weights: neither rank stepped alone
    assert ranks[0]["param_sum"] == pytest.approx(ranks[1]["param_sum"], rel=0, abs=1e-9)
    assert ranks[0]["param_abs_sum"] == pytest.approx(ranks[1]["param_abs_sum"], rel=0, abs=1e-9)

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["skipped_steps"] == 1 and metrics["global_step"] == 4 and metrics["status"] == "completed"
    assert math.isfinite(metrics["val/loss"]) and math.isfinite(metrics["train/loss"])
    logged = _read_csv(run_dir / "metrics.csv")
    assert logged["train/skipped_steps"] == {1: 0.0, 2: 1.0, 3: 1.0, 4: 1.0}
    # the skipped step contributes no tokens to the logged loss (logged as NaN, or not at all)
    assert 2 not in logged["train/loss"] or math.isnan(logged["train/loss"][2])
    assert all(math.isfinite(logged["train/loss"][s]) for s in (1, 3, 4))
    assert math.isfinite(logged["val/loss"][4])
