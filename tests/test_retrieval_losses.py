"""Retrieval losses against sentence-transformers' MultipleNegativesRankingLoss and hand computations."""

import math

import pytest
import torch
import torch.nn.functional as F

from medlab.retrieval.losses import (
    gather_with_grad,
    info_nce,
    listwise_softmax_ce,
    pairwise_bce,
)

st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
st_util = pytest.importorskip("sentence_transformers.util")

B, H, N = 6, 16, 2
TEMPERATURE = 0.05


def _leaves(*shapes, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=dtype).requires_grad_() for s in shapes]


def _st_loss(**kwargs):
    # The loss never calls its model when given precomputed embeddings.
    return st_losses.MultipleNegativesRankingLoss(model=None, scale=1 / TEMPERATURE, **kwargs)


def _compare(ours, theirs, leaves):
    """Max difference of the two losses and of their gradients w.r.t. every leaf, divided by the
    reference tensor's largest magnitude where that exceeds 1 (float32 entries near 3 are only
    exact to ~1e-6 absolute; in float64 the differences are ~1e-15)."""
    ours_grads = torch.autograd.grad(ours, leaves)
    theirs_grads = torch.autograd.grad(theirs, leaves)
    pairs = [(ours, theirs)] + list(zip(ours_grads, theirs_grads))
    diffs = [((a - b).abs().max() / b.abs().max().clamp(min=1)).item() for a, b in pairs]
    assert all(g.abs().max() > 0 for g in ours_grads)  # every input actually takes part
    return max(diffs)


# "cos": raw embeddings; we L2-normalize them as a caller does, ST's cos_sim normalizes internally;
#        gradients are taken w.r.t. the raw embeddings.
# "dot": unit embeddings fed to both as they are (ST with dot_score); gradients w.r.t. those embeddings.
SIMILARITIES = {"cos": (lambda x: F.normalize(x, dim=-1), st_util.cos_sim),
                "dot": (lambda x: x, st_util.dot_score)}


def _inputs(similarity, dtype, with_negatives=False):
    prepare, st_sim = SIMILARITIES[similarity]
    shapes = [(B, H), (B, H)] + ([(B, N, H)] if with_negatives else [])
    leaves = _leaves(*shapes, dtype=dtype)
    if similarity == "dot":
        leaves = [F.normalize(x.detach(), dim=-1).requires_grad_() for x in leaves]
    return leaves, [prepare(x) for x in leaves], st_sim


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("similarity", ["cos", "dot"])
def test_info_nce_equals_multiple_negatives_ranking_loss(similarity, dtype):
    leaves, (q, d), st_sim = _inputs(similarity, dtype)
    ours = info_nce(q, d, temperature=TEMPERATURE)
    theirs = _st_loss(similarity_fct=st_sim).compute_loss_from_embeddings(list(leaves), labels=None)
    assert _compare(ours, theirs, leaves) < 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["BNH", "flat"])
@pytest.mark.parametrize("similarity", ["cos", "dot"])
def test_info_nce_with_hard_negatives_equals_mnrl(similarity, layout, dtype):
    leaves, (q, d, n), st_sim = _inputs(similarity, dtype, with_negatives=True)
    negatives = n if layout == "BNH" else n.reshape(B * N, H)
    ours = info_nce(q, d, temperature=TEMPERATURE, hard_negatives=negatives)
    # ST takes one [B, H] column per negative: (anchor, positive, negative_1, ..., negative_N).
    columns = [leaves[0], leaves[1]] + [leaves[2][:, k] for k in range(N)]
    theirs = _st_loss(similarity_fct=st_sim).compute_loss_from_embeddings(columns, labels=None)
    assert _compare(ours, theirs, leaves) < 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_negatives", [False, True])
