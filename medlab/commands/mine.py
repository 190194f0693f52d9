"""``python -m medlab.mine``: hard negatives from a trained bi-encoder, written back into each row.

    python -m medlab.mine run_dir=outputs/runs/biencoder/<run> mine.path=pairs.jsonl mine.out=pairs_hn.jsonl \\
        mine.k=5 mine.skip_top=2 [mine.fields.query=question mine.fields.positive=answer] [mine.corpus=more.jsonl]

A Hydra app (``medlab.commands.app``): the options are declared, with comments, in ``conf/commands/mine.yaml``.
The corpus is every distinct positive document of ``mine.path`` plus, optionally, the ``mine.corpus_field``
(default ``text``) of every row of ``mine.corpus``. For each row, documents are ranked by the bi-encoder (the
run's best checkpoint by ``trainer.monitor``; ``mine.checkpoint=latest|PATH``); the query's own positives (all
rows of the same query / group) are never negatives; the first ``skip_top`` remaining ones are skipped too (they
are often unlabeled positives -- false negatives); the next ``k`` are written, best first, into the row's
``mine.out_field`` (default ``negatives``), so the output trains directly with ``data.path=OUT
data.num_negatives=k``. ``run_dir=none`` mines with the untrained backbone (``+experiment=biencoder`` ...).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from medlab.commands.app import require_run_dir, run_command
from medlab.config import ConfigError
from medlab.data.errors import DataError
from medlab.evaluation import batches, choose_checkpoint, default_task, given, load_module, retrieval_data

log = logging.getLogger("medlab")
COMMAND = "mine"


def mine_negatives(ranked_ids: list[list[int]], positives: list[set[int]], k: int, skip_top: int) -> list[list[int]]:
    """Per query: drop its positives, skip the next ``skip_top``, keep ``k`` (pure; ids in rank order)."""
    out = []
    for ids, pos in zip(ranked_ids, positives):
        candidates = [d for d in ids if d not in pos]
        out.append(candidates[skip_top : skip_top + k])
    return out


def _options(cfg: DictConfig) -> dict[str, Any]:
    opt = given(cfg.mine)
    problems = [f"mine.{key} is required: {what}" for key, what in (
        ("path", "the pairs file whose rows get hard negatives (mine.path=FILE)"),
        ("out", "where the rows are written back with their negatives (mine.out=OUT.jsonl)")) if not opt.get(key)]
    for key in ("k", "skip_top", "batch_size"):
        value = opt.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < (1 if key != "skip_top" else 0):
            problems.append(f"mine.{key} must be an integer >= {1 if key != 'skip_top' else 0}, got {value!r}")
    task = default_task(cfg)
    if task != "retrieval":
        problems.append(f"mining needs a bi-encoder run (an objective whose eval_task is retrieval); this config's "
                        f"objective is {cfg.objective._target_} (eval_task {task})")
    if problems:
        raise ConfigError(problems)
    return opt


@torch.no_grad()
def mine(cfg: DictConfig, run_dir: Any) -> dict[str, Any]:
    """The command's body: ``cfg`` is the composed config (``mine.*`` + the run's or the training config)."""
    from medlab.data.readers import read_records
    from medlab.retrieval.evaluation import corpus_search
    from medlab.retrieval.rows import doc_key

    run_dir = require_run_dir(COMMAND, run_dir)
    opt = _options(cfg)
    k, skip_top, batch_size = int(opt["k"]), int(opt["skip_top"]), int(opt["batch_size"])
    t0 = time.perf_counter()
    choice = choose_checkpoint(cfg, run_dir, opt.get("checkpoint"))  # before the data is read and the model built
    data = retrieval_data(cfg, {"path": opt["path"], **({"fields": opt["fields"]} if "fields" in opt else {})},
                          "retrieval")
    problems = data.validate()  # every row checked before any model loads
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise DataError(f"{len(problems)} problem(s) in mine.path={opt['path']}:\n{lines}")
    cfg, module, choice = load_module(cfg, run_dir, checkpoint=choice)
    data.setup(module.tokenizer)
    examples = data.train_dataset

    docs: dict[int, str] = {}
    positives: dict[str, set[int]] = {}
    for e in examples:
        key = doc_key(e["positive"], e.get("image"))
        docs.setdefault(key, e["positive"])
        positives.setdefault(e["group"], set()).add(key)
    if opt.get("corpus"):
        field = opt.get("corpus_field", "text")
        for i, rec in enumerate(read_records(opt["corpus"]).to_list()):
            text = rec.get(field)
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"{opt['corpus']} row {i + 1}: field {field!r} is missing or empty (mine.corpus_field)")
            docs.setdefault(doc_key(text.strip()), text.strip())
    doc_ids = list(docs)
    d = module.embed_items(data.encode([(data.doc_prefix + docs[i], None) for i in b], data.max_length)
                           for b in batches(doc_ids, batch_size))
    groups = list(positives)
    first: dict[str, str] = {}
    for e in examples:
        first.setdefault(e["group"], e["query"])
    q = module.embed_items(data.encode([(data.query_prefix + first[g], None) for g in b], data.query_max_length)
                           for b in batches(groups, batch_size))
    depth = min(len(doc_ids), k + skip_top + max(len(p) for p in positives.values()))
    ranked, _ = corpus_search(q, d, doc_ids, depth)
    mined = dict(zip(groups, mine_negatives(ranked, [positives[g] for g in groups], k, skip_top)))

    # the same records setup read: with on_bad_row=skip, lines that do not parse are left out there too
    records = read_records(opt["path"], skip_unparsable=data.on_bad_row == "skip").to_list()
    out_field = opt.get("out_field", "negatives")
    out = Path(opt["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    written = short = 0
    by_row = {e["row"]: e["group"] for e in examples}
    with open(out, "w", encoding="utf-8") as f:
        for i, rec in enumerate(records):
            if i not in by_row:
                continue  # a bad row that setup skipped (on_bad_row=skip)
            negs = [docs[j] for j in mined[by_row[i]]]
            short += len(negs) < k
            f.write(json.dumps({**rec, out_field: negs}, ensure_ascii=False) + "\n")
            written += 1
    summary = {"out": str(out), "rows": written, "corpus_size": len(doc_ids), "k": k, "skip_top": skip_top,
               "rows_with_fewer_than_k": short, "weights": str(choice), **choice.as_dict(),
               "seconds": round(time.perf_counter() - t0, 2)}
    log.info("mined %d rows -> %s", written, out)
    print(json.dumps(summary), flush=True)
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """``python -m medlab.mine *argv`` in-process: the summary (None for ``--cfg``); raises ConfigError /
    DataError for the user's mistakes."""
    return run_command(COMMAND, argv, mine)


def cli() -> None:
    """The console entry: a config/data problem is printed alone on stderr (and in the log), exit code 2."""
    from medlab.commands.cli import run_cli

    run_cli(main)


if __name__ == "__main__":
    cli()
