"""Retrieval and reranking metrics as pure tensor functions. Each docstring states its formula.

Conventions shared by every function here:

- **Relevance is graded**: ``rel >= 0`` and ``rel == 0`` means not relevant. Recall, MRR and
  accuracy use the binary view ``rel > 0``; NDCG uses the grades. Scales that start at 1 for
  "irrelevant" (e.g. judgments 1-4) must be shifted by the caller.
- **Ranks are 1-based** in formulas; position ``i`` in a tensor is rank ``i + 1``.
- **Ties** in scores are broken by document index (the lower index ranks first), so a ranking is a
  deterministic function of the scores.
- **Queries without a relevant document** make recall and NDCG 0/0; every per-query function returns
  NaN for them (MRR and accuracy too, for one consistent rule), and the averaged summaries
  (`ranked_metrics`, `retrieval_metrics`, `rerank_metrics`) leave them out of the mean and report
  how many were left out. This matches sentence-transformers' InformationRetrievalEvaluator, which
  drops such queries before evaluating.
- **k larger than the list**: a ranked list with fewer than k entries is scored as if the missing
  ranks held non-relevant documents (so ``recall@10`` over a 3-document corpus is recall@3).

The per-query functions take ``ranked`` ([Q, n], the grades of the retrieved documents in rank
order) and ``judged`` ([Q, m], the grades of *all* judged documents of each query in any order,
zero-padded). `ranked_relevance` builds ``ranked`` from a score matrix and
`ranked_relevance_from_ids` builds both from ranked id lists and per-query judgments.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence

import torch

GAINS = ("exponential", "linear")


def rank(scores: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """Document indices of each query sorted by descending score, ties by ascending index.

    ``rank(scores)[q, i]`` is the document at rank ``i + 1`` for query ``q``. Returns a LongTensor
    ``[Q, min(k, D)]`` (all D columns when ``k`` is None). NaN scores are rejected.
    """
    _check_matrix(scores, "scores")
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN; a ranking of NaN scores is undefined")
    # A stable descending sort keeps equal scores in index order: the documented tie rule.
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    return order if k is None else order[:, : _check_k(k)]


def ranked_relevance(scores: torch.Tensor, relevance: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """Grades of each query's documents in rank order: ``relevance[q, rank(scores, k)[q, i]]``.

    ``scores`` and ``relevance`` are both ``[Q, D]``; returns ``[Q, min(k, D)]`` in fp64.
    """
    _check_relevance(relevance, "relevance")
    if scores.shape != relevance.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and relevance {tuple(relevance.shape)} differ in shape")
    return relevance.to(torch.float64).gather(1, rank(scores, k).to(relevance.device))


def ranked_relevance_from_ids(
    ranked_ids: Sequence[Sequence[Hashable]],
    judgments: Sequence[Mapping[Hashable, float]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn ranked id lists and per-query judgments into ``(ranked [Q, n], judged [Q, m])``.

    ``ranked[q, i] = judgments[q].get(ranked_ids[q][i], 0)`` (unjudged documents are not relevant);
    ``judged[q]`` lists the values of ``judgments[q]``. Rows are zero-padded to the longest list, which
    scores a short list like one whose missing ranks are non-relevant.
    """
    if len(ranked_ids) != len(judgments):
        raise ValueError(f"{len(ranked_ids)} ranked lists but {len(judgments)} judgment maps")
    n = max((len(r) for r in ranked_ids), default=0)
    m = max((len(j) for j in judgments), default=0)
    ranked = torch.zeros(len(ranked_ids), max(n, 1), dtype=torch.float64)
    judged = torch.zeros(len(judgments), max(m, 1), dtype=torch.float64)
    for q, (ids, judged_q) in enumerate(zip(ranked_ids, judgments)):
        if len(set(ids)) != len(ids):
            raise ValueError(f"ranked list of query {q} repeats a document id")
        ranked[q, : len(ids)] = torch.tensor([float(judged_q.get(d, 0.0)) for d in ids], dtype=torch.float64)
        judged[q, : len(judged_q)] = torch.tensor([float(g) for g in judged_q.values()], dtype=torch.float64)
    _check_relevance(judged, "judgments")
    return ranked, judged


def recall_at_k(ranked: torch.Tensor, judged: torch.Tensor, k: int) -> torch.Tensor:
    """Per-query Recall@k = |{i <= k : rel_i > 0}| / |{judged d : rel_d > 0}|.

    The denominator counts every relevant document of the query (not min(k, ·), as in BEIR and
    sentence-transformers), so a query with more than k relevant documents cannot reach 1.
    Returns ``[Q]`` fp64; NaN where the query has no relevant document.
    """
    ranked, judged = _check_pair(ranked, judged)
    hits = (ranked[:, : _check_k(k)] > 0).sum(1).to(torch.float64)
    return _undefined_as_nan(hits / _num_relevant(judged), judged)


