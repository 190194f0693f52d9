"""GRPO policy loss and its helpers as pure tensor functions. Each docstring states the formula it computes.

:func:`grpo_loss` is the clipped surrogate + k3 KL of TRL 1.16's ``GRPOTrainer._compute_loss`` (token-level
importance sampling, no entropy bonus / vLLM correction / off-policy mask); :func:`token_logprobs` is a
selective log-softmax that never materializes a full [B, T, V] float32 log-softmax; :func:`masked_mean` and
:func:`masked_sum` are the reductions the loss is built from.

Aggregation names and TRL 1.16 ``loss_type`` (``trl/trainer/grpo_trainer.py``, ``_compute_loss``):

    "sequence"  == "grpo"      per-sequence token mean, then mean over the B sequences
    "token"     == "bnpo"      sum over every masked token / number of masked tokens in this micro-batch;
                               == "dapo" when the micro-batch is the whole accumulation window. TRL's "dapo"
                               divides by the window's global token count; in medlab that global
                               normalization is the loop's job: return ``batch_weight = mask.sum()`` and the
                               loop's weight / total_weight scaling turns per-micro-batch "token" means into
                               exactly the window-global "dapo" mean.
    "dr_grpo"   == "dr_grpo"   sum over masked tokens / (B * max_completion_length)

TRL additionally divides by ``current_gradient_accumulation_steps`` in training; medlab's loop does that
scaling itself, so it is not done here.
"""

from __future__ import annotations

import torch

AGGREGATIONS = ("sequence", "token", "dr_grpo")


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """sum(x * mask) over ``dim`` (all dims when None); ``mask`` is read as boolean (nonzero = counted), and
    masked-out entries contribute exactly 0, even NaN/inf."""
    x = torch.where(mask.bool(), x, torch.zeros_like(x))
    return x.sum() if dim is None else x.sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """sum(x * mask) / max(sum(mask), 1) over ``dim`` (all dims when None); 0 where nothing is unmasked."""
    keep = mask.bool().to(x.dtype)
    count = keep.sum() if dim is None else keep.sum(dim=dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1.0)


