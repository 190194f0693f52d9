"""Preference-optimization losses as pure functions of sequence log-probabilities (no model, no data).

Every function returns **per-example** losses (one per pair for DPO/ORPO, one per completion for KTO) plus
detached statistics; the objectives take the mean, so the loop's ``batch_weight`` = pairs / examples makes
gradient accumulation and DDP equal one big batch. The formulas follow TRL 1.16 term for term (the tests compare
them on identical inputs):

- DPO (``DPOTrainer``), ``Δ = (log π(y_c) - log π_ref(y_c)) - (log π(y_r) - log π_ref(y_r))`` (summed completion
  log-probs):
  ``sigmoid``: -log σ(βΔ); ``hinge``: relu(1 - βΔ); ``ipo``: (Δ' - 1/(2β))² with Δ' the same difference of
  *per-token averaged* log-ratios (TRL's length normalization); ``robust`` (label smoothing ε < 0.5):
  (-(1-ε) log σ(βΔ) + ε log σ(-βΔ)) / (1 - 2ε);
  ``simpo`` (reference-free, ``CPOTrainer(loss_type="simpo")``): -(1-ε) log σ(β(ā_c - ā_r) - γ) - ε log σ(-(…)),
  ā = per-token average log-prob, γ = ``simpo_gamma``.
  Several types combine as ``Σ_k w_k · loss_k`` (TRL's ``loss_type=[...]`` + ``loss_weights``).
- ORPO (``ORPOTrainer``): ``NLL(y_c) - λ log σ(log odds)``, log odds = (ā_c - ā_r) - (log(1-e^ā_c) - log(1-e^ā_r)).
- KTO (``KTOTrainer``): desirable ``w_d (1 - σ(β(r - z)))``, undesirable ``w_u (1 - σ(β(z - r)))``, r = log π(y|x) -
  log π_ref(y|x), z = the batch KL estimate from mismatched pairs, detached, averaged over ranks, clamped >= 0.

Rewards (logged): β·(log π - log π_ref) for reference-based losses; β·ā for SimPO-only and λ·ā for ORPO (TRL's).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "robust", "simpo")
REFERENCE_FREE = frozenset({"simpo"})
LENGTH_NORMALIZED = frozenset({"ipo", "simpo"})


def needs_reference(loss_types: Sequence[str]) -> bool:
    return any(t not in REFERENCE_FREE for t in loss_types)


def dpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor | None, ref_rejected_logps: torch.Tensor | None, *,
             beta: float, loss_types: Sequence[str] = ("sigmoid",), loss_weights: Sequence[float] | None = None,
             label_smoothing: float = 0.0, simpo_gamma: float = 0.5,
             chosen_lengths: torch.Tensor | None = None, rejected_lengths: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-pair DPO-family losses ``[B]`` and stats (``chosen_rewards``, ``rejected_rewards`` [B], detached).

    ``*_logps``: summed completion log-probs ``[B]``; ``*_lengths``: completion token counts ``[B]`` (needed by
    ``ipo`` and ``simpo``); ``ref_*``: the reference's, needed unless every type is reference-free."""
    loss_types = list(loss_types)
    weights = list(loss_weights) if loss_weights is not None else [1.0] * len(loss_types)
    if len(weights) != len(loss_types):
        raise ValueError(f"{len(loss_weights)} loss_weights for {len(loss_types)} loss types {loss_types}")
    unknown = [t for t in loss_types if t not in DPO_LOSS_TYPES]
    if unknown:
        raise ValueError(f"unknown DPO loss type(s) {unknown}; valid: {', '.join(DPO_LOSS_TYPES)}")
    uses_ref = needs_reference(loss_types)
    if uses_ref and (ref_chosen_logps is None or ref_rejected_logps is None):
        raise ValueError(f"loss types {loss_types} need the reference log-probs")
    if LENGTH_NORMALIZED & set(loss_types) and (chosen_lengths is None or rejected_lengths is None):
        raise ValueError("ipo and simpo need the completion lengths")
    c_len = chosen_lengths.clamp(min=1).to(chosen_logps.dtype) if chosen_lengths is not None else None
    r_len = rejected_lengths.clamp(min=1).to(chosen_logps.dtype) if rejected_lengths is not None else None
    eps = float(label_smoothing)
    if uses_ref:
        chosen_ratio, rejected_ratio = chosen_logps - ref_chosen_logps, rejected_logps - ref_rejected_logps
        delta = chosen_ratio - rejected_ratio
    loss = torch.zeros_like(chosen_logps)
    for kind, weight in zip(loss_types, weights):
        if kind == "sigmoid":
            per = -F.logsigmoid(beta * delta)
        elif kind == "hinge":
            per = torch.relu(1 - beta * delta)
        elif kind == "ipo":
            per = (chosen_ratio / c_len - rejected_ratio / r_len - 1 / (2 * beta)) ** 2
        elif kind == "robust":
            per = (-(1 - eps) * F.logsigmoid(beta * delta) + eps * F.logsigmoid(-beta * delta)) / (1 - 2 * eps)
        else:  # simpo
            logits = chosen_logps / c_len - rejected_logps / r_len - simpo_gamma / beta
            per = -F.logsigmoid(beta * logits) * (1 - eps) - F.logsigmoid(-beta * logits) * eps
        loss = loss + weight * per
    if uses_ref:
        stats = {"chosen_rewards": beta * chosen_ratio.detach(), "rejected_rewards": beta * rejected_ratio.detach()}
    else:
        stats = {"chosen_rewards": beta * (chosen_logps / c_len).detach(),
                 "rejected_rewards": beta * (rejected_logps / r_len).detach()}
    return loss, stats


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for x < 0, stable on both sides of -ln 2."""
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_loss(chosen_avg_logps: torch.Tensor, rejected_avg_logps: torch.Tensor, chosen_nll: torch.Tensor,
              lam: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ORPO per pair: ``chosen_nll - λ log σ(log odds)`` (``chosen_nll``: a scalar or one value per pair) and stats
    (``log_odds``, ``log_odds_ratio`` = log σ(log odds), rewards λ·ā)."""
    c, r = chosen_avg_logps.float(), rejected_avg_logps.float()
    log_odds = (c - r) - (log1mexp(c) - log1mexp(r))
    ratio = F.logsigmoid(log_odds)
    loss = chosen_nll - lam * ratio
    return loss, {"log_odds": log_odds.detach(), "log_odds_ratio": ratio.detach(),
                  "chosen_rewards": lam * c.detach(), "rejected_rewards": lam * r.detach()}