def mrr_at_k(ranked: torch.Tensor, judged: torch.Tensor, k: int) -> torch.Tensor:
    """Per-query reciprocal rank within the top k: RR@k = 1 / r, r = min{i <= k : rel_i > 0}, else 0.

    Returns ``[Q]`` fp64 (its mean over queries is MRR@k); NaN where the query has no relevant
    document.
    """
    ranked, judged = _check_pair(ranked, judged)
    top = ranked[:, : _check_k(k)] > 0
    ranks = torch.arange(1, top.size(1) + 1, dtype=torch.float64, device=top.device)
    # 1/rank at relevant positions, 0 elsewhere; the max is the first relevant one.
    rr = torch.where(top, 1.0 / ranks, torch.zeros((), dtype=torch.float64, device=top.device))
    rr = rr.max(1).values if rr.size(1) else torch.zeros(rr.size(0), dtype=torch.float64)
    return _undefined_as_nan(rr, judged)


def dcg_at_k(ranked: torch.Tensor, k: int, gain: str = "exponential") -> torch.Tensor:
    """Per-query DCG@k = sum_{i=0}^{min(k,n)-1} g(rel_i) / log2(i + 2) (i is the 0-based position).

    ``gain="exponential"`` (default): g(r) = 2^r - 1 (Burges et al. 2005; TREC/BEIR-style graded
    NDCG). ``gain="linear"``: g(r) = r (Järvelin & Kekäläinen; sentence-transformers). The two agree
    on binary relevance.
    """
    if gain not in GAINS:
        raise ValueError(f"gain must be one of {GAINS}, got {gain!r}")
    top = ranked[:, : _check_k(k)].to(torch.float64)
    gains = torch.expm1(top * math.log(2.0)) if gain == "exponential" else top
    discounts = torch.log2(torch.arange(2, top.size(1) + 2, dtype=torch.float64, device=top.device))
    return (gains / discounts).sum(1)


def ndcg_at_k(ranked: torch.Tensor, judged: torch.Tensor, k: int, gain: str = "exponential") -> torch.Tensor:
    """Per-query NDCG@k = DCG@k(ranked) / IDCG@k, IDCG@k = DCG@k(judged sorted by descending grade).

    The ideal ordering is taken over *all* judged grades of the query, retrieved or not, so missing
    a relevant document costs NDCG. See `dcg_at_k` for the gain ``g``. Returns ``[Q]`` fp64 in
    [0, 1]; NaN where the query has no relevant document (IDCG = 0).
    """
    ranked, judged = _check_pair(ranked, judged)
    ideal = torch.sort(judged, dim=1, descending=True).values
    idcg = dcg_at_k(ideal, k, gain)
    return _undefined_as_nan(dcg_at_k(ranked, k, gain) / idcg.clamp(min=1e-300), judged)


def accuracy_at_1(ranked: torch.Tensor, judged: torch.Tensor) -> torch.Tensor:
    """Per-query Accuracy@1 = 1 if the top-ranked document is relevant (rel_1 > 0), else 0.

    Returns ``[Q]`` fp64; NaN where the query has no relevant document.
    """
    ranked, judged = _check_pair(ranked, judged)
    top1 = (ranked[:, 0] > 0).to(torch.float64) if ranked.size(1) else torch.zeros(ranked.size(0), dtype=torch.float64)
    return _undefined_as_nan(top1, judged)


def ranked_metrics(
    ranked: torch.Tensor, judged: torch.Tensor, ks: Iterable[int] = (1, 5, 10), gain: str = "exponential"
) -> dict[str, float]:
    """Mean of each per-query metric over the queries with at least one relevant document.

    Keys: ``recall@k``, ``mrr@k``, ``ndcg@k`` for each k in ``ks``, and ``accuracy@1``; plus
    ``num_queries`` (all queries) and ``num_queries_no_relevant`` (those left out of the means).
    Raises ValueError when no query has a relevant document.
    """
    ranked, judged = _check_pair(ranked, judged)
    ks = sorted({_check_k(k) for k in ks})
    if not ks:
        raise ValueError("ks is empty")
    defined = _num_relevant(judged) > 0
    if not bool(defined.any()):
        raise ValueError(f"none of the {judged.size(0)} queries has a relevant document; the metrics are undefined")
    out: dict[str, float] = {}
    for k in ks:
        out[f"recall@{k}"] = _mean(recall_at_k(ranked, judged, k))
        out[f"mrr@{k}"] = _mean(mrr_at_k(ranked, judged, k))
        out[f"ndcg@{k}"] = _mean(ndcg_at_k(ranked, judged, k, gain))
    out["accuracy@1"] = _mean(accuracy_at_1(ranked, judged))
    out["num_queries"] = float(judged.size(0))
    out["num_queries_no_relevant"] = float((~defined).sum())
    return out


def retrieval_metrics(
    scores: torch.Tensor, relevance: torch.Tensor, ks: Iterable[int] = (1, 5, 10), gain: str = "exponential"
) -> dict[str, float]:
    """Full-corpus retrieval metrics from a score matrix ``[Q, D]`` and graded relevance ``[Q, D]``.

    Ranks every document of each query by score (ties: lower document index first) and returns
    `ranked_metrics` over the top ``max(ks)``; the ideal ordering for NDCG uses the whole relevance
    row. Queries whose relevance row is all zero are left out of the means and counted in
    ``num_queries_no_relevant``.
    """
    ks = tuple(ks)
    if not ks:
        raise ValueError("ks is empty")
    ranked = ranked_relevance(scores, relevance, max(_check_k(k) for k in ks))
    return ranked_metrics(ranked, relevance.to(torch.float64), ks, gain)


