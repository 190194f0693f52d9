"""Exact inner-product search over document embeddings, chunked so a large corpus fits in memory.

`EmbeddingIndex` stores document embeddings (L2-normalized by default, so scores are cosine
similarities) in fp32, fp16 or bf16 on any torch device, and answers top-k queries exactly:

    score(q, d) = <q', d'>,  q' = q / ||q||, d' = d / ||d|| when ``normalize=True`` (raw otherwise)

The torch backend scores one chunk of documents at a time (``Q x chunk_size`` scores, always in
fp32) and merges each chunk's top k into a running top k, so memory is O(Q * chunk_size), never
O(Q * D). Ties are broken by document index (lower first), the rule of `medlab.retrieval.metrics.rank`,
so results equal a full ``scores.sort(descending=True, stable=True)[:k]`` on the stored embeddings.
faiss (``IndexFlatIP``, CPU) is used when installed and ``backend="auto"``; its tie order is faiss's.

Saved as a directory: ``embeddings.safetensors`` (the stored matrix) + ``index.json`` (ids and
config). Nothing is pickled.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 1
EMBEDDINGS_FILE = "embeddings.safetensors"
CONFIG_FILE = "index.json"
BACKENDS = ("auto", "torch", "faiss")
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


class EmbeddingIndex:
    """Exact top-k inner-product search over stored document embeddings.

    Args:
        normalize: L2-normalize documents on `add` and queries on `search` (cosine similarity).
        dtype: storage dtype, ``float32`` | ``float16`` | ``bfloat16`` (torch dtype or name).
            Scores are always computed in fp32.
        device: where the embeddings live (``"cpu"``, ``"cuda"``, ...).
        backend: ``"torch"``; ``"faiss"`` (raises ImportError when faiss is missing); or ``"auto"``,
            which picks faiss when it is importable and the index is on CPU, torch otherwise.
        chunk_size: documents scored per matmul in the torch backend (default for `search`).
    """

    def __init__(self, normalize: bool = True, dtype: torch.dtype | str = torch.float32,
                 device: torch.device | str = "cpu", backend: str = "auto", chunk_size: int = 32768) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.normalize = bool(normalize)
        self.dtype = _resolve_dtype(dtype)
        self.device = torch.device(device)
        self.chunk_size = _check_positive(chunk_size, "chunk_size")
        self.backend = _resolve_backend(backend, self.device)
        self.ids: list[str | int] = []
        self._blocks: list[torch.Tensor] = []
        self._faiss_index = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int | None:
        return self._blocks[0].size(1) if self._blocks else None

    @property
    def embeddings(self) -> torch.Tensor:
        """The stored ``[N, dim]`` matrix (normalized if ``normalize``), in the storage dtype."""
        if not self._blocks:
            raise ValueError("the index is empty; add embeddings first")
        if len(self._blocks) > 1:  # concatenate lazily: repeated adds stay linear in N
            self._blocks = [torch.cat(self._blocks)]
        return self._blocks[0]

    def add(self, embeddings: torch.Tensor, ids: Sequence[str | int] | None = None) -> None:
        """Append documents ``[N, dim]`` with their ids (str or int, unique; default: their row numbers)."""
        embeddings = _check_vectors(embeddings, "embeddings", self.dim)
        if ids is None:
            ids = list(range(len(self.ids), len(self.ids) + embeddings.size(0)))
        ids = list(ids)
        if len(ids) != embeddings.size(0):
            raise ValueError(f"{embeddings.size(0)} embeddings but {len(ids)} ids")
        bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, (str, int))]
        if bad:
            raise ValueError(f"ids must be str or int (stored as JSON), got {bad[:3]!r}")
        if len(set(ids)) != len(ids) or not set(ids).isdisjoint(self.ids):
            raise ValueError("ids must be unique across the index")
        vectors = embeddings.to(self.device, torch.float32)
        if self.normalize:
            vectors = F.normalize(vectors, dim=1)
        self._blocks.append(vectors.to(self.dtype))
        self.ids.extend(ids)
        self._faiss_index = None

    def search(self, queries: torch.Tensor, k: int, chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k documents for each query: ``(scores [Q, k'], indices [Q, k'])``, k' = min(k, len(self)).

        Rows are sorted by descending score, ties by ascending document index (torch backend).
        ``indices`` are row numbers; ``index.ids[i]`` is the id of row ``i``. Scores are fp32 on the
        index's device.
        """
        k = _check_positive(k, "k")
        chunk_size = _check_positive(chunk_size or self.chunk_size, "chunk_size")
        docs = self.embeddings
        queries = _check_vectors(queries, "queries", docs.size(1)).to(self.device, torch.float32)
        if self.normalize:
            queries = F.normalize(queries, dim=1)
        k = min(k, docs.size(0))
        if queries.size(0) == 0:
            return torch.empty(0, k, device=self.device), torch.empty(0, k, dtype=torch.long, device=self.device)
        if self.backend == "faiss":
            return self._faiss_search(queries, k)
        return chunked_topk(queries, docs, k, chunk_size)

    def save(self, directory: str | Path) -> Path:
        """Write ``embeddings.safetensors`` and ``index.json`` into ``directory`` (created if needed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({"embeddings": self.embeddings.detach().contiguous().cpu()}, str(directory / EMBEDDINGS_FILE))
        config = {"format_version": FORMAT_VERSION, "normalize": self.normalize,
                  "dtype": str(self.dtype).removeprefix("torch."), "dim": self.dim, "ids": self.ids}
        (directory / CONFIG_FILE).write_text(json.dumps(config))
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: torch.device | str = "cpu", backend: str = "auto",
             chunk_size: int = 32768) -> EmbeddingIndex:
        """Read an index written by `save`; the stored vectors are used as they are (no renormalizing)."""
        directory = Path(directory)
        config = json.loads((directory / CONFIG_FILE).read_text())
        if config.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{directory / CONFIG_FILE}: unsupported format_version {config.get('format_version')!r}")
        embeddings = load_file(str(directory / EMBEDDINGS_FILE), device="cpu")["embeddings"]
        if embeddings.size(0) != len(config["ids"]):
            raise ValueError(f"{directory}: {embeddings.size(0)} embeddings but {len(config['ids'])} ids")
        index = cls(normalize=config["normalize"], dtype=config["dtype"], device=device, backend=backend,
                    chunk_size=chunk_size)
        index._blocks = [embeddings.to(index.device, index.dtype)]
        index.ids = list(config["ids"])
        return index

    def _faiss_search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        import faiss

        if self._faiss_index is None:
            self._faiss_index = faiss.IndexFlatIP(self.dim)
            self._faiss_index.add(self.embeddings.float().cpu().contiguous().numpy())
        scores, indices = self._faiss_index.search(queries.cpu().contiguous().numpy(), k)
        return torch.from_numpy(scores).to(self.device), torch.from_numpy(indices).long().to(self.device)


def chunked_topk(queries: torch.Tensor, docs: torch.Tensor, k: int,
                 chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k of ``queries @ docs.T`` (fp32) scoring ``chunk_size`` documents at a time.

    Equals ``(queries @ docs.float().T)`` sorted by descending score with ties by ascending column,
    truncated to k, while holding only ``[Q, chunk_size]`` scores at once. Requires k <= len(docs).
    """
    best_scores = best_indices = None
    for start in range(0, docs.size(0), chunk_size):
        scores = queries @ docs[start:start + chunk_size].float().T
        chunk_scores, chunk_indices = _topk_lowest_index_ties(scores, min(k, scores.size(1)))
        chunk_indices += start
        if best_scores is None:
            best_scores, best_indices = chunk_scores, chunk_indices
            continue
        # Earlier chunks hold lower indices, and each part is already in (score desc, index asc)
        # order, so a stable sort of [best, chunk] keeps ties in ascending index.
        scores = torch.cat([best_scores, chunk_scores], dim=1)
        indices = torch.cat([best_indices, chunk_indices], dim=1)
        order = scores.argsort(dim=1, descending=True, stable=True)[:, :k]
        best_scores, best_indices = scores.gather(1, order), indices.gather(1, order)
    return best_scores, best_indices


