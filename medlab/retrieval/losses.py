"""Retrieval losses as pure tensor functions. Each docstring states the formula it computes.

Bi-encoder: :func:`info_nce` (in-batch + hard negatives, optional symmetric term, false-negative
masking) and :func:`gather_with_grad` for negatives from other ranks. Cross-encoder:
:func:`pairwise_bce` (pointwise), :func:`listwise_softmax_ce` (one positive + k negatives) and :func:`listnet_ce`
(graded lists).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

IdLike = torch.Tensor | Sequence[Hashable]


def info_nce(
    q: torch.Tensor,
    d: torch.Tensor,
    *,
    temperature: float | torch.Tensor = 0.05,
    hard_negatives: torch.Tensor | None = None,
    symmetric: bool = False,
    positive_ids: IdLike | None = None,
    doc_ids: IdLike | None = None,
) -> torch.Tensor:
    """InfoNCE with in-batch and hard negatives (MultipleNegativesRankingLoss with scale = 1/temperature).

    ``q`` [B, H] are the queries and ``d`` [B, H] their positives (row i's positive is d[i]). The
    candidates of every query are ``c = [d; n]``: the B in-batch documents, then the hard negatives
    ``n`` flattened to [B*N, H] (given as [B, N, H], row-major, or already as [M, H]); every query
    scores every candidate, its own hard negatives and everyone else's.

        s[i, j]  = <q_i, c_j> / temperature
        L_qd     = 1/B * sum_i ( -s[i, i] + log sum_j exp s[i, j] )

    The caller L2-normalizes the embeddings, so <q, c> is the cosine similarity; no normalization
    happens here (it would change the gradient for inputs that are not unit vectors). Scores are
    computed in at least float32, whatever the embedding dtype.

    ``symmetric=True`` adds the document->query term over the in-batch block and returns the
    *average* of the two directions (sentence-transformers' ``directions=("query_to_doc",
    "doc_to_query"), partition_mode="per_direction"``):

        L_dq     = 1/B * sum_j ( -s[j, j] + log sum_{i<B} exp s[i, j] )
        L        = (L_qd + L_dq) / 2

    False negatives: when another candidate *is* query i's positive (the same document in two rows
    of the batch, or a mined hard negative that equals the positive), it must not be pushed away.
    With ids, those logits are set to -inf before the softmax (the diagonal is always kept):

        s[i, j] = -inf   if positive_ids[i] == doc_ids[j] and j != i

    ``doc_ids`` name the candidates in column order: length B (in-batch documents only; hard
    negatives are then never masked) or B + M (hard negatives too, in the flattened order above).
    ``positive_ids`` [B] name each query's positive and default to ``doc_ids[:B]``; given alone they
    also serve as the in-batch documents' ids. Ids are an integer tensor or a sequence of hashables
    (e.g. text hashes). In the symmetric term the in-batch block's mask is used transposed, so a
    document is not pushed away from the other queries it answers either. Duplicate *queries* with
    different positives are not detected here.

    Returns the mean loss over queries (a 0-dim tensor).
    """
    if q.dim() != 2 or d.dim() != 2 or q.shape != d.shape:
        raise ValueError(f"info_nce expects q and d of the same shape [B, H], got {tuple(q.shape)} and {tuple(d.shape)}")
    if not isinstance(temperature, torch.Tensor) and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    batch, hidden = q.shape
    candidates = d
    if hard_negatives is not None:
        if hard_negatives.dim() == 3 and hard_negatives.shape[0] != batch:
            raise ValueError(f"hard_negatives [B, N, H] must have B={batch} rows, got {tuple(hard_negatives.shape)}")
        if hard_negatives.shape[-1] != hidden or hard_negatives.dim() not in (2, 3):
            raise ValueError(f"hard_negatives must be [B, N, {hidden}] or [M, {hidden}], got {tuple(hard_negatives.shape)}")
        candidates = torch.cat([d, hard_negatives.reshape(-1, hidden)], dim=0)

    dtype = torch.promote_types(q.dtype, torch.float32)
    scores = q.to(dtype) @ candidates.to(dtype).T / temperature  # [B, C]
    mask = _false_negative_mask(batch, candidates.shape[0], positive_ids, doc_ids, scores.device)
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))

    target = torch.arange(batch, device=scores.device)
    loss = F.cross_entropy(scores, target)
    if symmetric:
        loss = (loss + F.cross_entropy(scores[:, :batch].T, target)) / 2
    return loss


def _false_negative_mask(
    batch: int, n_candidates: int, positive_ids: IdLike | None, doc_ids: IdLike | None, device: torch.device
) -> torch.Tensor | None:
    """Bool [B, C]: True where candidate j carries query i's positive id and j is not i itself."""
    if positive_ids is None and doc_ids is None:
        return None
    pos, docs = _as_ids(positive_ids, doc_ids, device)
    if docs is None:
        docs = pos
    if pos is None:
        pos = docs[:batch]
    if pos.shape[0] != batch:
        raise ValueError(f"positive_ids must name the {batch} queries' positives, got {pos.shape[0]} ids")
    if docs.shape[0] not in (batch, n_candidates):
        raise ValueError(f"doc_ids must name the {batch} in-batch documents or all {n_candidates} candidates, "
                         f"got {docs.shape[0]} ids")
    mask = torch.zeros(batch, n_candidates, dtype=torch.bool, device=device)
    mask[:, : docs.shape[0]] = pos[:, None] == docs[None, :]
    mask.fill_diagonal_(False)
    return mask