def kto_kl(kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor,
           mean_over_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """KTO's reference point z: mean of ``log π - log π_ref`` over the mismatched (prompt, completion) pairs,
    detached, averaged over ranks (``mean_over_ranks``), clamped at 0."""
    kl = (kl_logps - ref_kl_logps).mean().detach()
    if mean_over_ranks is not None:
        kl = mean_over_ranks(kl)
    return kl.clamp(min=0)


def kto_loss(logps: torch.Tensor, ref_logps: torch.Tensor, desirable: torch.Tensor, kl: torch.Tensor, *,
             beta: float, desirable_weight: float = 1.0, undesirable_weight: float = 1.0
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """KTO per completion ``[B]`` (``desirable``: bool ``[B]``; ``kl``: :func:`kto_kl`) and stats (``rewards`` =
    β·(log π - log π_ref), detached)."""
    ratio = logps - ref_logps
    good = desirable_weight * (1 - torch.sigmoid(beta * (ratio - kl)))
    bad = undesirable_weight * (1 - torch.sigmoid(beta * (kl - ratio)))
    return torch.where(desirable.bool(), good, bad), {"rewards": beta * ratio.detach()}


def pair_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, chosen_logps: torch.Tensor,
                 rejected_logps: torch.Tensor) -> dict[str, torch.Tensor]:
    """Batch means (device tensors): rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies
    (chosen reward strictly above rejected), logps/chosen, logps/rejected."""
    return {"rewards/chosen": chosen_rewards.float().mean(), "rewards/rejected": rejected_rewards.float().mean(),
            "rewards/margins": (chosen_rewards - rejected_rewards).float().mean(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
            "logps/chosen": chosen_logps.detach().float().mean(),
            "logps/rejected": rejected_logps.detach().float().mean()}
