"""Progress bar, metric log lines and throughput bookkeeping for the loop (rank 0 only)."""

from __future__ import annotations

import logging
import math
import sys
import time

from tqdm.auto import tqdm


def format_metrics(metrics: dict) -> str:
    """``key=value, ...`` for a log line: whole numbers as integers, learning rates and small values in
    scientific notation, the rest with 4 decimals (fewer for large values)."""
    parts = []
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            text = str(v)
        elif not math.isfinite(v):
            text = str(float(v))
        elif k.rsplit("/", 1)[-1] == "lr" or (0 < abs(v) < 0.01):
            text = f"{v:.3e}"
        elif float(v).is_integer() and abs(v) < 1e15:
            text = str(int(v))
        elif abs(v) >= 1000:
            text = f"{v:.0f}"
        elif abs(v) >= 100:
            text = f"{v:.1f}"
        else:
            text = f"{v:.4f}"
        parts.append(f"{k}={text}")
    return ", ".join(parts)


def _is_console(handler: logging.Handler) -> bool:
    consoles = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    return (isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
            and getattr(handler, "stream", None) in consoles)


class _BarSafeHandler(logging.Handler):
    """Stands in for a console handler while the bar is shown: same level, format and filters, but the line
    goes through ``tqdm.write`` so it prints above the bar instead of through it."""

    def __init__(self, wrapped: logging.StreamHandler, tqdm_class):
        super().__init__(wrapped.level)
        self.setFormatter(wrapped.formatter)
        self.filters = list(wrapped.filters)
        self.stream, self.tqdm_class = wrapped.stream, tqdm_class

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.tqdm_class.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


class Progress:
    """A tqdm bar over optimizer steps showing loss, lr, tokens/s; tqdm supplies the ETA."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True,
                        disable=not enabled, file=sys.stderr, mininterval=0.5)
        # While the bar is shown, console log lines (Hydra's stdout handler, basicConfig's stderr one) go through
        # tqdm.write; file handlers (<run dir>/train.log) are untouched. close() puts the handlers back.
        self._root_handlers: list[logging.Handler] | None = None
        if enabled:
            root = logging.getLogger()
            self._root_handlers = list(root.handlers)
            root.handlers = [_BarSafeHandler(h, type(self.bar)) if _is_console(h) else h for h in root.handlers]

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def show(self, metrics: dict[str, float]) -> None:
        keys = {"train/loss": "loss", "train/lr": "lr", "train/tokens_per_sec": "tok/s", "val/loss": "val"}
        post = {}
        for k, short in keys.items():
            if k in metrics:
                v = metrics[k]
                post[short] = f"{v:.2e}" if short == "lr" else (f"{v:.0f}" if short == "tok/s" else f"{v:.4f}")
        self.bar.set_postfix(post, refresh=False)

    def write(self, msg: str) -> None:
        if not self.bar.disable:
            self.bar.write(msg)

    def close(self) -> None:
        self.bar.close()
        if self._root_handlers is not None:
            logging.getLogger().handlers = self._root_handlers
            self._root_handlers = None


class Throughput:
    """Tokens and samples per second between two log points (host-side counters, no device sync)."""

    def __init__(self, flops_per_token: float | None = None, peak_flops: float | None = None):
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self.reset()

    def reset(self) -> None:
        self.t0, self.tokens, self.samples = time.perf_counter(), 0, 0

    def add(self, tokens: int, samples: int) -> None:
        self.tokens += tokens
        self.samples += samples

    def compute(self, world_size: int = 1) -> dict[str, float]:
        dt = max(time.perf_counter() - self.t0, 1e-9)
        out = {"train/tokens_per_sec": self.tokens * world_size / dt, "train/samples_per_sec": self.samples * world_size / dt}
        if self.flops_per_token and self.peak_flops:
            out["train/mfu"] = self.flops_per_token * self.tokens / dt / self.peak_flops
        self.reset()
        return out
