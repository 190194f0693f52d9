"""Retrieval and reranking evaluation of a loaded objective module on a file (pure functions: no CLI, no files
written).

    data = retrieval_data(cfg, {"path": "pairs.jsonl", "fields": {"query": "q"}}, "retrieval")
    data.setup(module.tokenizer)
    metrics = evaluate_retrieval(module, data, batch_size=64)     # a BiEncoder: full-corpus Recall/MRR/NDCG
    metrics = evaluate_rerank(module, data, batch_size=64)        # a CrossEncoder: each group's candidates
    metrics.update(rerank_baselines(data, load_embedder(cfg), batch_size=64))   # what the reranker has to beat

The metric code is the one validation uses (``medlab.retrieval.evaluation``), so a run evaluated on its own
validation file reproduces its final ``val/*`` metrics.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from medlab.evaluation.runs import batches

RETRIEVAL_DATA = "medlab.retrieval.data.RetrievalData"
# eval.* keys that are not RetrievalData options: the command's own and the QA task's (medlab.evaluation.qa).
NOT_DATA_OPTIONS = ("path", "task", "out", "checkpoint", "batch_size", "limit", "merge_duplicate_queries", "baselines",
                    "template", "system_prompt",
                    "question_template", "contexts_in_prompt", "max_contexts", "max_prompt_length", "max_new_tokens")


def given(options: Mapping[str, Any] | DictConfig | None) -> dict[str, Any]:
    """The options that are set: ``None`` values dropped, ``fields`` reduced to its mapped columns (dropped
    when none is), so the run's own data settings stay where the command line says nothing."""
    if isinstance(options, DictConfig):
        options = OmegaConf.to_container(options, resolve=True)
    out = {k: v for k, v in dict(options or {}).items() if v is not None}
    if isinstance(out.get("fields"), Mapping):
        fields = {k: v for k, v in out["fields"].items() if v is not None}
        if fields:
            out["fields"] = fields
        else:
            del out["fields"]
    return out


def _data_kind(target: Any) -> str | None:
    from hydra.utils import get_class

    try:
        return getattr(get_class(str(target)), "kind", None)  # medlab.contracts.DataSource
    except Exception:  # noqa: BLE001 - not importable: not retrieval data
        return None


def retrieval_data(cfg: Any, ev: Mapping[str, Any], task: str):
    """A RetrievalData over ``ev["path"]`` with the run's data settings (when it trained on retrieval data), the
    eval field mapping (``ev["fields"]`` replaces the run's mapping) and any other RetrievalData option in ``ev``
    (``score_range``, ``label_threshold``, ``query_prefix``, ...). Nothing is held out: every row is evaluated."""
    from hydra.utils import instantiate

    ev = given(ev)
    data_node = cfg.get("data") if cfg is not None else None
    if data_node is not None and _data_kind(data_node.get("_target_")) == "retrieval":
        data_cfg = OmegaConf.to_container(data_node, resolve=True) if isinstance(data_node, DictConfig) else dict(data_node)
    else:
        data_cfg = {"_target_": RETRIEVAL_DATA}
    options = {k: v for k, v in ev.items() if k not in NOT_DATA_OPTIONS}
    data_cfg.update(path=ev["path"], val_path=None, val_split=0.0, limit=ev.get("limit"),
                    task="bi_encoder" if task == "retrieval" else "cross_encoder", group_size=None, num_negatives=0)
    if data_cfg.get("list_size") is not None or data_cfg.get("graded_labels"):  # training-only shapes: every judged
        data_cfg.update(list_size=None, graded_labels=False)                     # pair is evaluated, binary labels
    if "fields" in options:
        data_cfg["fields"] = options.pop("fields")
    data_cfg.update(options)
    return instantiate(data_cfg)


