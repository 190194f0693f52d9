"""Evaluate a run (or an untrained backbone) on a file; print one JSON line, write ``eval_metrics.json``.

    python -m medlab.evaluate run_dir=outputs/runs/biencoder/... eval.path=pairs.jsonl
    python -m medlab.evaluate run_dir=RUN eval.path=rerank.jsonl eval.fields.doc=answer eval.fields.score=judgment
    python -m medlab.evaluate run_dir=none +experiment=biencoder eval.path=pairs.jsonl      # zero-shot baseline
    python -m medlab.evaluate run_dir=RUN eval.task=qa eval.path=qa.jsonl eval.limit=200

``eval.task`` defaults to the run's objective: ``retrieval`` (bi-encoder: the corpus is every distinct
document of the file, each row's own document is relevant), ``rerank`` (cross-encoder: the candidates
sharing a ``group`` are reranked, NDCG on ``score``, MRR on ``label``), ``qa`` (generative models:
greedy answers scored by exact match). Other ``eval.*`` keys: ``fields.*`` (column mapping, default the
run's data config), ``limit``, ``batch_size``, ``out`` (where to write the JSON; default
``RUN_DIR/eval_metrics.json``, or ``outputs/eval/eval_metrics.json`` for ``run_dir=none``),
``checkpoint`` (a specific checkpoint dir), and for retrieval/rerank any RetrievalData option
(``score_range``, ``label_threshold``, ``query_prefix``...). Everything else is a config override.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from medlab.inference import batches, load_run, split_args

log = logging.getLogger("medlab")
TASKS = ("retrieval", "rerank", "qa")


def default_task(cfg) -> str:
    target = str(cfg.objective._target_)
    if target.endswith("BiEncoder"):
        return "retrieval"
    if target.endswith("CrossEncoder"):
        return "rerank"
    return "qa"


def retrieval_data(cfg, ev: dict, task: str):
    """A RetrievalData over ``eval.path`` with the run's settings, the eval field mapping and options."""
    from hydra.utils import instantiate

    data_cfg = OmegaConf.to_container(cfg.data, resolve=True) if "RetrievalData" in str(cfg.data.get("_target_")) else {
        "_target_": "medlab.retrieval.data.RetrievalData"}
    options = {k: v for k, v in ev.items() if k not in ("path", "task", "out", "checkpoint", "batch_size", "limit")}
    data_cfg.update(path=ev["path"], val_path=None, val_split=0.0, limit=ev.get("limit"),
                    task="bi_encoder" if task == "retrieval" else "cross_encoder", group_size=None, num_negatives=0)
    if "fields" in options:
        data_cfg["fields"] = options.pop("fields")
    data_cfg.update(options)
    return instantiate(data_cfg)


@torch.no_grad()
def evaluate_retrieval(module, data, batch_size: int) -> dict[str, float]:
    from medlab.retrieval.evaluation import KS, retrieval_report
    from medlab.retrieval.rows import doc_key

    examples = data.train_dataset
    queries: dict[str, tuple[str, str | None]] = {}
    docs: dict[int, tuple[str, str | None]] = {}
    judgments: dict[str, dict[int, float]] = {}
    for e in examples:
        queries.setdefault(e["group"], (data.query_prefix + e["query"], e.get("query_image")))
        key = doc_key(e["positive"], e.get("image"))
        docs.setdefault(key, (data.doc_prefix + e["positive"] if e["positive"] else "", e.get("image")))
        judgments.setdefault(e["group"], {})[key] = 1.0
    q_items, d_ids = list(queries.values()), list(docs)
    q = module.embed_items(data.encode(b, data.query_max_length) for b in batches(q_items, batch_size))
    d = module.embed_items(data.encode(b, data.max_length) for b in batches([docs[k] for k in d_ids], batch_size))
    return retrieval_report(q, d, d_ids, [judgments[g] for g in queries], ks=KS)


@torch.no_grad()
def evaluate_rerank(module, data, batch_size: int, k: int = 10) -> dict[str, float]:
    from medlab.retrieval.evaluation import rerank_report

    examples = data.train_dataset
    scores: list[float] = []
    for chunk in batches(examples, batch_size):
        batch = data.collate(chunk)
        pairs = {n: t.to(module.device) for n, t in batch["pairs"].items()}
        scores += module.score(pairs).tolist()
    return rerank_report(scores, [e["label"] for e in examples], [e["grade"] for e in examples],
                         [e["group"] for e in examples], k=k)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    args, overrides = split_args(list(sys.argv[1:] if argv is None else argv), ("run_dir", "eval"))
    if "run_dir" not in args or "eval.path" not in args:
        raise SystemExit("usage: python -m medlab.evaluate run_dir=RUN_DIR|none eval.path=FILE [eval.*=...] [overrides]")
    ev = OmegaConf.to_container(OmegaConf.from_dotlist([f"{k}={v}" for k, v in args.items() if k != "run_dir"]))["eval"]
    run_dir = None if args["run_dir"] in ("none", "null", "") else args["run_dir"]
    t0 = time.perf_counter()
    cfg, module, source = load_run(run_dir, overrides, checkpoint=ev.get("checkpoint"))
    task = ev.get("task") or default_task(cfg)
    if task not in TASKS:
        raise SystemExit(f"eval.task={task!r} is not one of {TASKS}")
    batch_size = int(ev.get("batch_size") or 64)
    if task == "qa":
        from medlab.rl.evaluate import evaluate_qa

        metrics = evaluate_qa(module, cfg, ev, batch_size=batch_size)
    else:
        data = retrieval_data(cfg, ev, task)
        counts = data.setup(module.tokenizer)
        metrics = (evaluate_retrieval(module, data, batch_size) if task == "retrieval"
                   else evaluate_rerank(module, data, batch_size))
        metrics.update({f"data/{k}": v for k, v in counts.items()})
    metrics = {"task": task, "path": str(ev["path"]), "weights": source, **metrics,
               "seconds": round(time.perf_counter() - t0, 2)}
    out = Path(ev.get("out") or (Path(run_dir) / "eval_metrics.json" if run_dir else Path("outputs/eval/eval_metrics.json")))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=2, default=str))
    print(json.dumps(metrics, default=str), flush=True)
    return metrics


if __name__ == "__main__":
    from medlab.cli import run_cli

    run_cli(main)  # a config/data problem: its message on stderr, exit code 2
