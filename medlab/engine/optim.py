"""Optimizer and learning-rate schedule builders shared by every objective."""

from __future__ import annotations

import math
import re
from typing import Iterable

import torch

SCHEDULERS = ("cosine", "linear", "constant")


def param_groups(named_params: Iterable[tuple[str, torch.nn.Parameter]], weight_decay: float,
                 lr: float | None = None, lr_multipliers: dict[str, float] | None = None) -> list[dict]:
    """Trainable params split into decayed (matrices) and non-decayed (biases, norms, 1-d) groups.

    ``lr_multipliers`` (``{regex: factor}``, e.g. ``{classifier: 50}`` for a new head on a pretrained encoder): a
    parameter whose name matches a regex (``re.search``, first match wins) trains at ``lr * factor`` in groups of
    its own, after the base groups (group 0 keeps the base lr, which the loop logs). Every regex must match a
    trainable parameter (a typo would silently train everything at the base lr)."""
    multipliers = [(re.compile(k), float(v)) for k, v in (lr_multipliers or {}).items()]
    groups: dict[tuple[bool, float], list] = {(True, 1.0): [], (False, 1.0): []}
    used: set[str] = set()
    for name, p in named_params:
        if not p.requires_grad:
            continue
        factor = 1.0
        for rx, f in multipliers:
            if rx.search(name):
                factor = f
                used.add(rx.pattern)
                break
        decays = not (p.ndim < 2 or name.endswith(".bias"))
        groups.setdefault((decays, factor), []).append(p)
    unused = [rx.pattern for rx, _ in multipliers if rx.pattern not in used]
    if unused:
        raise ValueError(f"objective.lr_multipliers: {unused} match no trainable parameter name")
    out = []
    for (decays, factor), params in groups.items():
        if not params and (factor != 1.0 or not decays):
            continue
        group = {"params": params, "weight_decay": weight_decay if decays else 0.0}
        if factor != 1.0:
            group["lr"] = lr * factor if lr is not None else None
        out.append(group)
    return out


FUSED_DEVICES = ("cuda", "cpu", "xpu", "mps")


def build_adamw(named_params, *, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999), eps: float = 1e-8,
                fused: bool | None = None, lr_multipliers: dict[str, float] | None = None) -> torch.optim.AdamW:
    groups = param_groups(named_params, weight_decay, lr, lr_multipliers)
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
