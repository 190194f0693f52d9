"""What every objective shares, held by composition: optimizer + schedule settings, rank gathering, and the
small checks their ``config_problems`` use."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from medlab.engine.optim import build_adamw, build_scheduler


@dataclass
class OptimSettings:
    lr: float = 2e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    scheduler: str = "cosine"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    min_lr_ratio: float = 0.0
    fused_adamw: bool | None = None
    lr_multipliers: dict[str, float] | None = None  # {param-name regex: lr factor} (medlab.engine.optim.param_groups)

    def build(self, named_params, total_steps: int) -> dict:
        """AdamW over the trainable params + the per-step schedule, in the loop's expected shape."""
        opt = build_adamw(named_params, lr=self.lr, weight_decay=self.weight_decay, betas=tuple(self.betas),
                          eps=self.eps, fused=self.fused_adamw,
                          lr_multipliers=dict(self.lr_multipliers) if self.lr_multipliers else None)
        sched = build_scheduler(opt, total_steps=total_steps, kind=self.scheduler, warmup_steps=self.warmup_steps,
                                warmup_ratio=self.warmup_ratio, min_lr_ratio=self.min_lr_ratio)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def gather_objects(obj, fabric) -> list:
    """Every rank's ``obj`` (rank order); just ``[obj]`` on one process."""
    if fabric is None or fabric.world_size == 1:
        return [obj]
    out = [None] * fabric.world_size
    torch.distributed.all_gather_object(out, obj)
    return out


def choice_problem(key: str, value: Any, choices: tuple) -> str | None:
    """``key=value is not one of ...`` when ``value`` is not in ``choices`` (None: fine)."""
    return None if value in choices else f"{key}={value!r} is not one of {', '.join(map(str, choices))}"


def int_problem(key: str, value: Any, *, minimum: int = 1, allow_none: bool = False) -> str | None:
    """A message when ``value`` is not an integer >= ``minimum`` (or null when ``allow_none``)."""
    if value is None and allow_none:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
        return None
    return f"{key} must be {'null or ' if allow_none else ''}an integer >= {minimum}, got {value!r}"

