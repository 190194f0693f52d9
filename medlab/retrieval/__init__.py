"""Retrieval evaluation: an exact chunked embedding index and Recall/MRR/NDCG/Accuracy metrics."""

from medlab.retrieval.index import EmbeddingIndex, chunked_topk
from medlab.retrieval.metrics import (
    accuracy_at_1,
    dcg_at_k,
    mrr_at_k,
    ndcg_at_k,
    rank,
    ranked_metrics,
    ranked_relevance,
    ranked_relevance_from_ids,
    recall_at_k,
    rerank_metrics,
    retrieval_metrics,
)

__all__ = [
    "EmbeddingIndex",
    "accuracy_at_1",
    "chunked_topk",
    "dcg_at_k",
    "mrr_at_k",
    "ndcg_at_k",
    "rank",
    "ranked_metrics",
    "ranked_relevance",
    "ranked_relevance_from_ids",
    "recall_at_k",
    "rerank_metrics",
    "retrieval_metrics",
]
