"""Hydra callback that tabulates a multirun: ``sweep_summary.csv`` and ``sweep_summary.md`` in the sweep dir.

Each job writes ``metrics.json`` into its own directory; after the last job this reads them all, so
the table also covers jobs run by other launchers (submitit) as long as they share the sweep dir.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def collect_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job dir: its overrides, status and final metrics (missing metrics.json = failed)."""
    rows = []
    for job_dir in sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)):
        overrides_file = job_dir / ".hydra" / "overrides.yaml"
        overrides = []
        if overrides_file.exists():  # a YAML list; values with ': ' or quotes are YAML-quoted, so parse it
            overrides = [str(o) for o in OmegaConf.to_container(OmegaConf.load(overrides_file), resolve=False)]
        row: dict[str, Any] = {"job": int(job_dir.name), "overrides": " ".join(overrides)}
        metrics_file = job_dir / "metrics.json"
        if metrics_file.exists():
            m = json.loads(metrics_file.read_text())
            row["status"] = m.get("status", "completed")
            row.update({k: v for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        else:
            row["status"] = "failed"
        rows.append(row)
    return rows


def write_summary(sweep_dir: Path, rows: list[dict[str, Any]], sort_by: str | None = None, mode: str = "min") -> None:
    if not rows:
        return
    keys = ["job", "overrides", "status"]
    for r in rows:
        keys += [k for k in r if k not in keys]
    if sort_by and any(sort_by in r for r in rows):
        big = float("inf") if mode == "min" else float("-inf")

        def key(r: dict[str, Any]) -> float:
            # Failed jobs (no value) and diverged ones (NaN: unordered, it would scramble the sort) go last.
            v = r.get(sort_by)
            return big if not isinstance(v, (int, float)) or math.isnan(v) else v

        rows = sorted(rows, key=key, reverse=mode == "max")
    with open(sweep_dir / "sweep_summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)

    def fmt(v: Any) -> str:
        text = f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))
        return text.replace("|", "\\|")  # an override value with a pipe would split the markdown row

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in rows]
    (sweep_dir / "sweep_summary.md").write_text("\n".join(lines) + "\n")


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.exists():
            return
        rows = collect_jobs(sweep_dir)
        write_summary(sweep_dir, rows, sort_by=config.trainer.get("monitor"), mode=config.trainer.get("monitor_mode", "min"))
        log.info("sweep summary: %s", sweep_dir / "sweep_summary.md")
