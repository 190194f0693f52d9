"""Retrieval and reranking metrics against hand computations, a brute-force reference and
sentence-transformers' InformationRetrievalEvaluator."""

import math
import random

import pytest
import torch

from medlab.retrieval.metrics import (
    accuracy_at_1,
    mrr_at_k,
    ndcg_at_k,
    rank,
    ranked_relevance,
    ranked_relevance_from_ids,
    recall_at_k,
    rerank_metrics,
    retrieval_metrics,
)

L3 = math.log2(3)  # discount of rank 2 (0-based position 1) = 1.5849625...

# Three queries over five documents, graded relevance (0 = not relevant).
#   q0 scores strictly decreasing      -> ranking d0 d1 d2 d3 d4 -> ranked grades [0, 3, 0, 2, 1]
#   q1 ties d1 = d2 (lower index first) -> ranking d1 d2 d3 d4 d0 -> ranked grades [0, 1, 0, 0, 2]
#   q2 every score tied                -> ranking d0 d1 d2 d3 d4 -> ranked grades [1, 0, 0, 0, 0]
SCORES = torch.tensor([
    [0.9, 0.8, 0.7, 0.6, 0.5],
    [0.1, 0.4, 0.4, 0.3, 0.2],
    [0.5, 0.5, 0.5, 0.5, 0.5],
])
RELEVANCE = torch.tensor([
    [0, 3, 0, 2, 1],
    [2, 0, 1, 0, 0],
    [1, 0, 0, 0, 0],
], dtype=torch.float32)

# NDCG@3, exponential gain 2^r - 1, discount log2(i + 2):
#   q0: DCG  = 0/1 + (2^3-1)/log2 3 + 0/2                = 7/1.58496          = 4.416508
#       IDCG = ideal [3, 2, 1]: 7/1 + 3/log2 3 + 1/log2 4 = 7 + 1.892789 + 0.5 = 9.392789 -> 0.470202
#   q1: DCG  = 0 + (2^1-1)/log2 3 + 0                    = 0.630930
#       IDCG = ideal [2, 1, 0]: 3/1 + 1/log2 3           = 3.630930           -> 0.173765
#   q2: DCG  = IDCG = 1/1                                                      -> 1
Q0_NDCG3 = (7 / L3) / (7 + 3 / L3 + 0.5)
Q1_NDCG3 = (1 / L3) / (3 + 1 / L3)
# Linear gain r:
#   q0: DCG = 3/log2 3 = 1.892789; IDCG = 3 + 2/log2 3 + 1/2 = 4.761860 -> 0.397490
#   q1: DCG = 1/log2 3 = 0.630930; IDCG = 2 + 1/log2 3       = 2.630930 -> 0.239812
Q0_NDCG3_LIN = (3 / L3) / (3 + 2 / L3 + 0.5)
Q1_NDCG3_LIN = (1 / L3) / (2 + 1 / L3)


def test_hand_computed_three_query_example():
    m = retrieval_metrics(SCORES, RELEVANCE, ks=(1, 3))
    assert Q0_NDCG3 == pytest.approx(0.470202, abs=1e-6) and Q1_NDCG3 == pytest.approx(0.173765, abs=1e-6)
    expected = {
        "accuracy@1": 1 / 3,                        # only q2's top document is relevant
        "recall@1": 1 / 3,                          # q0 0/3, q1 0/2, q2 1/1
        "recall@3": (1 / 3 + 1 / 2 + 1) / 3,        # = 11/18: q0 finds d1 of {d1,d3,d4}; q1 d2 of {d0,d2}
        "mrr@1": 1 / 3,
        "mrr@3": (1 / 2 + 1 / 2 + 1) / 3,           # first relevant at ranks 2, 2, 1
        "ndcg@1": 1 / 3,                            # DCG@1 is 0 for q0 and q1
        "ndcg@3": (Q0_NDCG3 + Q1_NDCG3 + 1) / 3,    # = 0.547989
        "num_queries": 3.0,
        "num_queries_no_relevant": 0.0,
    }
    assert m == pytest.approx(expected, abs=1e-12)
    assert m["ndcg@3"] == pytest.approx(0.547989, abs=1e-6)


def test_linear_gain_is_offered_and_differs_on_graded_relevance():
    m = retrieval_metrics(SCORES, RELEVANCE, ks=(3,), gain="linear")
    assert m["ndcg@3"] == pytest.approx((Q0_NDCG3_LIN + Q1_NDCG3_LIN + 1) / 3, abs=1e-12)
    assert m["ndcg@3"] == pytest.approx(0.545767, abs=1e-6)
    with pytest.raises(ValueError, match="gain"):
        retrieval_metrics(SCORES, RELEVANCE, gain="log")


