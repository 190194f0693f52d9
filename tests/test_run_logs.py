"""The job log (train.log under the CLI) holds the training log: train metrics at each log step, every
validation, the CPU thread choice; the progress bar keeps working next to it."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys

import medlab
from medlab.engine.progress import Progress, _BarSafeHandler, format_metrics

SHORT = ["trainer.max_steps=4", "trainer.val_every_n_steps=2", "trainer.log_every_n_steps=2",
         "trainer.ckpt_every_n_steps=null", "data.limit=32", "export.enabled=false"]


def test_run_logs_train_and_validation_metrics(tmp_path, caplog):
    cfg = medlab.compose("sft", SHORT + ["trainer.progress_bar=false"], run_dir=str(tmp_path / "run"))
    with caplog.at_level(logging.INFO, logger="medlab"):
        result = medlab.run(cfg)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("medlab")]
    for step in (2, 4):
        train = [m for m in lines if m.startswith(f"step {step}/4: ")]
        assert len(train) == 1, lines
        assert re.search(r"train/loss=\d+\.\d{4}", train[0]) and "train/lr=" in train[0]
        assert "train/tokens_per_sec=" in train[0] and "train/grad_norm=" in train[0]
        (val,) = [m for m in lines if m.startswith(f"step {step}/4 validation: ")]
        for key in ("val/loss", "val/ppl", "val/token_acc"):
            assert f"{key}=" in val, val
    logged_loss = float(re.search(r"train/loss=([\d.]+)", train[0]).group(1))
    last_train = [h for h in result.history if "train/loss" in h][-1]
    assert last_train["step"] == 4 and abs(logged_loss - last_train["train/loss"]) < 1e-3


def test_cli_train_log_has_the_metrics_and_the_bar_still_runs(tmp_path):
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # trainer.cpu_threads=auto decides
    proc = subprocess.run([sys.executable, "-m", "medlab", *SHORT, f"hydra.run.dir={run_dir}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (run_dir / "train.log").read_text()
    assert re.search(r"cpu threads: \d+ \(auto: ", log), log
    for step in (2, 4):
        assert re.search(rf"\[INFO\] - step {step}/4: train/loss=\d", log), log
        assert re.search(rf"\[INFO\] - step {step}/4 validation: val/loss=\d.*val/ppl=", log), log
    assert "train:" in proc.stderr and "4/4" in proc.stderr  # the tqdm bar, on stderr as before
    assert "step 4/4: train/loss=" in proc.stdout  # Hydra's console handler, routed through tqdm.write


def test_progress_routes_console_handlers_while_the_bar_runs(tmp_path):
    root = logging.getLogger()
    console = logging.StreamHandler(sys.stderr)
    file_handler = logging.FileHandler(tmp_path / "x.log")
    other = logging.StreamHandler(io.StringIO())
    for h in (console, file_handler, other):
        root.addHandler(h)
    before = list(root.handlers)
    try:
        bar = Progress(total=3, initial=0, enabled=True)
        during = list(root.handlers)
        assert console not in during and file_handler in during and other in during
        assert sum(isinstance(h, _BarSafeHandler) for h in during) >= 1
        bar.close()
        assert root.handlers == before
        Progress(total=3, initial=0, enabled=False).close()
        assert root.handlers == before
    finally:
        for h in (console, file_handler, other):
            root.removeHandler(h)
        file_handler.close()


def test_format_metrics():
    text = format_metrics({"train/loss": 2.345678, "train/lr": 3e-4, "train/epoch": 1.0,
                           "train/tokens_per_sec": 12345.6,
                           "val/ppl": 150.123, "train/mfu": 0.0012, "x": float("nan")})
    assert text == ("train/loss=2.3457, train/lr=3.000e-04, train/epoch=1, train/tokens_per_sec=12346, val/ppl=150.1, "
                    "train/mfu=1.200e-03, x=nan")
