"""Sweeps: Hydra multirun (job dirs + sweep_summary), the Optuna sweeper, concurrent run dirs, the summary table."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from medlab.commands.sweep import collect_jobs, write_summary

ROOT = Path(__file__).resolve().parents[1]
TINY = ["trainer.progress_bar=false", "data.limit=32"]


def _env() -> dict[str, str]:
    env = dict(os.environ)  # MEDLAB_CACHE_DIR and the offline switches come from conftest
    env["OMP_NUM_THREADS"] = "1"  # tiny matmuls: extra threads only contend on a busy CPU
    env["HYDRA_FULL_ERROR"] = "1"
    env["TQDM_DISABLE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _medlab(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "medlab", *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def _job_dirs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.is_dir()), key=lambda p: p.name)


def _overrides(job: Path) -> list[str]:
    return yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())


def _metrics(job: Path) -> dict:
    return json.loads((job / "metrics.json").read_text())


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------- multirun
def test_multirun_sweep_writes_separate_job_dirs_and_the_summary(tmp_path):
    sweep = tmp_path / "sweep"
    _medlab(["-m", "+experiment=sft_lora", "objective.lr=1e-3,3e-3", "adapter.r=2,4", "trainer.max_steps=4",
             "trainer.val_every_n_steps=2", *TINY, f"hydra.sweep.dir={sweep}"], cwd=tmp_path)

    jobs = _job_dirs(sweep)
    assert [j.name for j in jobs] == ["0", "1", "2", "3"]
    grid = set()
    for job in jobs:
        for f in (".hydra/config.yaml", ".hydra/overrides.yaml", "metrics.json", "config_resolved.yaml"):
            assert (job / f).is_file(), f"{job.name}/{f} missing"
        overrides = _overrides(job)
        lr = next(o for o in overrides if o.startswith("objective.lr=")).split("=", 1)[1]
        r = int(next(o for o in overrides if o.startswith("adapter.r=")).split("=", 1)[1])
        grid.add((float(lr), r))
        # The job's composed config is its own (not the first job's) and it ran in its own dir.
        cfg = yaml.safe_load((job / "config_resolved.yaml").read_text())
        assert (cfg["objective"]["lr"], cfg["adapter"]["r"], cfg["name"]) == (float(lr), r, "sft_lora")
        assert Path(cfg["paths"]["run_dir"]).resolve() == job.resolve()
        m = _metrics(job)
        assert m["status"] == "completed" and m["global_step"] == 4
        assert Path(m["checkpoint"]).resolve().parent.parent == job.resolve()
        # run() returned its objective: the best value of the monitor.
        assert m["monitor"] == "val/loss" and math.isfinite(m["objective"])
        assert m["objective"] == m["best/val/loss"]
    assert grid == {(1e-3, 2), (1e-3, 4), (3e-3, 2), (3e-3, 4)}
    params = {_metrics(j)["trainable_params"] for j in jobs}
    assert len(params) == 2 and max(params) == 2 * min(params)  # r=4 has twice the LoRA weights of r=2

    rows = _read_csv(sweep / "sweep_summary.csv")
    assert len(rows) == 4
    assert {"job", "overrides", "status", "val/loss", "objective", "best/val/loss"} <= set(rows[0])
    assert sorted(int(r["job"]) for r in rows) == [0, 1, 2, 3]
    assert len({r["overrides"] for r in rows}) == 4
    assert all(r["status"] == "completed" for r in rows)
    val = [float(r["val/loss"]) for r in rows]
    assert val == sorted(val), "the table is sorted by trainer.monitor (min)"
    for r in rows:
        assert float(r["objective"]) == pytest.approx(_metrics(sweep / r["job"])["objective"], rel=1e-12)

    md = (sweep / "sweep_summary.md").read_text().splitlines()
    assert md[0].startswith("| job | overrides | status |") and "val/loss" in md[0] and "objective" in md[0]
    assert len(md) == 2 + 4


# ---------------------------------------------------------------------------------------------- optuna
def test_optuna_sweeper_runs_trials_and_reports_the_best(tmp_path):
    try:
        import hydra_plugins.hydra_optuna_sweeper  # noqa: F401
    except ImportError as e:
        pytest.skip(f"hydra-optuna-sweeper is not installed ({e})")
    sweep = tmp_path / "optuna"
    _medlab(["-m", "+experiment=sft_lora", "+sweep=optuna_lora", "hydra.sweeper.n_trials=2", "trainer.max_steps=3",
             "trainer.val_every_n_steps=3", *TINY, f"hydra.sweep.dir={sweep}"], cwd=tmp_path)

    jobs = _job_dirs(sweep)
    assert [j.name for j in jobs] == ["0", "1"]
    objectives = {}
    for job in jobs:
        m = _metrics(job)
        assert m["status"] == "completed" and m["objective"] == m["best/val/loss"]
        objectives[job.name] = m["objective"]
        overrides = dict(o.split("=", 1) for o in _overrides(job))
        assert int(overrides["adapter.r"]) in (4, 8, 16)  # sampled from conf/sweep/optuna_lora.yaml
        assert 1e-4 <= float(overrides["objective.lr"]) <= 1e-2

    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(min(objectives.values()), rel=1e-12)
    best_job = sweep / min(objectives, key=objectives.get)
    best_overrides = dict(o.split("=", 1) for o in _overrides(best_job))
    assert int(results["best_params"]["adapter.r"]) == int(best_overrides["adapter.r"])
    assert float(results["best_params"]["objective.lr"]) == pytest.approx(float(best_overrides["objective.lr"]))
    assert len(_read_csv(sweep / "sweep_summary.csv")) == 2  # the summary callback runs under Optuna too


# ---------------------------------------------------------------------------------------------- run dirs
def test_concurrent_runs_get_distinct_run_dirs(tmp_path):
    """Two launches in the same second (no hydra.run.dir) must never share a run dir (RELIABILITY 15)."""
    args = [sys.executable, "-m", "medlab", "trainer.max_steps=2", "trainer.val_every_n_steps=2",
            "export.enabled=false", "trainer.progress_bar=false", "data.limit=16"]
    procs = [subprocess.Popen(args, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, f"exit {p.returncode}\n{out[-2000:]}\n{err[-5000:]}"

    run_dirs = sorted((tmp_path / "outputs" / "runs" / "sft").iterdir())
    assert len(run_dirs) == 2, run_dirs
    for d in run_dirs:
        m = _metrics(d)
        assert m["status"] == "completed" and m["global_step"] == 2
        assert Path(m["checkpoint"]).resolve().parent.parent == d.resolve()
        assert yaml.safe_load((d / ".hydra" / "overrides.yaml").read_text())  # Hydra's own files per run


# ---------------------------------------------------------------------------------------------- summary
def _job(sweep: Path, num: int, overrides: list[str], metrics: dict | None) -> None:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), job / ".hydra" / "overrides.yaml")  # as Hydra writes it
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))


def test_collect_jobs_and_write_summary(tmp_path):
    sweep = tmp_path / "sweep"
    # Hydra writes overrides.yaml as YAML: an override with ': ' in it is stored quoted.
    _job(sweep, 0, ["adapter.r=2", "data.system_prompt='You are: a doctor'"],
         {"status": "completed", "val/loss": 2.0, "objective": 1.9, "checkpoint": "x"})
    # A diverged job: NaN is unordered, so a plain sort key would leave this list unsorted.
    _job(sweep, 1, ["adapter.r=4"], {"status": "completed", "val/loss": float("nan"), "objective": float("nan")})
    _job(sweep, 2, ["adapter.r=8", "data.system_prompt='a|b'"], {"status": "completed", "val/loss": 1.0,
                                                                 "objective": 0.9, "ok": True})
    _job(sweep, 3, ["adapter.r=16"], None)  # crashed before metrics.json
    _job(sweep, 10, ["adapter.r=32", "name=run_${now:%H}"],
         {"status": "interrupted", "val/loss": 1.5, "objective": 1.5})
    (sweep / "multirun.yaml").write_text("{}\n")  # not a job
    (sweep / ".submitit").mkdir()  # not a job either

    rows = collect_jobs(sweep)
    assert [r["job"] for r in rows] == [0, 1, 2, 3, 10]  # numeric order, not "10" < "2"
    by_job = {r["job"]: r for r in rows}
    assert by_job[3]["status"] == "failed" and "val/loss" not in by_job[3]
    assert by_job[10]["status"] == "interrupted"
    assert by_job[10]["overrides"] == "adapter.r=32 name=run_${now:%H}"  # shown as typed, never resolved
    assert by_job[2]["overrides"] == "adapter.r=8 data.system_prompt='a|b'"
    assert by_job[0]["overrides"] == "adapter.r=2 data.system_prompt='You are: a doctor'"
    assert "checkpoint" not in by_job[0] and "ok" not in by_job[2]  # only numbers (no strings, no bools)

    write_summary(sweep, rows, sort_by="val/loss", mode="min")
    table = _read_csv(sweep / "sweep_summary.csv")
    assert [t["job"] for t in table[:3]] == ["2", "10", "0"]  # best first
    assert {t["job"] for t in table[3:]} == {"1", "3"}  # failed and diverged (NaN) jobs last
    assert list(table[0])[:3] == ["job", "overrides", "status"]
    assert {t["job"]: t["status"] for t in table}["3"] == "failed"

    md = (sweep / "sweep_summary.md").read_text().splitlines()
    assert len(md) == 2 + 5
    assert md[2].startswith("| 2 | adapter.r=8 data.system_prompt='a\\|b' | completed |")
    n_cols = md[0].count(" | ") + 1
    assert all(line.replace("\\|", "").count("|") == n_cols + 1 for line in md)

    write_summary(sweep, rows, sort_by="val/loss", mode="max")
    assert [t["job"] for t in _read_csv(sweep / "sweep_summary.csv")[:3]] == ["0", "10", "2"]

    write_summary(sweep, rows, sort_by="not/logged")  # unknown monitor: job order
    assert [t["job"] for t in _read_csv(sweep / "sweep_summary.csv")] == ["0", "1", "2", "3", "10"]


def test_write_summary_with_no_jobs_writes_nothing(tmp_path):
    write_summary(tmp_path, [])
    assert not (tmp_path / "sweep_summary.csv").exists()
    assert collect_jobs(tmp_path) == []
