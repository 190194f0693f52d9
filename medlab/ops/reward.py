"""Reward-model maths (pure functions): the pairwise (Bradley-Terry) loss and where a sequence's reward is read."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_reward_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None,
                         center_coefficient: float | None = None) -> torch.Tensor:
    """``mean(-log sigmoid(r_c - r_r - margin)) + c * mean((r_c + r_r)^2)`` over the pairs (TRL RewardTrainer's
    loss; the second term, reward centering, only when ``center_coefficient`` is set)."""
    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin.to(diff)
    loss = -F.logsigmoid(diff).mean()
    if center_coefficient:
        loss = loss + center_coefficient * torch.mean((chosen + rejected) ** 2)
    return loss


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """The position of each row's last real token [N], from the mask alone: right or left padding, and correct
    when the pad id equals EOS (a pad-id search would stop before a trailing EOS)."""
    width = attention_mask.shape[-1]
    return (width - 1 - attention_mask.flip(-1).to(torch.long).argmax(-1)).to(torch.long)


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids counted over the real tokens (0 at each row's first one), so left padding shifts nothing."""
    return (attention_mask.to(torch.long).cumsum(-1) - 1).clamp(min=0)


def right_aligned(attention_mask: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(mask, *tensors)`` with each row's real tokens moved to the left (right padding), stable in order; the
    padding keeps its values. Encoders read the first token ([CLS]), which left padding would hide."""
    order = torch.argsort((attention_mask == 0).to(torch.int8), dim=-1, stable=True)
    return tuple(t.gather(-1, order) for t in (attention_mask, *tensors))