@pytest.mark.parametrize("similarity", ["cos", "dot"])
def test_symmetric_info_nce_equals_symmetric_mnrl(similarity, with_negatives, dtype):
    leaves, _, st_sim = _inputs(similarity, dtype, with_negatives=with_negatives)
    prepare = SIMILARITIES[similarity][0]

    def ours():
        q, d, *rest = (prepare(x) for x in leaves)
        return info_nce(q, d, temperature=TEMPERATURE, symmetric=True, hard_negatives=rest[0] if rest else None)

    columns = leaves[:2] + ([leaves[2][:, k] for k in range(N)] if with_negatives else [])
    symmetric = _st_loss(similarity_fct=st_sim, directions=("query_to_doc", "doc_to_query"),
                         partition_mode="per_direction")
    assert _compare(ours(), symmetric.compute_loss_from_embeddings(columns, labels=None), leaves) < 1e-6
    if hasattr(st_losses, "MultipleNegativesSymmetricRankingLoss"):  # deprecated in v6, same maths
        legacy = st_losses.MultipleNegativesSymmetricRankingLoss(None, scale=1 / TEMPERATURE, similarity_fct=st_sim)
        assert _compare(ours(), legacy.compute_loss_from_embeddings(columns, labels=None), leaves) < 1e-6


def _matched_pairs(*negative_shape, seed):
    """Unit queries and positives close to them (as after training), plus unit hard negatives."""
    q, noise, *n = _leaves((B, H), (B, H), *negative_shape, dtype=torch.float64, seed=seed)
    q = F.normalize(q.detach(), dim=-1)
    d = F.normalize(q + 0.5 * noise.detach() / math.sqrt(H), dim=-1)
    return [q, d] + [F.normalize(x.detach(), dim=-1) for x in n]


def _hand_masked_info_nce(q, candidates, positive_ids, candidate_ids, symmetric=False):
    """Loop-by-loop InfoNCE that leaves out every other candidate carrying the query's positive id."""
    s = (q.double() @ candidates.double().T / TEMPERATURE).tolist()
    batch = len(q)

    def term(row, pos, keep):
        return -row[pos] + math.log(sum(math.exp(row[j]) for j in keep))

    qd = [term(s[i], i, [j for j in range(len(candidates)) if j == i or candidate_ids[j] != positive_ids[i]])
          for i in range(batch)]
    loss = sum(qd) / batch
    if symmetric:
        cols = [[s[i][j] for i in range(batch)] for j in range(batch)]
        dq = [term(cols[j], j, [i for i in range(batch) if i == j or positive_ids[i] != candidate_ids[j]])
              for j in range(batch)]
        loss = (loss + sum(dq) / batch) / 2
    return loss


@pytest.mark.parametrize("symmetric", [False, True])
def test_duplicate_positive_is_not_a_negative(symmetric):
    """RELIABILITY 13: rows 0 and 2 share one positive document; it is masked, not pushed away."""
    q, d = _matched_pairs(seed=1)
    d[2] = d[0]  # the same answer text embedded twice
    ids = [0, 1, 0, 3, 4, 5]
    masked = info_nce(q, d, temperature=TEMPERATURE, symmetric=symmetric, positive_ids=torch.tensor(ids))
    hand = _hand_masked_info_nce(q, d, ids, ids, symmetric=symmetric)
    assert abs(masked.item() - hand) < 1e-9
    unmasked = info_nce(q, d, temperature=TEMPERATURE, symmetric=symmetric)
    assert abs(unmasked.item() - _hand_masked_info_nce(q, d, list(range(B)), list(range(B)), symmetric)) < 1e-9
    assert unmasked > masked + 0.1
    # Text hashes work as ids, and doc_ids alone name the in-batch documents.
    hashes = [f"sha:{i}" for i in ids]
    assert torch.equal(info_nce(q, d, temperature=TEMPERATURE, symmetric=symmetric, positive_ids=hashes), masked)
    assert torch.equal(info_nce(q, d, temperature=TEMPERATURE, symmetric=symmetric, doc_ids=hashes), masked)


