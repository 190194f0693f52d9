"""Chunked linear cross-entropy: next-token loss straight from hidden states, never the full logits.

The plain path computes ``logits = h @ W^T`` for every position of the batch (``B*T*V`` fp32 numbers:
2.4 GB for 4 x 1024 tokens of a 150k vocabulary), then the loss. Here only positions that carry a label
are projected, ``chunk_size`` rows at a time, and each chunk's gradient is computed right away:

    for a chunk of rows h_c [n,H] with targets y_c:
        z = h_c @ W^T (+ b)                      [n,V], in the compute dtype, then fp32
        nll_i = logsumexp(z_i) - z_i[y_i]
        dz = softmax(z) - onehot(y)              (the gradient of sum_i nll_i w.r.t. z)
        dh_c = dz @ W          dW += dz^T @ h_c     db += sum_i dz_i

so at most one chunk's ``[n,V]`` logits exist at a time and the backward pass only scales the stored
gradients by the incoming gradient of the summed loss. The FLOPs equal the plain path's (one matmul
forward, two backward); the logits of prompt and padding tokens are never computed at all.

The loss returned is the *sum* of the per-token nll; callers divide by the label-token count (a plain
autograd division), which keeps "mean over the batch's label tokens" and the loop's micro-batch
weighting exact.

``lm_head_parts`` finds the decoder (hidden states after the final norm) and the output projection of
a transformers causal LM, through peft wrappers; it returns ``None`` with the reason when the model's
logits are not a plain linear map of the hidden states (soft-capping, logit scaling, a quantized or
adapted head), and the caller then falls back to the plain path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from medlab.ops.losses import IGNORE_INDEX

# Elements of one chunk's fp32 logits (256 MiB): chunk rows = max(128, LOGITS_BUDGET // vocab).
LOGITS_BUDGET = 1 << 26


def default_chunk_size(vocab_size: int) -> int:
    return max(128, LOGITS_BUDGET // max(int(vocab_size), 1))


class _LinearCrossEntropy(torch.autograd.Function):
    """sum_i nll(h_i @ W^T + b, y_i) with gradients computed chunk by chunk in the forward pass."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_size: int):
        need_h, need_w = hidden.requires_grad, weight.requires_grad
        need_b = bias is not None and bias.requires_grad
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        w = weight.to(hidden.dtype)
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start:start + chunk_size]
            y = targets[start:start + chunk_size]
            valid = y != IGNORE_INDEX  # masked, never boolean-indexed: no host sync
            y = y.clamp(min=0)
            z = (h @ w.t() if bias is None else torch.addmm(bias.to(h.dtype), h, w.t())).float()
            lse = torch.logsumexp(z, dim=-1)
            total += ((lse - z.gather(1, y[:, None]).squeeze(1)) * valid).sum()
            if not (need_h or need_w or need_b):
                continue
            dz = torch.exp(z.sub_(lse[:, None]))  # softmax, in place of the logits
            dz[torch.arange(len(y), device=y.device), y] -= 1.0
            dz *= valid[:, None]
            if need_h:
                grad_h[start:start + chunk_size] = (dz.to(h.dtype) @ w).to(grad_h.dtype)
            if need_w:  # accumulated in fp32; the product itself runs in the compute dtype
                if h.dtype == torch.float32:
                    grad_w.addmm_(dz.t(), h)
                else:
                    grad_w += dz.to(h.dtype).t() @ h
            if need_b:
                grad_b += dz.sum(0)
        ctx.save_for_backward(*(t for t in (grad_h, grad_w, grad_b) if t is not None))
        ctx.flags = (need_h, need_w, need_b)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        saved = list(ctx.saved_tensors)
        need_h, need_w, need_b = ctx.flags
        grad_h = saved.pop(0) if need_h else None
        grad_h = grad_h * grad_out.to(grad_h.dtype) if need_h else None
        grad_w = (saved.pop(0) * grad_out).to(ctx.dtypes[0]) if need_w else None
        grad_b = (saved.pop(0) * grad_out).to(ctx.dtypes[1]) if need_b else None
        return grad_h, grad_w, grad_b, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         bias: torch.Tensor | None = None, chunk_size: int | None = None) -> torch.Tensor:
    """``sum_i CE(hidden_i @ weight^T + bias, targets_i)`` over rows whose target is not -100, as a differentiable
    fp32 scalar, without materializing more than ``chunk_size`` rows of logits. ``hidden [N,H]``, ``weight [V,H]``,
    ``targets [N]``. Rows with -100 are masked, not removed (removing them by a boolean mask would be a host
    sync): select the labelled rows beforehand with a precomputed index (``batch["loss_index"]``) to skip them."""
    chunk = chunk_size or default_chunk_size(weight.shape[0])
    return _LinearCrossEntropy.apply(hidden, weight, bias, targets, chunk)


@torch.no_grad()
def linear_cross_entropy_stats(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                               bias: torch.Tensor | None = None, chunk_size: int | None = None
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum of nll, number of argmax hits)`` over labelled rows, chunked, without gradients (validation)."""
    chunk = chunk_size or default_chunk_size(weight.shape[0])
    nll = torch.zeros((), dtype=torch.float32, device=hidden.device)
    hits = torch.zeros((), dtype=torch.long, device=hidden.device)
    w = weight.to(hidden.dtype)
    for start in range(0, hidden.shape[0], chunk):
        z = F.linear(hidden[start:start + chunk], w, None if bias is None else bias.to(hidden.dtype)).float()
        y = targets[start:start + chunk]
        nll += F.cross_entropy(z, y, reduction="sum", ignore_index=IGNORE_INDEX)
        hits += ((z.argmax(-1) == y) & (y != IGNORE_INDEX)).sum()
    return nll, hits


def shift_for_next_token(hidden: torch.Tensor, labels: torch.Tensor, index: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """``hidden [B,T,H]``, ``labels [B,T]`` -> rows ``[M, H]`` and their next-token targets ``[M]``.

    ``index`` (the collator's ``loss_index``: flat positions in ``[B*(T-1)]`` whose next token has a label,
    computed on the host before the batch moves to the device) keeps only those rows without a host sync;
    without it every shifted position is kept and unlabelled ones are masked in the loss.
    """
    rows, targets = hidden[:, :-1].reshape(-1, hidden.shape[-1]), labels[:, 1:].reshape(-1)
    if index is not None:
        rows, targets = rows.index_select(0, index), targets.index_select(0, index)
    return rows, targets


@dataclass
class LMHeadParts:
    decoder: torch.nn.Module  # returns last_hidden_state (after the final norm)
    head: torch.nn.Linear  # logits = head(hidden)


# Config attributes that make logits more than a linear map of the hidden states.
_NONLINEAR_LOGITS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def lm_head_parts(model: Any) -> tuple[LMHeadParts | None, str]:
    """``(parts, "")`` for a transformers causal LM (peft-wrapped or not), or ``(None, reason)``."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if head is None:
        return None, f"{type(inner).__name__} has no output embedding (lm_head)"
    if type(head) is not torch.nn.Linear:
        return None, f"the lm_head is a {type(head).__name__} (adapted or quantized), not a plain nn.Linear"
    config = getattr(inner, "config", None)
    for name in _NONLINEAR_LOGITS:
        value = getattr(config, name, None)
        if value not in (None, 0, 1, 1.0):
            return None, f"config.{name}={value} scales the logits"
    decoder = getattr(inner, getattr(inner, "base_model_prefix", "model"), None)
    if not isinstance(decoder, torch.nn.Module) or decoder is inner:
        return None, f"{type(inner).__name__} has no separate decoder module"
    return LMHeadParts(decoder, head), ""
