"""Full-corpus retrieval and reranking evaluation from embeddings / scores (shared by validation,
``python -m medlab.evaluate`` and hard-negative mining)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch

from medlab.retrieval.index import EmbeddingIndex
from medlab.retrieval.metrics import ranked_metrics, ranked_relevance_from_ids, rerank_metrics

KS = (1, 3, 5, 10, 100)


def corpus_search(queries: torch.Tensor, docs: torch.Tensor, doc_ids: Sequence[Hashable], k: int,
                  backend: str = "torch") -> tuple[list[list[Hashable]], torch.Tensor]:
    """Top-k document ids (and scores) of every query over the whole corpus (exact, chunked matmul)."""
    index = EmbeddingIndex(normalize=False, backend=backend, device=docs.device)
    index.add(docs, ids=list(doc_ids))
    scores, rows = index.search(queries, k)
    return [[index.ids[j] for j in r] for r in rows.tolist()], scores


def retrieval_report(queries: torch.Tensor, docs: torch.Tensor, doc_ids: Sequence[Hashable],
                     judgments: Sequence[Mapping[Hashable, float]], ks: Sequence[int] = KS,
                     backend: str = "torch") -> dict[str, float]:
    """Recall@k, MRR@k, NDCG@k, Accuracy@1 of ``queries`` [Q,H] against the corpus ``docs`` [D,H].

    ``judgments[q]`` maps relevant doc ids to their grade (> 0). Embeddings are compared by inner
    product (the bi-encoder normalizes them, so it is the cosine).
    """
    top = max(ks)
    ranked_ids, _ = corpus_search(queries, docs, doc_ids, top, backend)
    ranked, judged = ranked_relevance_from_ids(ranked_ids, judgments)
    ks = [k for k in ks if k <= max(top, 1)]
    out = ranked_metrics(ranked, judged, ks)
    out["corpus_size"] = float(len(doc_ids))
    return out


def rerank_report(scores: Sequence[float], labels: Sequence[float], grades: Sequence[float],
                  groups: Sequence[Hashable], k: int = 10) -> dict[str, float]:
    """MRR@k (binary labels), NDCG@k (graded), Accuracy@1 over each group's candidate list."""
    by_group: dict[Hashable, list[tuple[float, float, float]]] = {}
    for s, lab, g, grp in zip(scores, labels, grades, groups):
        by_group.setdefault(grp, []).append((float(s), float(lab), float(g)))
    return rerank_metrics(by_group, k=k)