def test_hard_negative_equal_to_the_positive_is_masked_by_doc_ids():
    q, d, n = _matched_pairs((B, N, H), seed=2)
    n[3, 1] = d[3]  # mining returned query 3's own answer as a "negative"
    positive_ids = list(range(B))
    candidate_ids = positive_ids + [100 + k for k in range(B * N)]
    candidate_ids[B + 3 * N + 1] = 3
    masked = info_nce(q, d, temperature=TEMPERATURE, hard_negatives=n, doc_ids=candidate_ids)
    candidates = torch.cat([d, n.reshape(-1, H)])
    assert abs(masked.item() - _hand_masked_info_nce(q, candidates, positive_ids, candidate_ids)) < 1e-9
    assert info_nce(q, d, temperature=TEMPERATURE, hard_negatives=n) > masked + 0.1
    # positive_ids alone cover the in-batch block only: nothing is duplicated there, nothing masked.
    assert torch.equal(info_nce(q, d, temperature=TEMPERATURE, hard_negatives=n, positive_ids=positive_ids),
                       info_nce(q, d, temperature=TEMPERATURE, hard_negatives=n))


def test_info_nce_rejects_bad_shapes_and_ids():
    q, d = torch.randn(4, 8), torch.randn(4, 8)
    with pytest.raises(ValueError, match="same shape"):
        info_nce(q, d[:3])
    with pytest.raises(ValueError, match="hard_negatives"):
        info_nce(q, d, hard_negatives=torch.randn(3, 2, 8))
    with pytest.raises(ValueError, match="positive_ids"):
        info_nce(q, d, positive_ids=[0, 1, 2])
    with pytest.raises(ValueError, match="temperature"):
        info_nce(q, d, temperature=0.0)


def test_learnable_temperature_gets_a_gradient():
    q, d = (F.normalize(x, dim=-1) for x in _leaves((B, H), (B, H), dtype=torch.float32))
    log_t = torch.tensor(math.log(TEMPERATURE), requires_grad=True)
    loss = info_nce(q, d, temperature=log_t.exp())
    assert torch.allclose(loss, info_nce(q, d, temperature=TEMPERATURE))
    loss.backward()
    assert log_t.grad is not None and log_t.grad != 0


@pytest.mark.parametrize("shape", ["B", "B1"])
@pytest.mark.parametrize("soft", [False, True])
def test_pairwise_bce_equals_bce_with_logits(shape, soft):
    g = torch.Generator().manual_seed(3)
    logits = 3 * torch.randn(8, generator=g)
    logits = (logits.unsqueeze(-1) if shape == "B1" else logits).requires_grad_()
    labels = torch.rand(8, generator=g) if soft else torch.randint(0, 2, (8,), generator=g).float()
    ours = pairwise_bce(logits, labels)
    reference = torch.nn.BCEWithLogitsLoss()(logits.reshape(8), labels)
    assert abs(ours.item() - reference.item()) < 1e-6
    ours_grad, = torch.autograd.grad(ours, logits)
    reference_grad, = torch.autograd.grad(reference, logits)
    assert (ours_grad - reference_grad).abs().max() < 1e-7


def test_listwise_softmax_ce_equals_hand_computation():
    logits = torch.tensor([[2.0, 1.0, -1.0, 0.5], [0.0, 3.0, 0.0, 0.0], [-1.0, -2.0, -3.0, 5.0]])
    hand = sum(-row[0] + math.log(sum(math.exp(x) for x in row)) for row in logits.tolist()) / len(logits)
    assert abs(listwise_softmax_ce(logits).item() - hand) < 1e-6
    # a positive far above its negatives costs ~0; one far below costs ~the margin
    assert listwise_softmax_ce(torch.tensor([[50.0, 0.0, 0.0]])) < 1e-6
    assert abs(listwise_softmax_ce(torch.tensor([[0.0, 40.0]])).item() - 40.0) < 1e-4


def test_gather_with_grad_is_identity_without_a_process_group():
    assert not torch.distributed.is_initialized()
    x = torch.randn(4, 8, requires_grad=True)
    gathered = gather_with_grad(x)
    assert gathered is x
    (gathered * 2).sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, 2.0))
