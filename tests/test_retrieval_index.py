"""EmbeddingIndex: chunked search equals a full matmul + sort (ties by index), backends, save/load."""

import json
import sys

import pytest
import torch
import torch.nn.functional as F

from medlab.retrieval.index import EmbeddingIndex, chunked_topk


def brute_force(queries, docs, k):
    """Full Q x D score matrix, sorted by descending score with ties by ascending document index."""
    scores = queries.float() @ docs.float().T
    order = scores.argsort(dim=1, descending=True, stable=True)[:, :k]
    return scores.gather(1, order), order


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("chunk_size", [1, 3, 7, 64, 10_000])
def test_search_equals_full_matmul_topk(normalize, chunk_size):
    gen = torch.Generator().manual_seed(0)
    docs, queries = torch.randn(50, 8, generator=gen), torch.randn(6, 8, generator=gen)
    index = EmbeddingIndex(normalize=normalize, backend="torch")
    index.add(docs)
    q = F.normalize(queries, dim=1) if normalize else queries
    for k in (1, 5, 50):
        scores, indices = index.search(queries, k, chunk_size=chunk_size)
        ref_scores, ref_indices = brute_force(q, index.embeddings, k)
        assert torch.equal(indices, ref_indices)
        torch.testing.assert_close(scores, ref_scores, rtol=0, atol=1e-6)
    if normalize:
        assert torch.allclose(index.embeddings.norm(dim=1), torch.ones(50))
        assert scores.max() <= 1 + 1e-6  # cosine similarities
    else:
        assert torch.equal(index.embeddings, docs)


@pytest.mark.parametrize("chunk_size", [1, 2, 5, 8, 13, 200])
def test_ties_across_chunk_boundaries_go_to_the_lower_index(chunk_size):
    # Small integer vectors: every dot product is exact and most scores tie, so the top k is decided
    # by the tie rule, including ties that straddle chunks and the k-th place inside a chunk.
    gen = torch.Generator().manual_seed(1)
    docs = torch.randint(-1, 2, (60, 3), generator=gen).float()
    queries = torch.randint(-1, 2, (9, 3), generator=gen).float()
    index = EmbeddingIndex(normalize=False, backend="torch")
    index.add(docs)
    for k in (1, 4, 17, 60):
        scores, indices = index.search(queries, k, chunk_size=chunk_size)
        ref_scores, ref_indices = brute_force(queries, docs, k)
        assert torch.equal(indices, ref_indices) and torch.equal(scores, ref_scores)


def test_all_scores_tied_returns_the_first_k_documents():
    index = EmbeddingIndex(normalize=False, backend="torch")
    index.add(torch.ones(10, 2))
    _, indices = index.search(torch.ones(2, 2), k=4, chunk_size=3)
    assert indices.tolist() == [[0, 1, 2, 3], [0, 1, 2, 3]]


def test_chunked_topk_handles_k_larger_than_a_chunk():
    gen = torch.Generator().manual_seed(2)
    docs, queries = torch.randn(23, 4, generator=gen), torch.randn(3, 4, generator=gen)
    scores, indices = chunked_topk(queries, docs, k=10, chunk_size=4)  # chunks of 4 < k, last chunk of 3
    ref_scores, ref_indices = brute_force(queries, docs, 10)
    assert torch.equal(indices, ref_indices)
    torch.testing.assert_close(scores, ref_scores, rtol=0, atol=1e-6)


def test_k_larger_than_the_index_and_empty_queries():
    index = EmbeddingIndex(backend="torch")
    index.add(torch.randn(4, 3), ids=["a", "b", "c", "d"])
    scores, indices = index.search(torch.randn(2, 3), k=10)
    assert scores.shape == indices.shape == (2, 4)
    assert sorted(indices[0].tolist()) == [0, 1, 2, 3]
    scores, indices = index.search(torch.empty(0, 3), k=2)
    assert scores.shape == indices.shape == (0, 2)


def test_fp16_storage_scores_in_fp32():
    gen = torch.Generator().manual_seed(3)
    docs, queries = torch.randn(40, 16, generator=gen), torch.randn(5, 16, generator=gen)
    index = EmbeddingIndex(dtype="fp16", backend="torch")
    index.add(docs)
    assert index.embeddings.dtype == torch.float16
    scores, indices = index.search(queries, 7, chunk_size=6)
    assert scores.dtype == torch.float32
    ref_scores, ref_indices = brute_force(F.normalize(queries, dim=1), index.embeddings, 7)
    assert torch.equal(indices, ref_indices)
    torch.testing.assert_close(scores, ref_scores, rtol=0, atol=1e-6)
    # fp16 rounding moves cosine scores by ~1e-3 at most.
    full = F.normalize(queries, dim=1) @ F.normalize(docs, dim=1).T
    torch.testing.assert_close(scores, full.gather(1, indices), rtol=0, atol=2e-3)


