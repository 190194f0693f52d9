"""Optimizer and learning-rate schedule builders shared by every objective."""

from __future__ import annotations

import math
from typing import Iterable

import torch

SCHEDULERS = ("cosine", "linear", "constant")


def param_groups(named_params: Iterable[tuple[str, torch.nn.Parameter]], weight_decay: float) -> list[dict]:
    """Trainable params split into decayed (matrices) and non-decayed (biases, norms, 1-d) groups."""
    decay, no_decay = [], []
    for name, p in named_params:
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name.endswith(".bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


FUSED_DEVICES = ("cuda", "cpu", "xpu", "mps")


def build_adamw(named_params, *, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999), eps: float = 1e-8,
                fused: bool | None = None) -> torch.optim.AdamW:
    groups = param_groups(named_params, weight_decay)
    if not any(g["params"] for g in groups):
        raise ValueError("no trainable parameters: check the adapter config (target_modules) and freezing")
    if fused is None:  # fused kernels exist for these devices and float dtypes (torch >= 2.4 on CPU)
        fused = all(p.device.type in FUSED_DEVICES and p.is_floating_point() for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=fused or None)


def lr_lambda(step: int, *, total_steps: int, warmup_steps: int, kind: str, min_lr_ratio: float) -> float:
    """Multiplier of the base lr at optimizer step ``step`` (0-based).

    warmup: (step + 1) / warmup_steps for step < warmup_steps (linear, never exactly 0 so step 0 learns);
    then progress p = (step - warmup) / max(1, total - warmup), clipped to [0, 1], and
      cosine:   min + (1 - min) * 0.5 * (1 + cos(pi * p))
      linear:   min + (1 - min) * (1 - p)
      constant: 1
    where min = ``min_lr_ratio``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    p = min(max((step - warmup_steps) / max(1, total_steps - warmup_steps), 0.0), 1.0)
    if kind == "cosine":
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p))
    if kind == "linear":
        return min_lr_ratio + (1 - min_lr_ratio) * (1 - p)
    raise ValueError(f"unknown scheduler {kind!r}; expected one of {SCHEDULERS}")


def build_scheduler(optimizer, *, total_steps: int, kind: str = "cosine", warmup_steps: int = 0,
                    warmup_ratio: float = 0.0, min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = max(int(warmup_steps), int(round(warmup_ratio * total_steps)))
    # A plain function (not a callable object): LambdaLR then stores None for it in state_dict, so the
    # scheduler state stays loadable with torch.load(weights_only=True); the schedule itself is rebuilt
    # from the config on resume.
    def fn(step: int) -> float:
        return lr_lambda(step, total_steps=total_steps, warmup_steps=warmup, kind=kind, min_lr_ratio=min_lr_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