def test_per_query_functions_match_the_hand_computation():
    ranked = ranked_relevance(SCORES, RELEVANCE)
    assert ranked.tolist() == [[0, 3, 0, 2, 1], [0, 1, 0, 0, 2], [1, 0, 0, 0, 0]]
    judged = RELEVANCE
    assert recall_at_k(ranked, judged, 3).tolist() == pytest.approx([1 / 3, 1 / 2, 1])
    assert mrr_at_k(ranked, judged, 3).tolist() == pytest.approx([1 / 2, 1 / 2, 1])
    assert ndcg_at_k(ranked, judged, 3).tolist() == pytest.approx([Q0_NDCG3, Q1_NDCG3, 1])
    assert accuracy_at_1(ranked, judged).tolist() == [0, 0, 1]
    # mrr counts only the top k: q1's first relevant document is at rank 2.
    assert mrr_at_k(ranked, judged, 1).tolist() == [0, 0, 1]


def test_ties_are_broken_by_document_index():
    scores = torch.tensor([[1.0, 2.0, 2.0, 0.0, 2.0, 1.0]])
    assert rank(scores).tolist() == [[1, 2, 4, 0, 5, 3]]
    assert rank(torch.zeros(2, 4), k=3).tolist() == [[0, 1, 2], [0, 1, 2]]
    # All scores tied: only the document at index 2 is relevant -> rank 3, RR = 1/3.
    rel = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    m = retrieval_metrics(torch.zeros(1, 4), rel, ks=(1, 3))
    assert m["mrr@3"] == pytest.approx(1 / 3) and m["mrr@1"] == 0.0
    assert m["ndcg@3"] == pytest.approx(1 / math.log2(4))  # DCG = 1/log2(4), IDCG = 1
    with pytest.raises(ValueError, match="NaN"):
        rank(torch.tensor([[0.1, math.nan]]))


def test_query_without_relevant_document_is_excluded_and_counted():
    scores = torch.cat([SCORES, torch.tensor([[0.3, 0.2, 0.9, 0.1, 0.0]])])
    relevance = torch.cat([RELEVANCE, torch.zeros(1, 5)])
    m = retrieval_metrics(scores, relevance, ks=(1, 3))
    reference = retrieval_metrics(SCORES, RELEVANCE, ks=(1, 3))
    assert (m.pop("num_queries"), m.pop("num_queries_no_relevant")) == (4.0, 1.0)
    assert (reference.pop("num_queries"), reference.pop("num_queries_no_relevant")) == (3.0, 0.0)
    assert m == pytest.approx(reference, abs=1e-12)  # the same means
    ranked = ranked_relevance(scores, relevance)
    for fn in (lambda r, j: recall_at_k(r, j, 3), lambda r, j: mrr_at_k(r, j, 3),
               lambda r, j: ndcg_at_k(r, j, 3), accuracy_at_1):
        values = fn(ranked, relevance)
        assert math.isnan(values[3]) and not torch.isnan(values[:3]).any()
    with pytest.raises(ValueError, match="none of the 1 queries has a relevant document"):
        retrieval_metrics(torch.rand(1, 4), torch.zeros(1, 4))


def test_all_documents_relevant():
    # 4 documents, all relevant with grade 1: any ranking is ideal.
    m = retrieval_metrics(torch.rand(2, 4), torch.ones(2, 4), ks=(1, 2, 10))
    assert m["recall@1"] == pytest.approx(1 / 4) and m["recall@2"] == pytest.approx(2 / 4)
    assert m["recall@10"] == pytest.approx(1.0)
    for k in (1, 2, 10):
        assert m[f"mrr@{k}"] == 1.0 and m[f"ndcg@{k}"] == pytest.approx(1.0)
    assert m["accuracy@1"] == 1.0


def test_k_larger_than_the_corpus_equals_k_equal_to_the_corpus():
    # D = 5 < 10: the key stays "@10" and the missing ranks count as non-relevant.
    big = retrieval_metrics(SCORES, RELEVANCE, ks=(10,))
    full = retrieval_metrics(SCORES, RELEVANCE, ks=(5,))
    assert big["recall@10"] == pytest.approx(full["recall@5"]) == pytest.approx(1.0)
    assert big["mrr@10"] == pytest.approx(full["mrr@5"])
    assert big["ndcg@10"] == pytest.approx(full["ndcg@5"])


