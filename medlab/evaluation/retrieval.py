"""Retrieval and reranking evaluation of a loaded objective module on a file (pure functions: no CLI, no files
written).

    data = retrieval_data(cfg, {"path": "pairs.jsonl", "fields": {"query": "q"}}, "retrieval")
    data.setup(module.tokenizer)
    metrics = evaluate_retrieval(module, data, batch_size=64)     # a BiEncoder: full-corpus Recall/MRR/NDCG
    metrics = evaluate_rerank(module, data, batch_size=64)        # a CrossEncoder: each group's candidates

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
NOT_DATA_OPTIONS = ("path", "task", "out", "checkpoint", "batch_size", "limit", "merge_duplicate_queries",
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
    for chunk in batches(examples, batch_size):
        batch = data.collate(chunk)
        pairs = {n: t.to(module.device) for n, t in batch["pairs"].items()}
        scores += module.score(pairs).tolist()
    return rerank_report(scores, [e["label"] for e in examples], [e["grade"] for e in examples],
                         [e["group"] for e in examples], k=k)
