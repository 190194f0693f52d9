"""The CLI end to end: SIGTERM checkpoints and exits, `trainer.resume=auto` continues, reuse is guarded."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time


BASE = ["trainer.progress_bar=false", "trainer.log_every_n_steps=1", "data.limit=64", "export.enabled=false"]


def _cli(args, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", "medlab", *BASE, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def _wait_for(predicate, timeout):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_sigterm_checkpoints_then_resume_auto_continues(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "medlab", *BASE, "trainer.max_steps=100000",
                             "trainer.val_every_n_steps=null", "trainer.ckpt_every_n_steps=null",
                             f"hydra.run.dir={run_dir}"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert _wait_for(lambda: list((run_dir / "tensorboard").glob("events.out.tfevents.*")), 120), "training never started"
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, out[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "interrupted"
    step = metrics["global_step"]
    assert step >= 1
    ckpt = run_dir / "checkpoints" / f"step-{step:08d}"
    assert (ckpt / "COMPLETE").exists(), "the checkpoint at the interrupted step is complete"

    again = _cli(["trainer.max_steps=10", f"hydra.run.dir={run_dir}"], tmp_path)
    assert again.returncode != 0 and "trainer.resume=auto" in again.stderr  # reuse without resume is refused

    target = step + 3
    resumed = _cli([f"trainer.max_steps={target}", "trainer.resume=auto", f"hydra.run.dir={run_dir}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = json.loads((run_dir / "metrics.json").read_text())
    assert final["status"] == "completed" and final["global_step"] == target
    assert f"resumed from {ckpt} at step {step}" in resumed.stderr + resumed.stdout


def test_resume_path_must_exist(tmp_path):
    proc = _cli(["trainer.max_steps=2", f"trainer.resume={tmp_path}/nope", f"hydra.run.dir={tmp_path}/r"], tmp_path)
    assert proc.returncode != 0 and "trainer.resume" in proc.stderr and "nope" in proc.stderr
