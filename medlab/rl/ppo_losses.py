"""PPO maths as pure tensor functions: GAE, whitening, the clipped policy loss and the clipped value loss.

The formulas follow TRL's experimental ``PPOTrainer`` (``trl/experimental/ppo/ppo_trainer.py``, removed from TRL
in v1.13; the venv's TRL 1.16 no longer ships it): per-token rewards (the score at the last completion token,
a KL penalty on every token), GAE over the completion, returns = advantages + values, advantages whitened over
the batch's tokens, ``pg_loss = masked_mean(max(-A r, -A clip(r, 1 - eps, 1 + eps)))`` and
``vf_loss = 0.5 masked_mean(max((V - R)^2, (clip(V, V_old +- eps_v) - R)^2))``. Masks are [B, T] (1 = a token the
policy generated); masked positions never contribute, even when they hold NaN/inf.
"""

from __future__ import annotations

import torch

from medlab.rl.losses import masked_mean


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, *, shift_mean: bool = True,
                  eps: float = 1e-8) -> torch.Tensor:
    """``(x - mu) / sqrt(var + eps)`` with mu and the Bessel-corrected var over the masked entries (TRL's
    ``masked_whiten``); ``shift_mean=False`` adds mu back (scale only). Masked-out entries are returned as 0."""
    m = mask.bool()
    n = m.sum()
    if n < 2:
        raise ValueError("masked_whiten needs at least two unmasked values")
    x = torch.where(m, values, torch.zeros_like(values))
    mu = x.sum() / n
    var = (torch.where(m, values - mu, torch.zeros_like(values)) ** 2).sum() / (n - 1)
    out = (values - mu) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mu
    return torch.where(m, out, torch.zeros_like(out))


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized Advantage Estimation over each row's masked tokens: ``(advantages, returns)`` [B, T].

    With next(t) the next masked position after t in the row (none at the end: V = 0 there, the episode ends):

        delta_t = r_t + gamma * V_next(t) - V_t
        A_t     = delta_t + gamma * lam * A_next(t)
        R_t     = A_t + V_t                          (the value targets)

    Masked-out positions (padding, tool observations) are skipped by the recursion and get A = R = 0. For a
    contiguous mask this is TRL's PPOTrainer loop (``nextvalues = values[:, t + 1]``, 0 past the end).
    """
    if rewards.shape != values.shape or mask.shape != values.shape or values.dim() != 2:
        raise ValueError(f"rewards, values and mask must be [B, T] alike, got {tuple(rewards.shape)}, "
                         f"{tuple(values.shape)}, {tuple(mask.shape)}")
    if not (0 <= gamma <= 1 and 0 <= lam <= 1):
        raise ValueError(f"gamma and lam must be in [0, 1], got {gamma} and {lam}")
    m = mask.bool()
    dtype = torch.promote_types(values.dtype, torch.float32)
    r = torch.where(m, rewards.to(dtype), torch.zeros((), dtype=dtype))
    v = torch.where(m, values.to(dtype), torch.zeros((), dtype=dtype))
    adv = torch.zeros_like(v)
    next_value = torch.zeros(v.shape[0], dtype=dtype, device=v.device)
    next_adv = torch.zeros_like(next_value)
    for t in range(v.shape[1] - 1, -1, -1):
        delta = r[:, t] + gamma * next_value - v[:, t]
        a = delta + gamma * lam * next_adv
        adv[:, t] = torch.where(m[:, t], a, torch.zeros_like(a))
        next_value = torch.where(m[:, t], v[:, t], next_value)
        next_adv = torch.where(m[:, t], a, next_adv)
    returns = torch.where(m, adv + v, torch.zeros_like(adv))
    return adv, returns


def ppo_policy_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
                    clip: float = 0.2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate, a token mean over the mask (TRL PPOTrainer):

        r    = exp(logps - old_logps)
        loss = masked_mean( max(-A r, -A clip(r, 1 - clip, 1 + clip)) )

    Stats (detached): ``clipfrac`` (tokens where the clipped term is the larger), ``approx_kl``
    (``0.5 * masked_mean((logps - old_logps)^2)``), ``ratio`` (masked mean).
    """
    if not (logps.shape == old_logps.shape == advantages.shape == mask.shape):
        raise ValueError("logps, old_logps, advantages and mask must have one shape")
    if clip < 0:
        raise ValueError(f"clip must be >= 0, got {clip}")
    m = mask.bool()  # masked tokens are replaced before any maths: no NaN reaches the loss or the gradient
    diff = torch.where(m, logps - old_logps, torch.zeros((), dtype=logps.dtype))
    advantages = torch.where(m, advantages, torch.zeros((), dtype=advantages.dtype))
    ratio = torch.exp(diff)
    losses = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.max(losses, clipped), mask)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((clipped > losses).float(), mask),
                 "approx_kl": 0.5 * masked_mean(diff.detach() ** 2, mask),
                 "ratio": masked_mean(ratio.detach(), mask)}
    return loss, stats


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, *,
                   clip: float = 0.2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss, a token mean over the mask (TRL PPOTrainer):

        V_clip = clip(V, V_old - clip, V_old + clip)
        loss   = 0.5 * masked_mean( max((V - R)^2, (V_clip - R)^2) )

    Stats (detached): ``vf_clipfrac`` (tokens where the clipped term is the larger) and ``explained_variance``
    ``1 - Var(R - V_old) / Var(R)`` over the masked tokens (how much of the returns the critic that made them
    explained; 1 = all, <= 0 = none).
    """
    if not (values.shape == old_values.shape == returns.shape == mask.shape):
        raise ValueError("values, old_values, returns and mask must have one shape")
    if clip < 0:
        raise ValueError(f"clip must be >= 0, got {clip}")
    m = mask.bool()
    zero = torch.zeros((), dtype=values.dtype)
    values, old_values, returns = (torch.where(m, t, zero) for t in (values, old_values, returns))
    v_clipped = torch.clamp(values, old_values - clip, old_values + clip)
    unclipped = (values - returns) ** 2
    clipped = (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped, clipped), mask)
    with torch.no_grad():
        ret, old = returns[m].float(), old_values[m].float()
        var = ret.var(unbiased=False) if ret.numel() else torch.zeros(())
        ev = 1 - (ret - old).var(unbiased=False) / var if var > 0 else torch.full((), float("nan"))
        stats = {"vf_clipfrac": masked_mean((clipped > unclipped).float(), mask), "explained_variance": ev}
    return loss, stats
