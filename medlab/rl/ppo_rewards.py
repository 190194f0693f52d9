"""PPO's per-token rewards as pure tensor functions (TRL's experimental ``PPOTrainer``, v1.12).

A completion's reward is its sequence score -- a reward model's scalar and/or the configured reward functions,
minus ``missing_eos_penalty`` when it ended without an EOS -- placed on its **last** generated token, plus a KL
penalty to the reference on **every** token:

    kl_t  = log pi(y_t) - log ref(y_t)                        k1 (unbiased, can be negative per token)
    kl_t  = (exp(l_t) - 1) - l_t,  l_t = log ref - log pi     k3 (>= 0 per token, lower variance)
    r_t   = -kl_coef * kl_t  (+ score on the last masked token of the row)

``log pi`` is the sampling policy's log-prob (the old log-probs of the experience). Masks are [N, T]
(1 = a token the policy generated); masked positions carry no reward and no KL, even when they hold NaN/inf.
"""

from __future__ import annotations

import torch

KL_ESTIMATORS = ("k1", "k3")


def kl_penalty(logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token KL estimate [N, T] (fp32) of the sampling policy to the reference, 0 off the mask."""
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl estimator {estimator!r} is not one of {', '.join(KL_ESTIMATORS)}")
    if not (logps.shape == ref_logps.shape == mask.shape):
        raise ValueError(f"logps, ref_logps and mask must share a shape, got {tuple(logps.shape)}, "
                         f"{tuple(ref_logps.shape)} and {tuple(mask.shape)}")
    m = mask.bool()
    zero = torch.zeros((), dtype=torch.float32, device=logps.device)
    log_ratio = torch.where(m, ref_logps.float() - logps.float(), zero)  # log ref - log pi
    kl = -log_ratio if estimator == "k1" else torch.expm1(log_ratio) - log_ratio
    return torch.where(m, kl, zero)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """[N] long: the last position of each row where ``mask`` is 1 (-1 for a row with none)."""
    T = mask.shape[1]
    positions = torch.arange(T, device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, torch.full_like(positions, -1)).max(1).values if T else \
        torch.full((mask.shape[0],), -1, dtype=torch.long, device=mask.device)


def token_rewards(scores: torch.Tensor, logps: torch.Tensor, ref_logps: torch.Tensor | None, mask: torch.Tensor, *,
                  kl_coef: float = 0.0, estimator: str = "k1") -> tuple[torch.Tensor, torch.Tensor]:
    """``(rewards [N, T], kl [N, T])``: ``-kl_coef * kl`` on every masked token and ``scores`` [N] added on each
    row's last masked token (see the module docstring). ``ref_logps=None`` (no reference, ``kl_coef`` 0): no KL."""
    if scores.dim() != 1 or scores.shape[0] != mask.shape[0]:
        raise ValueError(f"scores must be [N] with N = {mask.shape[0]} rows, got {tuple(scores.shape)}")
    if not torch.isfinite(scores).all():
        raise ValueError("scores must be finite (mask or replace unscorable completions first)")
    if ref_logps is None:
        if kl_coef:
            raise ValueError("kl_coef > 0 needs the reference log-probs")
        kl = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    else:
        kl = kl_penalty(logps, ref_logps, mask, estimator)
    rewards = -float(kl_coef) * kl
    last = last_token_index(mask)
    rows = torch.nonzero(last >= 0).squeeze(1)
    rewards[rows, last[rows]] += scores[rows].float()
    return rewards, kl


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """``1 - Var(R - V) / Var(R)`` over the masked tokens (population variances): how much of the returns the
    critic's values explained (1 = all, <= 0 = none; NaN when the returns do not vary)."""
    m = mask.bool()
    ret, val = returns[m].double(), values[m].double()
    var = ret.var(unbiased=False) if ret.numel() else torch.zeros((), dtype=torch.float64)
    return float(1 - (ret - val).var(unbiased=False) / var) if var > 0 else float("nan")
