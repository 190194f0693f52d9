"""Group-relative advantages for GRPO as a pure tensor function (TRL ``scale_rewards`` semantics).

The rewards of one prompt's G completions form a group; each completion's advantage is its reward minus the
group's mean reward, optionally divided by a standard deviation. NaN rewards (every reward function failed or
returned None for that completion) are masked: they are left out of the group mean and std and get advantage 0.
"""

from __future__ import annotations

import torch

SCALES = ("group", "batch", "none")


def group_advantages(
    rewards: torch.Tensor, group_size: int, *, scale: str = "group", eps: float = 1e-4
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Advantages ``A`` [N] of rewards ``r`` [N] laid out as N/G consecutive groups of ``group_size`` G.

    With V_g the valid (non-NaN) members of group g, n_g = |V_g|, and std the Bessel-corrected (n - 1) std
    (``trl.trainer.utils.nanstd``):

        mean_g = 1/n_g * sum_{j in V_g} r_j
        A_i    = (r_i - mean_g) / (std_g + eps)       scale="group"  (GRPO; TRL scale_rewards="group")
        A_i    = (r_i - mean_g) / (std_all + eps)     scale="batch"  (std over every valid reward of the batch)
        A_i    =  r_i - mean_g                        scale="none"   (Dr. GRPO; no std division)
        A_i    = 0                                    if r_i is NaN, or group g has zero variance (n_g <= 1
                                                      or all valid rewards equal), exactly

    This is TRL 1.16's ``GRPOTrainer._generate_and_score_completions`` (``multi_objective_aggregation=
    "sum_then_normalize"``), except that a zero-variance group gives exactly 0 rather than the float
    residue (r_i - mean_g) / eps of an inexact mean.

    Boundedness: a z-score with the (n - 1) std satisfies |r_i - mean_g| / std_g <= (n_g - 1) / sqrt(n_g)
    < sqrt(G), and adding ``eps`` to the denominator only shrinks it; so with scale="group" a single outlier
    in an otherwise constant group, however small its deviation, gets |A| < sqrt(G) (and |A| -> 0 as the
    deviation -> 0 relative to ``eps``).

    Returns (A [N] in at least float32, stats). Stats are detached 0-dim tensors: ``reward/mean`` and
    ``reward/std`` over the valid rewards (TRL's ``reward``/``reward_std``), ``frac_zero_std`` (fraction of
    groups that carry no signal: zero variance, or fewer than 2 valid rewards; TRL's
    ``frac_reward_zero_std`` counts samples rather than groups and skips groups with <= 1 valid reward),
    ``masked`` (number of NaN rewards), ``adv/abs_mean``.
    """
    if rewards.dim() != 1:
        raise ValueError(f"group_advantages expects rewards [N], got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(f"group_size must be >= 1 and divide N={rewards.numel()}, got {group_size}")
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    r = rewards.to(torch.promote_types(rewards.dtype, torch.float32))
    grouped = r.view(-1, group_size)  # [N/G, G]
    valid = ~torch.isnan(grouped)
    count = valid.sum(dim=1, keepdim=True)
    filled = torch.where(valid, grouped, torch.zeros_like(grouped))
    mean = filled.sum(dim=1, keepdim=True) / count.clamp(min=1)
    std = _nanstd(grouped, dim=1)  # [N/G, 1], NaN where n_g <= 1
    hi = torch.where(valid, grouped, torch.full_like(grouped, -torch.inf)).amax(dim=1, keepdim=True)
    lo = torch.where(valid, grouped, torch.full_like(grouped, torch.inf)).amin(dim=1, keepdim=True)
    zero_var = (count <= 1) | (hi == lo)  # [N/G, 1]

    adv = grouped - mean
    if scale == "group":
        adv = adv / (std + eps)
    elif scale == "batch":
        adv = adv / (torch.nan_to_num(_nanstd(r.view(1, -1), dim=1), nan=0.0) + eps)
    adv = torch.where(valid & ~zero_var, adv, torch.zeros_like(adv)).reshape(-1)

    stats = {
        "reward/mean": torch.nanmean(r).detach(),
        "reward/std": torch.nan_to_num(_nanstd(r.view(1, -1), dim=1), nan=0.0).reshape(()).detach(),
        "frac_zero_std": zero_var.float().mean().detach(),
        "masked": (~valid).sum().detach(),
        "adv/abs_mean": adv.abs().mean().detach(),
    }
    return adv, stats


def _nanstd(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Bessel-corrected std ignoring NaNs: sqrt( sum_valid (x - mean)^2 / (n - 1) ); NaN when n <= 1."""
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    count = (~torch.isnan(x)).sum(dim=dim, keepdim=True)
    sq = torch.nan_to_num((x - mean) ** 2, nan=0.0).sum(dim=dim, keepdim=True)
    var = torch.where(count > 1, sq / (count - 1).clamp(min=1), torch.full_like(sq, torch.nan))
    return var.sqrt()