def test_idcg_uses_every_judged_document_not_only_retrieved_ones():
    # Ranked list [a, b]; judgments {b: 1, z: 2}; z was not retrieved.
    #   DCG@10  = (2^1-1)/log2 3                 = 0.630930
    #   IDCG@10 = ideal [2, 1]: 3/1 + 1/log2 3   = 3.630930   -> NDCG = 0.173765
    ranked, judged = ranked_relevance_from_ids([["a", "b"]], [{"b": 1, "z": 2}])
    assert ranked.tolist() == [[0.0, 1.0]]
    assert ndcg_at_k(ranked, judged, 10).item() == pytest.approx((1 / L3) / (3 + 1 / L3))
    assert recall_at_k(ranked, judged, 10).item() == pytest.approx(1 / 2)
    assert mrr_at_k(ranked, judged, 10).item() == pytest.approx(1 / 2)


def test_ranked_relevance_from_ids_pads_and_rejects_bad_input():
    ranked, judged = ranked_relevance_from_ids([["x"], ["p", "q", "r"]], [{"x": 1}, {"r": 2, "s": 1}])
    assert ranked.tolist() == [[1, 0, 0], [0, 0, 2]]
    assert judged.tolist() == [[1, 0], [2, 1]]
    with pytest.raises(ValueError, match="repeats"):
        ranked_relevance_from_ids([["a", "a"]], [{"a": 1}])
    with pytest.raises(ValueError, match=">= 0"):
        ranked_relevance_from_ids([["a"]], [{"a": -1}])
    with pytest.raises(ValueError, match="2 ranked lists but 1"):
        ranked_relevance_from_ids([["a"], ["b"]], [{"a": 1}])


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="differ in shape"):
        retrieval_metrics(torch.rand(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match=">= 0"):
        retrieval_metrics(torch.rand(1, 2), torch.tensor([[1.0, -1.0]]))
    with pytest.raises(ValueError, match="k must be a positive int"):
        retrieval_metrics(torch.rand(1, 2), torch.ones(1, 2), ks=(0,))
    with pytest.raises(ValueError, match="2-D"):
        retrieval_metrics(torch.rand(3), torch.ones(3))


def _brute_force(scores, relevance, ks, gain):
    """Independent per-query loops: sort (-score, index), then the textbook formulas."""
    g = (lambda r: 2.0 ** r - 1.0) if gain == "exponential" else (lambda r: float(r))
    sums, n = {}, 0
    for s_row, r_row in zip(scores.tolist(), relevance.tolist()):
        if not any(r > 0 for r in r_row):
            continue
        n += 1
        order = sorted(range(len(s_row)), key=lambda d: (-s_row[d], d))
        ranked = [r_row[d] for d in order]
        ideal = sorted(r_row, reverse=True)
        values = {"accuracy@1": float(ranked[0] > 0)}
        for k in ks:
            values[f"recall@{k}"] = sum(r > 0 for r in ranked[:k]) / sum(r > 0 for r in r_row)
            values[f"mrr@{k}"] = next((1.0 / (i + 1) for i, r in enumerate(ranked[:k]) if r > 0), 0.0)
            dcg = sum(g(r) / math.log2(i + 2) for i, r in enumerate(ranked[:k]))
            idcg = sum(g(r) / math.log2(i + 2) for i, r in enumerate(ideal[:k]))
            values[f"ndcg@{k}"] = dcg / idcg
        for key, v in values.items():
            sums[key] = sums.get(key, 0.0) + v
    return {key: v / n for key, v in sums.items()}


@pytest.mark.parametrize("gain", ["exponential", "linear"])
def test_matches_brute_force_on_random_graded_data_with_ties(gain):
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (40, 25), generator=gen).float()  # many ties
    relevance = torch.randint(0, 4, (40, 25), generator=gen).float() * (torch.rand(40, 25, generator=gen) < 0.2)
    relevance[:3] = 0  # a few queries without any relevant document
    ks = (1, 3, 10, 30)
    m = retrieval_metrics(scores, relevance, ks=ks, gain=gain)
    assert m.pop("num_queries") == 40
    assert m.pop("num_queries_no_relevant") == (relevance.sum(1) == 0).sum().item() >= 3
    assert m == pytest.approx(_brute_force(scores, relevance, ks, gain), abs=1e-12)


