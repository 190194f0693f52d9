"""Search tools for agentic RAG, backed by medlab's own retrieval models.

A `SearchIndex` embeds a corpus once with a bi-encoder (a trained run of ``objective=bi_encoder``, or an
untrained backbone) and answers queries with the top-k passages, optionally reranked by a cross-encoder
run. `search_tool` wraps an index as a `medlab.rl.tools.Tool` (``search_text(query)`` /
``search_image(query)``) whose observation lists the passages with their ids; the ids the policy saw
are recorded per call so the ``retrieval_relevance`` reward can check them against the gold passages.

    index = SearchIndex.from_run("outputs/runs/biencoder/...", passages, load_run=medlab.evaluation.load_run)
    tool = search_tool(index, "search_text", k=3)
    tool.fn({"query": "mammography screening interventions"})   # -> "[1] (id 17) Telephone counseling ..."
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medlab.rl.tools import Tool

log = logging.getLogger(__name__)
# (run_dir or None, config overrides) -> (cfg, objective module in eval mode, ...): medlab.evaluation.load_run
RunLoader = Callable[[str | None, Sequence[str]], tuple]


@dataclass
class Passage:
    id: str
    text: str
    image: str | None = None


@dataclass
class SearchIndex:
    """Exact top-k search of ``passages`` with ``encoder`` (a BiEncoder module) and ``data`` (its RetrievalData,
    which knows the prefixes, lengths and tokenizer/processor). ``reranker`` (a CrossEncoder module + its data)
    rescores the top ``rerank_depth`` candidates."""

    encoder: Any
    data: Any
    passages: list[Passage]
    reranker: Any = None
    reranker_data: Any = None
    rerank_depth: int = 20
    batch_size: int = 64
    embeddings: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.passages:
            raise ValueError("SearchIndex needs at least one passage")
        if self.embeddings is None:
            # an image passage is embedded as its image (text -> image search); its text (caption) is what is shown
            items = [("" if p.image else self.data.doc_prefix + p.text, p.image) for p in self.passages]
            self.embeddings = self.encoder.embed_items(
                self.data.encode(items[i : i + self.batch_size], self.data.max_length)
                for i in range(0, len(items), self.batch_size))
        log.info("search index: %d passages embedded (%s)", len(self.passages), tuple(self.embeddings.shape))

    @classmethod
    def from_run(cls, run_dir: str | None, passages: Sequence[Passage], *, load_run: RunLoader | None = None,
                 overrides: Sequence[str] = (), reranker_run: str | None = None, **kwargs) -> SearchIndex:
        """The bi-encoder (and optional cross-encoder) of trained runs (``None`` + overrides = untrained), loaded by
        ``load_run`` -- ``(run_dir | None, overrides) -> (cfg, module, ...)``, e.g. ``medlab.evaluation.load_run``,
        passed in by the caller: ``medlab.rl`` does not import the evaluation layer."""
        from hydra.utils import instantiate
        from omegaconf import OmegaConf

        if load_run is None:
            raise ValueError("SearchIndex.from_run needs load_run (e.g. medlab.evaluation.load_run), passed in by "
                             "the caller: medlab.rl does not import the evaluation layer")

        def load(run, task):
            cfg, module = tuple(load_run(run, list(overrides) if run is None else []))[:2]
            data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
            data_cfg.update(path=None, val_path=None, task=task)
            data = instantiate(data_cfg)
            data.tokenizer = module.tokenizer
            return module, data

        encoder, data = load(run_dir, "bi_encoder")
        reranker = reranker_data = None
        if reranker_run:
            reranker, reranker_data = load(reranker_run, "cross_encoder")
        return cls(encoder, data, list(passages), reranker=reranker, reranker_data=reranker_data, **kwargs)

    @torch.no_grad()
    def search(self, queries: Sequence[str], k: int) -> list[list[tuple[Passage, float]]]:
        """Top-k passages (best first) with their scores, for each query."""
        from medlab.retrieval.evaluation import corpus_search

        items = [(self.data.query_prefix + q, None) for q in queries]
        q = self.encoder.embed_items([self.data.encode(items, self.data.query_max_length)])
        depth = min(len(self.passages), max(k, self.rerank_depth if self.reranker is not None else k))
        ranked, scores = corpus_search(q, self.embeddings, list(range(len(self.passages))), depth)
        out = []
        for query, rows, row_scores in zip(queries, ranked, scores.tolist()):
            hits = [(self.passages[i], s) for i, s in zip(rows, row_scores)]
            if self.reranker is not None:
                hits = self._rerank(query, hits)
            out.append(hits[:k])
        return out

    def _rerank(self, query: str, hits: list[tuple[Passage, float]]) -> list[tuple[Passage, float]]:
        pairs = self.reranker_data.encode_pairs([query] * len(hits), [p.text for p, _ in hits], [None] * len(hits))
        scores = self.reranker.score({n: t.to(self.reranker.device) for n, t in pairs.items()}).tolist()
        return sorted(((p, s) for (p, _), s in zip(hits, scores)), key=lambda t: -t[1])


def format_hits(hits: list[tuple[Passage, float]], max_chars: int = 400) -> str:
    """``[i] (id ID) text`` lines, each passage cut to ``max_chars`` characters."""
    if not hits:
        return "No results."
    lines = []
    for i, (p, _) in enumerate(hits, 1):
        text = p.text if len(p.text) <= max_chars else p.text[: max_chars - 3].rstrip() + "..."
        lines.append(f"[{i}] (id {p.id}) {text}" + (f" [image: {Path(p.image).name}]" if p.image else ""))
    return "\n".join(lines)


def search_tool(index: SearchIndex, name: str = "search_text", *, k: int = 3, max_chars: int = 400,
                description: str | None = None) -> Tool:
    """A `Tool` calling ``index.search``; the observation names each passage's id (see `observed_ids`)."""

    def fn(arguments: dict) -> str:
        query = arguments.get("query") if isinstance(arguments, dict) else None
        if not isinstance(query, str) or not query.strip():
            raise ValueError(f'{name} needs a non-empty string argument "query", got {arguments!r}')
        hits = index.search([query.strip()], k)[0]
        return format_hits(hits, max_chars)

    kind = "images (their captions)" if name == "search_image" else "passages"
    return Tool(name=name, fn=fn, description=description or f"Search the medical {kind} index; returns the top {k}.",
                parameters={"type": "object", "properties": {"query": {"type": "string", "description": "search query"}},
                            "required": ["query"]})