def rerank_metrics(
    groups: Iterable[Sequence[Sequence[float]]] | Mapping[Hashable, Sequence[Sequence[float]]],
    k: int = 10,
    gain: str = "exponential",
) -> dict[str, float]:
    """Reranking metrics over each query's candidate list (cross-encoder evaluation).

    ``groups`` holds, per query (a sequence, or a mapping from query id), candidates
    ``(score, label, graded_score)``; ``graded_score`` may be omitted or None to reuse ``label``.
    Candidates are ranked by descending score, ties by their position in the list. Then
    ``mrr@k`` = mean RR@k over binary labels (label > 0), ``accuracy@1`` = mean [top candidate has
    label > 0], ``ndcg@k`` = mean NDCG@k over the graded scores, with the ideal ordering over all of
    the query's candidates (see `ndcg_at_k`, `dcg_at_k` for the gain).

    Each metric is averaged over the queries where it is defined: MRR and accuracy over queries with
    a positive label (the others are counted in ``num_queries_no_positive``), NDCG over queries with
    a positive grade (others counted in ``num_queries_no_gain``). ``num_queries`` counts all groups.
    A metric no group defines is NaN; when no group has a positive label or grade, ValueError.
    """
    lists = list(groups.values()) if isinstance(groups, Mapping) else list(groups)
    if not lists:
        raise ValueError("no query groups to evaluate")
    n = max(len(g) for g in lists)
    if n == 0:
        raise ValueError("every query group is empty")
    scores = torch.full((len(lists), n), -math.inf, dtype=torch.float64)
    labels = torch.zeros(len(lists), n, dtype=torch.float64)
    grades = torch.zeros(len(lists), n, dtype=torch.float64)
    for q, group in enumerate(lists):
        for i, cand in enumerate(group):
            if len(cand) not in (2, 3):
                raise ValueError(f"query {q}, candidate {i}: expected (score, label[, graded_score]), got {cand!r}")
            score, label = float(cand[0]), float(cand[1])
            grade = label if len(cand) == 2 or cand[2] is None else float(cand[2])
            if not math.isfinite(score):
                raise ValueError(f"query {q}, candidate {i}: score {score} is not finite")
            scores[q, i], labels[q, i], grades[q, i] = score, label, grade
    _check_relevance(labels, "labels")
    _check_relevance(grades, "graded scores")
    # Padding has score -inf, so it ranks after every real candidate and adds nothing (grade 0).
    order = rank(scores, k)
    ranked_labels, ranked_grades = labels.gather(1, order), grades.gather(1, order)
    has_pos, has_gain = _num_relevant(labels) > 0, _num_relevant(grades) > 0
    if not bool(has_pos.any()) and not bool(has_gain.any()):
        raise ValueError(f"none of the {len(lists)} query groups has a positive candidate; the metrics are undefined")
    return {
        f"mrr@{k}": _mean(mrr_at_k(ranked_labels, labels, k)),
        f"ndcg@{k}": _mean(ndcg_at_k(ranked_grades, grades, k, gain)),
        "accuracy@1": _mean(accuracy_at_1(ranked_labels, labels)),
        "num_queries": float(len(lists)),
        "num_queries_no_positive": float((~has_pos).sum()),
        "num_queries_no_gain": float((~has_gain).sum()),
    }


def _mean(values: torch.Tensor) -> float:
    # NaN marks queries where the metric is undefined: they leave the mean (documented policy).
    return float(values.nanmean()) if bool((~torch.isnan(values)).any()) else float("nan")


def _num_relevant(judged: torch.Tensor) -> torch.Tensor:
    return (judged > 0).sum(1).to(torch.float64)


def _undefined_as_nan(values: torch.Tensor, judged: torch.Tensor) -> torch.Tensor:
    return torch.where(_num_relevant(judged).to(values.device) > 0, values, torch.full_like(values, math.nan))


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    return k


def _check_matrix(t: torch.Tensor, name: str) -> None:
    if not isinstance(t, torch.Tensor) or t.dim() != 2:
        raise ValueError(f"{name} must be a 2-D tensor [queries, documents], got {getattr(t, 'shape', type(t))}")


def _check_relevance(t: torch.Tensor, name: str) -> None:
    _check_matrix(t, name)
    if not bool(torch.isfinite(t.to(torch.float64)).all()) or bool((t < 0).any()):
        raise ValueError(f"{name} must be finite and >= 0 (0 = not relevant)")


def _check_pair(ranked: torch.Tensor, judged: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    _check_relevance(ranked, "ranked")
    _check_relevance(judged, "judged")
    if ranked.size(0) != judged.size(0):
        raise ValueError(f"ranked has {ranked.size(0)} queries but judged has {judged.size(0)}")
    return ranked.to(torch.float64), judged.to(torch.float64).to(ranked.device)