def test_add_appends_and_validates():
    index = EmbeddingIndex(backend="torch")
    index.add(torch.randn(3, 4), ids=["a", "b", "c"])
    index.add(torch.randn(2, 4), ids=["d", "e"])
    assert len(index) == 5 and index.dim == 4 and index.ids == ["a", "b", "c", "d", "e"]
    assert index.embeddings.shape == (5, 4)
    target = torch.zeros(1, 4)
    target[0, 0] = 1.0
    index.add(target, ids=["f"])
    _, indices = index.search(target, k=1)
    assert index.ids[indices[0, 0]] == "f"
    with pytest.raises(ValueError, match="unique"):
        index.add(torch.randn(1, 4), ids=["a"])
    with pytest.raises(ValueError, match="dim 5, the index has dim 4"):
        index.add(torch.randn(1, 5), ids=["g"])
    with pytest.raises(ValueError, match="2 embeddings but 1 ids"):
        index.add(torch.randn(2, 4), ids=["g"])
    with pytest.raises(ValueError, match="NaN or inf"):
        index.add(torch.full((1, 4), float("nan")), ids=["g"])
    with pytest.raises(ValueError, match="dim 3, the index has dim 4"):
        index.search(torch.randn(1, 3), k=1)
    with pytest.raises(ValueError, match="k must be a positive int"):
        index.search(torch.randn(1, 4), k=0)
    with pytest.raises(ValueError, match="empty"):
        EmbeddingIndex(backend="torch").search(torch.randn(1, 4), k=1)
    default_ids = EmbeddingIndex(backend="torch")
    default_ids.add(torch.randn(2, 4))
    default_ids.add(torch.randn(1, 4))
    assert default_ids.ids == [0, 1, 2]


def test_backends(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    with pytest.raises(ImportError, match="backend='faiss' needs the faiss package"):
        EmbeddingIndex(backend="faiss")
    assert EmbeddingIndex(backend="auto").backend == "torch"
    assert EmbeddingIndex(backend="torch").backend == "torch"
    with pytest.raises(ValueError, match="backend must be one of"):
        EmbeddingIndex(backend="annoy")
    with pytest.raises(ValueError, match="dtype must be one of"):
        EmbeddingIndex(dtype="int8")


def test_faiss_backend_matches_torch_when_installed():
    pytest.importorskip("faiss")
    gen = torch.Generator().manual_seed(4)
    docs, queries = torch.randn(100, 8, generator=gen), torch.randn(4, 8, generator=gen)
    results = {}
    for backend in ("faiss", "torch"):
        index = EmbeddingIndex(backend=backend)
        index.add(docs)
        results[backend] = index.search(queries, 5)
    assert torch.equal(results["faiss"][1], results["torch"][1])
    torch.testing.assert_close(results["faiss"][0], results["torch"][0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_save_load_round_trip(tmp_path, dtype):
    gen = torch.Generator().manual_seed(5)
    index = EmbeddingIndex(normalize=True, dtype=dtype, backend="torch")
    index.add(torch.randn(12, 6, generator=gen), ids=[f"doc-{i}" for i in range(12)])
    index.add(torch.randn(3, 6, generator=gen), ids=[100, 101, 102])
    index.save(tmp_path / "idx")
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == ["embeddings.safetensors", "index.json"]
    config = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert config["normalize"] is True and config["dtype"] == dtype and config["dim"] == 6

    loaded = EmbeddingIndex.load(tmp_path / "idx", backend="torch")
    assert loaded.ids == index.ids and loaded.normalize and loaded.dtype == index.dtype
    assert torch.equal(loaded.embeddings, index.embeddings)
    queries = torch.randn(4, 6, generator=gen)
    for got, want in zip(loaded.search(queries, 5), index.search(queries, 5)):
        assert torch.equal(got, want)

    config["format_version"] = 99
    (tmp_path / "idx" / "index.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="format_version"):
        EmbeddingIndex.load(tmp_path / "idx")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_search_equals_cpu():
    gen = torch.Generator().manual_seed(6)
    docs, queries = torch.randint(-2, 3, (500, 8), generator=gen).float(), torch.randn(7, 8, generator=gen)
    cpu, gpu = EmbeddingIndex(normalize=False), EmbeddingIndex(normalize=False, device="cuda", dtype="fp16")
    cpu.add(docs)
    gpu.add(docs)  # small integers are exact in fp16
    scores, indices = gpu.search(queries.round(), 20, chunk_size=64)
    ref_scores, ref_indices = cpu.search(queries.round(), 20, chunk_size=64)
    assert torch.equal(indices.cpu(), ref_indices) and torch.equal(scores.cpu(), ref_scores)
