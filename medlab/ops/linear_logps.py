"""Chunked per-token log-probabilities straight from hidden states: ``log p(y_i | h_i)`` without full logits.

Preference objectives (DPO, ORPO, KTO) need each completion's summed (or averaged) log-probability, i.e. one
number per labelled token, not a summed cross-entropy. Like ``medlab.ops.linear_ce`` only the labelled rows are
projected, ``chunk_size`` rows at a time, so at most one chunk's ``[n, V]`` fp32 logits exist at once:

    z = h_c @ W^T (+ b)            logp_i = z_i[y_i] - logsumexp(z_i)
    d logp_i / d z_i = onehot(y_i) - softmax(z_i)

The incoming gradient ``g_i`` of each row is unknown in the forward pass (it depends on the preference loss), but
it is a per-row *scalar*, so the hidden-state gradient factorizes: ``dh_i = g_i * ((onehot - softmax) @ W)_i``.
The forward stores that ``[N, H]`` basis (as large as the hidden rows themselves) and the backward only scales it:
the same FLOPs as the plain path (one logits matmul forward, one backward), no ``[N, V]`` tensor kept. A trainable
output projection (full fine-tunes) needs ``sum_i g_i (onehot - softmax)_i^T h_i``, which does depend on ``g``: the
backward recomputes the chunk's logits for it (one extra matmul, only then).

Rows whose target is -100 give 0 and no gradient (masked, not removed: removing would be a host sync).
"""

from __future__ import annotations

import torch

from medlab.ops.linear_ce import default_chunk_size
from medlab.ops.losses import IGNORE_INDEX


def _chunk_logits(h: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return (h @ w.t() if bias is None else torch.addmm(bias.to(h.dtype), h, w.t())).float()


def _dlogp_dz(z: torch.Tensor, y: torch.Tensor, lse: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``onehot(y) - softmax(z)`` on valid rows (0 elsewhere), computed in place of ``z``."""
    dz = z.sub_(lse[:, None]).exp_().neg_()
    dz[torch.arange(len(y), device=y.device), y] += 1.0
    return dz.mul_(valid[:, None])


class _LinearLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_size: int):
        need_h, need_w = hidden.requires_grad, weight.requires_grad
        need_b = bias is not None and bias.requires_grad
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        basis = torch.empty_like(hidden) if need_h else None
        w = weight.to(hidden.dtype)
        for start in range(0, hidden.shape[0], chunk_size):
            h, y = hidden[start:start + chunk_size], targets[start:start + chunk_size]
            valid = y != IGNORE_INDEX
            y = y.clamp(min=0)
            z = _chunk_logits(h, w, bias)
            lse = torch.logsumexp(z, dim=-1)
            out[start:start + chunk_size] = (z.gather(1, y[:, None]).squeeze(1) - lse) * valid
            if need_h:
                basis[start:start + chunk_size] = (_dlogp_dz(z, y, lse, valid).to(h.dtype) @ w).to(basis.dtype)
        ctx.flags, ctx.chunk_size = (need_h, need_w, need_b), chunk_size
        ctx.save_for_backward(basis if need_h else None, hidden if (need_w or need_b) else None,
                              weight if (need_w or need_b) else None, bias if need_b else None, targets)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        need_h, need_w, need_b = ctx.flags
        basis, hidden, weight, bias, targets = ctx.saved_tensors
        grad_h = basis * grad_out[:, None].to(basis.dtype) if need_h else None
        grad_w = grad_b = None
        if need_w or need_b:  # the projection's gradient depends on grad_out: recompute each chunk's logits
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
            grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
            w, c = weight.to(hidden.dtype), ctx.chunk_size
            for start in range(0, hidden.shape[0], c):
                h, y = hidden[start:start + c], targets[start:start + c]
                valid = y != IGNORE_INDEX
                y = y.clamp(min=0)
                z = _chunk_logits(h, w, bias)
                dz = _dlogp_dz(z, y, torch.logsumexp(z, dim=-1), valid) * grad_out[start:start + c, None].float()
                if need_w:
                    grad_w += (dz.t() @ h.float()) if h.dtype == torch.float32 else (dz.to(h.dtype).t() @ h).float()
                if need_b:
                    grad_b += dz.sum(0)
            grad_w = grad_w.to(weight.dtype) if need_w else None
            grad_b = grad_b.to(bias.dtype) if need_b else None
        return grad_h, grad_w, grad_b, None, None


def linear_token_logps(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                       bias: torch.Tensor | None = None, chunk_size: int | None = None) -> torch.Tensor:
    """``log softmax(hidden_i @ weight^T + bias)[targets_i]`` per row, fp32 ``[N]`` (0 where the target is -100),
    differentiable w.r.t. ``hidden`` (and ``weight`` / ``bias`` when they require grad), chunked."""
    chunk = chunk_size or default_chunk_size(weight.shape[0])
    return _LinearLogProbs.apply(hidden, weight, bias, targets, chunk)
