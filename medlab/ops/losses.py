"""Pure loss functions. Each docstring states the formula it computes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def shifted_token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token negative log-likelihood of next-token prediction.

    nll[b, t] = -log softmax(logits[b, t])[labels[b, t+1]] for t < T-1, computed in fp32;
    positions whose target is ``IGNORE_INDEX`` get nll 0 and mask 0.
    Returns ``(nll [B, T-1], mask [B, T-1] bool)``.
    """
    logits = logits[:, :-1, :].float()
    target = labels[:, 1:]
    mask = target != IGNORE_INDEX
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                          ignore_index=IGNORE_INDEX, reduction="none").view_as(target)
    return nll, mask


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the batch's label tokens.

    loss = sum_{b,t} mask[b,t] * nll[b,t] / sum_{b,t} mask[b,t]   (token-level mean, as transformers
    and TRL compute it). A batch with no label token gives 0 with a zero gradient, never NaN; the data
    pipeline drops such rows, so this only guards degenerate inputs.
    """
    nll, mask = shifted_token_nll(logits, labels)
    return (nll * mask).sum() / mask.sum().clamp(min=1)


def token_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of label tokens whose argmax prediction equals the target (next-token)."""
    pred = logits[:, :-1, :].argmax(-1)
    target = labels[:, 1:]
    mask = target != IGNORE_INDEX
    return ((pred == target) & mask).sum().float() / mask.sum().clamp(min=1)