def token_logprobs(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, *, chunk_size: int = 1024
) -> torch.Tensor:
    """Log-probability of each label under softmax(logits / temperature): [B, T, V], [B, T] -> [B, T] float32+.

        logp[b, t] = z[b, t, y] - logsumexp_v z[b, t, v],     z = logits / temperature,  y = labels[b, t]
        d logp / d logits[b, t, v] = (1[v == y] - softmax(z)[b, t, v]) / temperature

    Labels and logits are already aligned (the caller shifts: logits at position t score labels[t]); label
    positions < 0 (e.g. -100) give 0 and no gradient. Memory: ``chunk_size`` positions of one row at a time
    are upcast to float32 (never the whole [B, T, V]; slicing a non-contiguous ``logits[:, :-1]`` copies
    nothing), and only the [B, T] logsumexp is saved for backward, which recomputes the softmax chunk by
    chunk. Extra memory is about chunk_size * V floats, plus the gradient itself in ``logits.dtype``.
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"token_logprobs expects logits [B, T, V] and labels [B, T], got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return _SelectiveLogSoftmax.apply(logits, labels, float(temperature), int(chunk_size))


def _chunks(batch: int, length: int, size: int):
    for b in range(batch):
        for start in range(0, length, size):
            yield b, slice(start, min(start + size, length))


class _SelectiveLogSoftmax(torch.autograd.Function):
    """Chunked log_softmax + gather whose backward recomputes softmax from the saved logsumexp."""

    @staticmethod
    def forward(ctx, logits, labels, temperature, chunk_size):
        dtype = torch.promote_types(logits.dtype, torch.float32)
        valid = labels >= 0
        safe = torch.where(valid, labels, torch.zeros_like(labels)).unsqueeze(-1)
        out = logits.new_zeros(labels.shape, dtype=dtype)
        lse = torch.zeros_like(out)
        for b, sl in _chunks(*labels.shape, chunk_size):
            z = logits[b, sl].to(dtype) / temperature
            lse[b, sl] = torch.logsumexp(z, dim=-1)
            out[b, sl] = z.gather(-1, safe[b, sl]).squeeze(-1) - lse[b, sl]
        ctx.save_for_backward(logits, safe, valid, lse)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        return torch.where(valid, out, torch.zeros_like(out))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        logits, safe, valid, lse = ctx.saved_tensors
        g = torch.where(valid, grad, torch.zeros_like(grad)).to(lse.dtype).unsqueeze(-1)
        grad_logits = torch.empty_like(logits)
        for b, sl in _chunks(*valid.shape, ctx.chunk_size):
            z = logits[b, sl].to(lse.dtype) / ctx.temperature
            dz = torch.exp(z - lse[b, sl].unsqueeze(-1)).mul_(-g[b, sl])
            dz.scatter_add_(-1, safe[b, sl], g[b, sl])
            grad_logits[b, sl] = dz.div_(ctx.temperature).to(logits.dtype)
        return grad_logits, None, None, None


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor | None,
    ref_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float | None = None,
    beta: float = 0.0,
    aggregation: str = "sequence",
    max_completion_length: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped GRPO surrogate with k3 KL penalty, aggregated over completion tokens.

    Shapes: ``logps``, ``old_logps``, ``ref_logps``, ``mask`` [B, T]; ``advantages`` [B] (or [B, T]). Per
    token, with A = advantages[b], eps_high defaulting to eps_low (eps_high > eps_low = DAPO clip-higher):

        ratio = exp(logps - old_logps)                       (old_logps None = on-policy: logps.detach(),
                                                              so ratio == 1 but d ratio / d logps == ratio)
        surr  = -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A)
        kl    = exp(ref - logps) - (ref - logps) - 1         (k3 estimator of KL(pi || ref); needs beta > 0)
        l     = surr + beta * kl

    Aggregation over the mask m (see the module docstring for the TRL loss_type names):

        "sequence": 1/B * sum_b ( sum_t l m / max(sum_t m, 1) )
        "token":    sum_{b,t} l m / max(sum_{b,t} m, 1)
        "dr_grpo":  sum_{b,t} l m / (B * L),     L = max_completion_length (default T)

    Returns (loss, stats); stats are detached 0-dim tensors, token means over the mask (TRL's metric names):
    ``kl`` (when beta > 0 or ref_logps given), ``clip_ratio/low_mean`` (ratio < 1 - eps_low and A < 0),
    ``clip_ratio/high_mean`` (ratio > 1 + eps_high and A > 0), ``clip_ratio/region_mean`` (either),
    ``ratio/mean``, ``num_tokens``.
    """
    if logps.dim() != 2 or mask.shape != logps.shape:
        raise ValueError(f"grpo_loss expects logps and mask [B, T], got {tuple(logps.shape)} and {tuple(mask.shape)}")
    for name, t in (("old_logps", old_logps), ("ref_logps", ref_logps)):
        if t is not None and t.shape != logps.shape:
            raise ValueError(f"{name} must have the shape of logps {tuple(logps.shape)}, got {tuple(t.shape)}")
    if advantages.shape not in ((logps.shape[0],), logps.shape):
        raise ValueError(f"advantages must be [B]={logps.shape[0]} or [B, T], got {tuple(advantages.shape)}")
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    eps_high = eps_low if eps_high is None else eps_high
    if eps_low < 0 or eps_high < 0:
        raise ValueError(f"eps_low and eps_high must be >= 0, got {eps_low} and {eps_high}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if beta != 0.0 and ref_logps is None:
        raise ValueError("beta > 0 needs ref_logps (the reference policy's per-token log-probs)")
    if max_completion_length is not None and max_completion_length < 1:
        raise ValueError(f"max_completion_length must be >= 1, got {max_completion_length}")

    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    old = logps.detach() if old_logps is None else old_logps
    ratio = torch.exp(logps - old)
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    kl = None
    if ref_logps is not None:
        delta = ref_logps - logps
        kl = torch.exp(delta) - delta - 1
        if beta != 0.0:
            per_token = per_token + beta * kl

    batch, length = logps.shape
    if aggregation == "sequence":
        loss = masked_mean(per_token, mask, dim=-1).mean()
    elif aggregation == "token":
        loss = masked_mean(per_token, mask)
    else:
        loss = masked_sum(per_token, mask) / (batch * (max_completion_length or length))

    with torch.no_grad():
        low = (ratio < 1 - eps_low) & (adv < 0)
        high = (ratio > 1 + eps_high) & (adv > 0)
        stats = {
            "clip_ratio/low_mean": masked_mean(low.float(), mask),
            "clip_ratio/high_mean": masked_mean(high.float(), mask),
            "clip_ratio/region_mean": masked_mean((low | high).float(), mask),
            "ratio/mean": masked_mean(ratio.detach(), mask),
            "num_tokens": mask.sum().detach(),
        }
        if kl is not None:
            stats["kl"] = masked_mean(kl.detach(), mask)
    return loss, stats