_ID = re.compile(r"^\[\d+\] \(id ([^)]+)\)", re.MULTILINE)


def observed_ids(tool_calls: Sequence[dict]) -> list[str]:
    """Passage ids shown to the policy by the search tools of one rollout (``ToolRollout.tool_calls``), in order."""
    out: list[str] = []
    for call in tool_calls:
        if str(call.get("name", "")).startswith("search_") and isinstance(call.get("result"), str):
            out += [m for m in _ID.findall(call["result"]) if m not in out]
    return out


def corpus_from_rows(rows: Sequence[dict], field: str = "contexts", id_field: str = "id") -> tuple[list[Passage], list[list[str]]]:
    """Passages from every row's ``field`` (a string or list of strings), deduplicated, with ids
    ``{row id}-{j}``; also each row's gold passage ids (for the retrieval_relevance reward)."""
    passages: dict[str, Passage] = {}
    by_text: dict[str, str] = {}
    gold: list[list[str]] = []
    for i, row in enumerate(rows):
        values = row.get(field) or []
        values = [values] if isinstance(values, str) else list(values)
        ids = []
        for j, text in enumerate(t.strip() for t in values if isinstance(t, str) and t.strip()):
            pid = by_text.setdefault(text, f"{row.get(id_field, i)}-{j}")
            passages.setdefault(pid, Passage(pid, text))
            ids.append(pid)
        gold.append(ids)
    return list(passages.values()), gold