def test_matches_sentence_transformers_information_retrieval_evaluator():
    st_eval = pytest.importorskip("sentence_transformers.evaluation")
    rng = random.Random(0)
    n_queries, n_docs = 8, 30
    corpus = {f"d{j:03d}": f"doc {j}" for j in range(n_docs)}  # zero-padded: string order = index order
    queries = {f"q{i}": f"query {i}" for i in range(n_queries)}
    relevant = {f"q{i}": {f"d{j:03d}" for j in rng.sample(range(n_docs), rng.randint(1, 4))} for i in range(n_queries)}
    relevant["q5"] = set()  # no relevant document: the evaluator drops it, we exclude it
    scores = torch.tensor([[round(rng.random(), 1) for _ in range(n_docs)] for _ in range(n_queries)])  # ties
    relevance = torch.zeros(n_queries, n_docs)
    for i in range(n_queries):
        for cid in relevant[f"q{i}"]:
            relevance[i, int(cid[1:])] = 1.0

    ks = [1, 3, 5, 10]
    evaluator = st_eval.InformationRetrievalEvaluator(
        queries, corpus, relevant, mrr_at_k=ks, ndcg_at_k=ks, accuracy_at_k=[1], precision_recall_at_k=ks,
        map_at_k=[10], write_csv=False)
    results = [[{"corpus_id": f"d{j:03d}", "score": float(scores[int(qid[1:]), j])} for j in range(n_docs)]
               for qid in evaluator.queries_ids]
    reference = evaluator.compute_metrics(results)

    m = retrieval_metrics(scores, relevance, ks=ks)
    assert m["num_queries"] - m["num_queries_no_relevant"] == len(evaluator.queries_ids) == n_queries - 1
    assert m["accuracy@1"] == pytest.approx(reference["accuracy@k"][1], abs=1e-12)
    for k in ks:
        assert m[f"recall@{k}"] == pytest.approx(reference["recall@k"][k], abs=1e-12)
        assert m[f"mrr@{k}"] == pytest.approx(reference["mrr@k"][k], abs=1e-12)
        assert m[f"ndcg@{k}"] == pytest.approx(reference["ndcg@k"][k], abs=1e-12)  # binary: both gains agree


def test_rerank_metrics_hand_computed():
    # (score, label, graded_score) per candidate.
    groups = {
        # ranked: (0.9, 1, 2), (0.5, 1, 1), (0.2, 0, 0) -> RR 1, acc 1, grades [2, 1, 0] are ideal -> NDCG 1
        "a": [(0.2, 0, 0), (0.9, 1, 2), (0.5, 1, 1)],
        # tie at 0.7 keeps list order: labels [0, 1, 0] -> RR 1/2, acc 0;
        # grades [1, 3, 0]: DCG = 1/1 + 7/log2 3 = 5.416508; IDCG = [3, 1]: 7 + 1/log2 3 = 7.630930 -> 0.709810
        "b": [(0.7, 0, 1), (0.7, 1, 3), (0.1, 0, 0)],
        # no positive label (left out of MRR, accuracy); grades [0, 1]: DCG = 1/log2 3, IDCG = 1 -> 0.630930
        "c": [(0.3, 0, 0), (0.1, 0, 1)],
        # neither a positive label nor a positive grade: left out of every mean
        "d": [(0.5, 0, 0)],
    }
    ndcg_b = (1 + 7 / L3) / (7 + 1 / L3)
    assert ndcg_b == pytest.approx(0.709810, abs=1e-6)
    m = rerank_metrics(groups)
    assert m == pytest.approx({
        "mrr@10": (1 + 1 / 2) / 2,
        "accuracy@1": (1 + 0) / 2,
        "ndcg@10": (1 + ndcg_b + 1 / L3) / 3,   # = 0.780246
        "num_queries": 4.0,
        "num_queries_no_positive": 2.0,
        "num_queries_no_gain": 1.0,
    }, abs=1e-12)
    assert m["ndcg@10"] == pytest.approx(0.780246, abs=1e-6)


def test_rerank_metrics_k_and_label_as_grade():
    # Without a graded score the label is the gain. Ranked labels [0, 0, 1]: RR@3 = 1/3, RR@2 = 0.
    group = [(0.9, 0), (0.8, 0), (0.7, 1)]
    assert rerank_metrics([group], k=3)["mrr@3"] == pytest.approx(1 / 3)
    two = rerank_metrics([group], k=2)
    assert two["mrr@2"] == 0.0 and two["ndcg@2"] == 0.0 and two["accuracy@1"] == 0.0
    assert rerank_metrics([group], k=3)["ndcg@3"] == pytest.approx(1 / math.log2(4))
    with pytest.raises(ValueError, match="no query groups"):
        rerank_metrics([])
    with pytest.raises(ValueError, match="candidate 0"):
        rerank_metrics([[(0.1,)]])
    with pytest.raises(ValueError, match="not finite"):
        rerank_metrics([[(math.nan, 1)]])
    with pytest.raises(ValueError, match="none of the 1 query groups"):
        rerank_metrics([[(0.1, 0, 0)]])