@torch.no_grad()
def evaluate_retrieval(module, data, batch_size: int, merge_duplicate_queries: bool = True) -> dict[str, Any]:
    """Full-corpus retrieval: every distinct document of the file is the corpus, each row's own document is
    relevant to its query. The protocol is in the output: ``rows`` read, ``queries`` ranked and
    ``duplicate_queries_merged``. With ``merge_duplicate_queries`` (the default, what validation does) rows sharing a
    query (its ``group``: the query id, or the query text) are one query whose relevant set is all their
    documents; without it every row is its own query with its own document relevant (the per-row protocol of
    sentence-transformers' ``InformationRetrievalEvaluator`` fed one query per row)."""
    from medlab.retrieval.evaluation import KS, retrieval_report
    from medlab.retrieval.rows import doc_key

    examples = data.train_dataset
    queries: dict[Any, tuple[str, str | None]] = {}
    docs: dict[int, tuple[str, str | None]] = {}
    judgments: dict[Any, dict[int, float]] = {}
    for i, e in enumerate(examples):
        qid = e["group"] if merge_duplicate_queries else i
        queries.setdefault(qid, (data.query_prefix + e["query"], e.get("query_image")))
        key = doc_key(e["positive"], e.get("image"))
        docs.setdefault(key, (data.doc_prefix + e["positive"] if e["positive"] else "", e.get("image")))
        judgments.setdefault(qid, {})[key] = 1.0
    q_items, d_ids = list(queries.values()), list(docs)
    q = module.embed_items(data.encode(b, data.query_max_length) for b in batches(q_items, batch_size))
    d = module.embed_items(data.encode(b, data.max_length) for b in batches([docs[k] for k in d_ids], batch_size))
    report: dict[str, Any] = {"queries": len(queries), "rows": len(examples),
                              "duplicate_queries_merged": bool(merge_duplicate_queries)}
    report.update(retrieval_report(q, d, d_ids, [judgments[g] for g in queries], ks=KS))
    return report


@torch.no_grad()
def evaluate_rerank(module, data, batch_size: int, k: int = 10) -> dict[str, float]:
    """Reranking: the candidates sharing a ``group`` are scored by the cross-encoder; NDCG on the graded
    ``score``, MRR on the binary ``label``."""
    from medlab.retrieval.evaluation import rerank_report

    examples = data.train_dataset
    scores: list[float] = []
    if getattr(module, "prior", None) is not None:
        data.pair_sides = True  # the cosine prior scores each text alone too
    for chunk in batches(examples, batch_size):
        batch = data.collate(chunk)
        pairs = {n: t.to(module.device) for n, t in batch["pairs"].items()}
        scores += module.score(pairs).tolist()
    return rerank_report(scores, [e["label"] for e in examples], [e["grade"] for e in examples],
                         [e["group"] for e in examples], k=k)


def load_embedder(cfg: Any):
    """The zero-shot bi-encoder of a reranker run: its ``model`` config loaded as a bare encoder (no head, no
    adapter, none of the run's training) -> ``(model, pooling)``; pooling = ``objective.prior_pooling`` or mean."""
    from hydra.utils import instantiate

    model, _ = instantiate(cfg.model)(head="embed")
    model.eval()
    return model, str((cfg.get("objective") or {}).get("prior_pooling") or "mean")


@torch.no_grad()
def cosine_scores(embedder, data, batch_size: int) -> list[float]:
    """cos(E(query), E(doc)) of every example of ``data`` (each distinct text embedded once, alone, with the data's
    prefixes and limits): the zero-shot bi-encoder ranking of the same candidates."""
    from medlab.retrieval.pooling import embed

    model, pooling = embedder
    device = next(model.parameters()).device
    examples = data.train_dataset

    def vectors(texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        unique = list(dict.fromkeys(texts))
        out = []
        for chunk in batches(unique, batch_size):
            inputs = {k: v.to(device) for k, v in data.encode([(t, None) for t in chunk], max_length).items()}
            hidden = model(**inputs).last_hidden_state
            out.append(embed(hidden, inputs["attention_mask"], pooling, normalize=True).float().cpu())
        return dict(zip(unique, torch.cat(out))) if out else {}

    qs = vectors([data.query_prefix + e["query"] for e in examples], data.query_max_length)
    ds = vectors([data.doc_prefix + e["doc"] for e in examples], data.max_length)
    return [float(qs[data.query_prefix + e["query"]] @ ds[data.doc_prefix + e["doc"]]) for e in examples]


def rerank_baselines(data, embedder, batch_size: int, k: int = 10) -> dict[str, Any]:
    """What a reranker has to beat on the same candidates, as ``cosine/<metric>`` (the zero-shot bi-encoder cosine
    of the run's backbone) and, when the rows carry a ``rank`` (the retriever's original order, e.g. MEDIQA's
    ``system_rank``), ``original_order/<metric>``."""
    from medlab.retrieval.evaluation import rerank_report

    examples = data.train_dataset
    labels, grades, groups = ([e[f] for e in examples] for f in ("label", "grade", "group"))
    out: dict[str, Any] = {}
    if embedder is not None:
        report = rerank_report(cosine_scores(embedder, data, batch_size), labels, grades, groups, k=k)
        out.update({f"cosine/{m}": v for m, v in report.items() if not m.startswith("num_")})
    if examples and all(e.get("rank") is not None for e in examples):
        report = rerank_report([-float(e["rank"]) for e in examples], labels, grades, groups, k=k)
        out.update({f"original_order/{m}": v for m, v in report.items() if not m.startswith("num_")})
    return out
