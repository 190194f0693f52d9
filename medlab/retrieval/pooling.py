"""Pooling token states into one vector per sequence (pure tensor functions).

``mean``: average of the non-pad token states (sentence-transformers' default for MiniLM/BERT).
``cls``: the first non-pad token (BERT's [CLS]).
``last_token``: the last non-pad token -- the only position of a causal LM that has seen the whole
text (E5-Mistral / Qwen3-Embedding style); works with left or right padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

POOLING = ("mean", "cls", "last_token")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str = "mean") -> torch.Tensor:
    """``hidden`` [B, T, H], ``attention_mask`` [B, T] (1 = token) -> [B, H].

    mean:       sum_t m[b,t] h[b,t] / max(sum_t m[b,t], 1)   (accumulated in float32)
    cls:        h[b, first t with m[b,t] = 1]
    last_token: h[b, last t with m[b,t] = 1]
    """
    if hidden.dim() != 3 or attention_mask.shape != hidden.shape[:2]:
        raise ValueError(f"pool expects hidden [B,T,H] and attention_mask [B,T], got {tuple(hidden.shape)} "
                         f"and {tuple(attention_mask.shape)}")
    mask = attention_mask.to(torch.bool)
    if mode == "mean":
        m = mask.unsqueeze(-1).to(torch.float32)
        summed = (hidden.float() * m).sum(dim=1)
        return (summed / m.sum(dim=1).clamp(min=1.0)).to(hidden.dtype)
    positions = torch.arange(hidden.shape[1], device=hidden.device).expand_as(mask)
    if mode == "cls":
        index = torch.where(mask, positions, hidden.shape[1]).min(dim=1).values.clamp(max=hidden.shape[1] - 1)
    elif mode == "last_token":
        index = torch.where(mask, positions, -1).max(dim=1).values.clamp(min=0)
    else:
        raise ValueError(f"pooling={mode!r} is not one of {POOLING}")
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]


def embed(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str = "mean", normalize: bool = True) -> torch.Tensor:
    """`pool`, then L2-normalize (cosine geometry) when ``normalize``."""
    out = pool(hidden, attention_mask, mode)
    return F.normalize(out.float(), dim=-1) if normalize else out
