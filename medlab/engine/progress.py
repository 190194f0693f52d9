"""Progress bar and throughput bookkeeping for the loop (rank 0 only)."""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm


class Progress:
    """A tqdm bar over optimizer steps showing loss, lr, tokens/s; tqdm supplies the ETA."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True,
                        disable=not enabled, file=sys.stderr, mininterval=0.5)

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
