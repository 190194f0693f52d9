"""Question/answer embeddings for the relevance dimension, with the project's bi-encoder.

``compare.relevance.model``: a bi-encoder run directory (its best checkpoint), or a model config name composed
with ``+experiment=biencoder`` (default ``minilm``: all-MiniLM-L6-v2, mean pooling, normalized), or ``none`` to
skip the dimension.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


def load_embedder(source: str, device: str | None = None) -> Any:
    """The bi-encoder module (eval mode) of a run directory or of ``+experiment=biencoder model=SOURCE``."""
    from medlab.evaluation.runs import load_run

    path = Path(str(source)).expanduser()
    if path.is_dir() and (path / "config_resolved.yaml").is_file():
        return load_run(str(path), device=device).module
    return load_run(None, ["+experiment=biencoder", f"model={source}"], device=device).module


@torch.no_grad()
def embed_texts(module: Any, texts: Sequence[str], *, batch_size: int = 32, max_length: int = 256) -> torch.Tensor:
    """``[N, H]`` embeddings of ``texts`` (the module's pooling and normalization); an empty text embeds as " "."""
    tok = module.tokenizer

    def batches():
        for s in range(0, len(texts), batch_size):
            enc = tok([t or " " for t in texts[s:s + batch_size]], padding=True, truncation=True,
                      max_length=max_length, return_tensors="pt")
            yield {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    return module.embed_items(batches())


def cosine_rows(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """Row-wise cosine similarity of two ``[N, H]`` tensors."""
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1).tolist()
