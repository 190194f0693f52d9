"""A CSV metrics logger that survives resume: ``metrics.csv`` with a ``step`` column.

Lightning's CSV logger deletes an existing ``metrics.csv`` when it starts, so a resumed run would lose
the history before the crash. This one appends, and on resume drops only the rows logged after the
checkpoint's step (they will be logged again, identically).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from lightning.fabric.loggers.logger import Logger, rank_zero_experiment
from lightning.fabric.utilities.rank_zero import rank_zero_only


class CSVLogger(Logger):
    def __init__(self, root_dir: str | Path, filename: str = "metrics.csv", flush_logs_every_n_steps: int = 10):
        super().__init__()
        self._root = Path(root_dir)
        self.path = self._root / filename
        self.flush_every = flush_logs_every_n_steps
        self._rows: list[dict[str, Any]] = []
        self._keys: list[str] = []

    @property
    def name(self) -> str:
        return "csv"

    @property
    def version(self) -> str:
        return ""

    @property
    def root_dir(self) -> str:
        return str(self._root)

    @property
    def log_dir(self) -> str:
        return str(self._root)

    @property
    @rank_zero_experiment
    def experiment(self) -> "CSVLogger":
        return self

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass  # the run dir already holds the full config

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._rows.append({"step": step, **{k: float(v) for k, v in metrics.items()}})
        if len(self._rows) >= self.flush_every:
            self.save()

    @rank_zero_only
    def resume_at(self, step: int) -> None:
        """Keep only rows with ``step <= step`` (later ones belonged to the crashed attempt)."""
        rows = [r for r in self._read() if r.get("step") not in (None, "") and int(r["step"]) <= step]
        self._write(rows, self._header(rows))

    @rank_zero_only
    def save(self) -> None:
        if not self._rows:
            return
        existing = self._read()
        all_rows = existing + self._rows
        header = self._header(all_rows)
        if existing and header != self._keys_on_disk():
            self._write(all_rows, header)
        else:
            new = not self.path.exists()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", newline="") as f:
                w = csv.DictWriter(f, fieldnames=header)
                if new:
                    w.writeheader()
                w.writerows(self._rows)
        self._rows = []

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()

    # -- helpers
    def _read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))

    def _keys_on_disk(self) -> list[str]:
        with open(self.path, newline="") as f:
            return next(csv.reader(f), [])

    @staticmethod
    def _header(rows: list[dict[str, Any]]) -> list[str]:
        keys = sorted({k for r in rows for k in r} - {"step"})
        return ["step"] + keys

    def _write(self, rows: list[dict[str, Any]], header: list[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=header)
            w.writeheader()
            w.writerows(rows)
        tmp.replace(self.path)
