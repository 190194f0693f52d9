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
    _check(rewards, group_size, scale, SCALES, eps)
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


# ---------------------------------------------------------------------------------------------- other estimators
ESTIMATORS = ("grpo", "rloo", "reinforce_pp")
# the normalizations each estimator takes through objective.scale_rewards (the first one is its default)
ESTIMATOR_SCALES = {"grpo": ("group", "batch", "none"), "rloo": ("none", "batch"), "reinforce_pp": ("batch", "none")}


def sequence_kl(old_logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token k1 KL estimate of the sampling policy to the reference, ``old - ref`` [N, T], 0 off the mask.
    (k1, not GRPO's k3: in the reward the KL enters as a per-token penalty, as in RLOO and REINFORCE++; it can
    be negative per token.)"""
    if old_logps.shape != ref_logps.shape or mask.shape != old_logps.shape:
        raise ValueError(f"old_logps, ref_logps and mask must share a shape, got {tuple(old_logps.shape)}, "
                         f"{tuple(ref_logps.shape)} and {tuple(mask.shape)}")
    kl = old_logps.float() - ref_logps.float()
    return torch.where(mask.bool(), kl, torch.zeros_like(kl))


def rloo_advantages(
    rewards: torch.Tensor, group_size: int, *, kl: torch.Tensor | None = None, kl_coef: float = 0.0,
    scale: str = "none", eps: float = 1e-4,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """REINFORCE Leave-One-Out (Ahmadian et al., 2024) advantages [N] as TRL 1.16's ``RLOOTrainer``.

    With ``kl`` [N, T] the per-token KL (:func:`sequence_kl`; None = none) the reward first pays for it:

        r'_i  = r_i - kl_coef * sum_t kl[i, t]                     (TRL: beta * sum of old - ref log-probs)
        b_i   = ( sum_{j in V_g, j != i} r'_j ) / (n_g - 1)        leave-one-out mean of the scorable siblings
        A_i   = r'_i - b_i
        A     = (A - mean_valid(A)) / (std_valid(A) + eps)         scale="batch" (TRL normalize_advantages=True;
                                                                   std Bessel-corrected), scale="none": as is
        A_i   = 0                                                  if r_i is NaN or n_g <= 1 (no sibling)

    (V_g: the non-NaN rewards of i's group, n_g = |V_g|.) Stats as :func:`group_advantages` (``reward/*`` of
    the rewards before the KL penalty) plus, with ``kl``, ``kl``: the mean over sequences of the summed KL.
    """
    _check(rewards, group_size, scale, ESTIMATOR_SCALES["rloo"], eps)
    raw = r = rewards.to(torch.promote_types(rewards.dtype, torch.float32))
    seq_kl = None
    if kl is not None:
        if kl.dim() != 2 or kl.shape[0] != r.numel():
            raise ValueError(f"kl must be [N={r.numel()}, T], got {tuple(kl.shape)}")
        seq_kl = kl.to(r.dtype).sum(dim=1)
        r = r - kl_coef * seq_kl
    grouped = r.view(-1, group_size)
    valid = ~torch.isnan(grouped)
    count = valid.sum(dim=1, keepdim=True)
    total = torch.nansum(grouped, dim=1, keepdim=True)
    baseline = (total - grouped) / (count - 1)  # NaN (0/0) for a lone scorable reward, NaN for a NaN reward
    adv = (grouped - baseline).reshape(-1)
    if scale == "batch":
        adv = (adv - torch.nanmean(adv)) / (_nanstd(adv.view(1, -1), dim=1).reshape(()) + eps)
    adv = torch.nan_to_num(adv, nan=0.0, posinf=0.0, neginf=0.0)
    stats = _stats(raw, grouped, valid, count, adv)
    if seq_kl is not None:
        stats["kl"] = seq_kl.mean().detach()
    return adv, stats


def reinforce_pp_advantages(
    rewards: torch.Tensor, mask: torch.Tensor, *, kl: torch.Tensor | None = None, kl_coef: float = 0.0,
    gamma: float = 1.0, scale: str = "batch", eps: float = 1e-8,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """REINFORCE++ (Hu, 2025) per-token advantages [N, T]: the reward at the last token, a per-token KL penalty
    everywhere, discounted returns, whitened over every token of the batch (verl's
    ``compute_reinforce_plus_plus_outcome_advantage`` with OpenRLHF's KL-in-reward):

        r_t   = -kl_coef * kl[i, t] + (r_i if t is the last masked token of row i else 0)     (masked t only)
        G_t   = sum_{s >= t, s masked} gamma^(#masked tokens in [t, s)) * r_s
        A_t   = (G_t - mu) / sqrt(var + eps)      scale="batch": mu, var over every masked token of every
                                                  scorable row (var Bessel-corrected, as verl's masked_whiten)
        A_t   = G_t                               scale="none"
        A_t   = 0                                 off the mask, and on every token of a row whose reward is NaN

    ``mask`` [N, T]: the tokens the policy generated (for tool rollouts the loss mask: observations get no
    reward, no KL and no advantage, and the discount skips them). Stats as :func:`group_advantages` (groups
    are not used: ``frac_zero_std`` is 0) plus ``kl`` (mean per-token KL over the mask) when ``kl`` is given.
    """
    if rewards.dim() != 1 or mask.dim() != 2 or mask.shape[0] != rewards.numel():
        raise ValueError(f"reinforce_pp_advantages expects rewards [N] and mask [N, T], got "
                         f"{tuple(rewards.shape)} and {tuple(mask.shape)}")
    if scale not in ESTIMATOR_SCALES["reinforce_pp"]:
        raise ValueError(f"scale must be one of {ESTIMATOR_SCALES['reinforce_pp']}, got {scale!r}")
    if not 0 < gamma <= 1 or eps < 0:
        raise ValueError(f"gamma must be in (0, 1] and eps >= 0, got {gamma} and {eps}")
    r = rewards.to(torch.promote_types(rewards.dtype, torch.float32))
    scorable = ~torch.isnan(r)
    m = mask.bool() & scorable[:, None]
    token_r = torch.zeros(m.shape, dtype=r.dtype, device=r.device)
    if kl is not None:
        if kl.shape != mask.shape:
            raise ValueError(f"kl must have the mask's shape {tuple(mask.shape)}, got {tuple(kl.shape)}")
        token_r = token_r - kl_coef * kl.to(r.dtype)
    positions = torch.arange(m.shape[1], device=m.device).expand_as(m)
    last = torch.where(m, positions, torch.full_like(positions, -1)).amax(dim=1)  # -1: no token
    rows = torch.nonzero(last >= 0).squeeze(1)
    token_r[rows, last[rows]] += torch.nan_to_num(r[rows], nan=0.0)
    token_r = torch.where(m, token_r, torch.zeros_like(token_r))
    returns = torch.zeros_like(token_r)
    running = torch.zeros(m.shape[0], dtype=r.dtype, device=r.device)
    for t in range(m.shape[1] - 1, -1, -1):  # discount only over the policy's own tokens
        running = torch.where(m[:, t], token_r[:, t] + gamma * running, running)
        returns[:, t] = running
    adv = returns
    if scale == "batch" and m.any():
        values = returns[m]
        var = values.var(unbiased=True) if values.numel() > 1 else torch.zeros((), dtype=r.dtype)
        adv = (returns - values.mean()) * torch.rsqrt(var + eps)
    adv = torch.where(m, adv, torch.zeros_like(adv))
    stats = {
        "reward/mean": torch.nanmean(r).detach(),
        "reward/std": torch.nan_to_num(_nanstd(r.view(1, -1), dim=1), nan=0.0).reshape(()).detach(),
        "frac_zero_std": torch.zeros(()),
        "masked": (~scorable).sum().detach(),
        "adv/abs_mean": (adv.abs().sum() / m.sum().clamp(min=1)).detach(),
    }
    if kl is not None:
        km = mask.bool()
        stats["kl"] = (torch.where(km, kl.float(), torch.zeros_like(kl.float())).sum() / km.sum().clamp(min=1)).detach()
    return adv, stats


def _check(rewards: torch.Tensor, group_size: int, scale: str, scales: tuple[str, ...], eps: float) -> None:
    if rewards.dim() != 1:
        raise ValueError(f"advantages expect rewards [N], got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(f"group_size must be >= 1 and divide N={rewards.numel()}, got {group_size}")
    if scale not in scales:
        raise ValueError(f"scale must be one of {scales}, got {scale!r}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")


def _stats(r, grouped, valid, count, adv) -> dict[str, torch.Tensor]:
    hi = torch.where(valid, grouped, torch.full_like(grouped, -torch.inf)).amax(dim=1, keepdim=True)
    lo = torch.where(valid, grouped, torch.full_like(grouped, torch.inf)).amin(dim=1, keepdim=True)
    return {
        "reward/mean": torch.nanmean(r).detach(),
        "reward/std": torch.nan_to_num(_nanstd(r.view(1, -1), dim=1), nan=0.0).reshape(()).detach(),
        "frac_zero_std": ((count <= 1) | (hi == lo)).float().mean().detach(),
        "masked": (~valid).sum().detach(),
        "adv/abs_mean": adv.abs().mean().detach(),
    }