def _as_ids(positive_ids: IdLike | None, doc_ids: IdLike | None, device: torch.device):
    """Both id lists as int64 tensors; hashable ids are mapped to ints through one shared table."""
    table: dict[Hashable, int] = {}

    def convert(ids):
        if ids is None:
            return None
        if isinstance(ids, torch.Tensor):
            return ids.to(device=device, dtype=torch.long).reshape(-1)
        return torch.tensor([table.setdefault(x, len(table)) for x in ids], dtype=torch.long, device=device)

    both = positive_ids is not None and doc_ids is not None
    if both and isinstance(positive_ids, torch.Tensor) != isinstance(doc_ids, torch.Tensor):
        raise TypeError("positive_ids and doc_ids must both be tensors or both be sequences of hashable ids")
    return convert(positive_ids), convert(doc_ids)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the gathered tensor's gradient over ranks and keeps the local slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` [b, ...] from every rank along dim 0 ([world*b, ...], rank order), keeping gradients.

    Backward: grad_x(rank r) = sum over ranks s of dL_s/d gathered[r*b:(r+1)*b]. So when every rank
    computes the same global loss on the gathered queries and documents (e.g. ``info_nce(
    gather_with_grad(q), gather_with_grad(d))``), each rank's local embeddings receive W times the
    full-batch gradient, and DDP/FSDP's mean over ranks restores exactly the single-process
    full-batch gradient. Every rank must pass the same shape (drop or pad a short last batch).

    Without an initialized process group (or with one rank) this returns ``x`` itself.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def pairwise_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Pointwise cross-encoder loss: mean binary cross-entropy with logits.

    loss = 1/B * sum_i -( y_i * log sigmoid(z_i) + (1 - y_i) * log(1 - sigmoid(z_i)) )

    ``logits`` [B] or [B, 1] (one score per query-document pair); ``labels`` [B] in [0, 1] (hard or
    soft). Computed in at least float32 with the numerically stable log-sigmoid form.
    """
    if logits.dim() == labels.dim() + 1 and logits.shape[-1] == 1:
        logits = logits.squeeze(-1)
    if logits.shape != labels.shape:
        raise ValueError(f"pairwise_bce: logits {tuple(logits.shape)} and labels {tuple(labels.shape)} differ")
    dtype = torch.promote_types(logits.dtype, torch.float32)
    return F.binary_cross_entropy_with_logits(logits.to(dtype), labels.to(dtype))


def listwise_softmax_ce(logits: torch.Tensor) -> torch.Tensor:
    """Listwise cross-encoder loss over groups of one positive and k negatives, positive at index 0.

    loss = 1/B * sum_i ( -z[i, 0] + log sum_{j=0..k} exp z[i, j] )      for logits z [B, 1+k]
    """
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(f"listwise_softmax_ce expects logits [B, 1+k] with k >= 1, got {tuple(logits.shape)}")
    dtype = torch.promote_types(logits.dtype, torch.float32)
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits.to(dtype), target)


def listnet_ce(logits: torch.Tensor, grades: torch.Tensor, temperature: float = 1.0,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """Graded listwise loss (ListNet, top-one probabilities) over lists of one query's candidates.

        p_ij   = exp(g_ij / t) / sum_l exp(g_il / t)            target from the graded judgments
        loss   = 1/B * sum_i sum_j -p_ij * log softmax(z_i)_j    for logits z [B, k], grades g [B, k]

    ``mask`` [B, k] (True = a real candidate) leaves padding out of both softmaxes. Unlike
    :func:`listwise_softmax_ce` every candidate's grade counts (a 3 above a 2 above a 1), and the loss does not
    depend on a per-list offset of the logits. Computed in at least float32.
    """
    if logits.dim() != 2 or logits.shape != grades.shape:
        raise ValueError(f"listnet_ce expects logits and grades [B, k], got {tuple(logits.shape)} and {tuple(grades.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    dtype = torch.promote_types(logits.dtype, torch.float32)
    z, g = logits.to(dtype), grades.to(device=logits.device, dtype=dtype) / temperature
    if mask is not None:
        mask = mask.to(device=logits.device, dtype=torch.bool)
        z, g = z.masked_fill(~mask, float("-inf")), g.masked_fill(~mask, float("-inf"))
    target = torch.softmax(g, dim=-1)
    logp = torch.log_softmax(z, dim=-1)
    return -(target * logp.masked_fill(target == 0, 0.0)).sum(-1).mean()