def _topk_lowest_index_ties(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    values, columns = scores.topk(k, dim=1)
    kth = values[:, -1:]
    at_least_kth = scores >= kth
    if not bool((at_least_kth.sum(dim=1) == k).all()):
        # Some row has more values tied with its k-th largest than places left, and torch.topk picks
        # among them arbitrarily: take every value above the k-th plus the lowest-index tied ones.
        above = scores > kth
        tied = at_least_kth & ~above
        wanted = k - above.sum(dim=1, keepdim=True)
        take = above | (tied & (tied.cumsum(dim=1, dtype=torch.int32) <= wanted))
        columns = take.nonzero()[:, 1].view(scores.size(0), k)
    # Sorting columns ascending first makes the stable score sort put tied scores in index order.
    columns = columns.sort(dim=1).values
    values = scores.gather(1, columns)
    order = values.argsort(dim=1, descending=True, stable=True)
    return values.gather(1, order), columns.gather(1, order)


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend == "torch":
        return "torch"
    try:
        import faiss  # noqa: F401
    except ImportError:
        if backend == "faiss":
            raise ImportError("backend='faiss' needs the faiss package (pip install faiss-cpu); "
                              "use backend='torch' or 'auto' to search with torch") from None
        return "torch"
    if backend == "faiss" and device.type != "cpu":
        raise ValueError(f"backend='faiss' searches on CPU; got device {device}; use backend='torch'")
    return "faiss" if device.type == "cpu" else "torch"


def _resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.removeprefix("torch.")]
    raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")


def _check_positive(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_vectors(t: torch.Tensor, name: str, dim: int | None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.dim() != 2:
        raise ValueError(f"{name} must be a 2-D tensor [n, dim], got {getattr(t, 'shape', type(t))}")
    if dim is not None and t.size(1) != dim:
        raise ValueError(f"{name} have dim {t.size(1)}, the index has dim {dim}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contain NaN or inf")
    return t
