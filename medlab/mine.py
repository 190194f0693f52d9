"""Mine hard negatives with a trained bi-encoder: write each row back with its top-k non-positive documents.

    python -m medlab.mine run_dir=outputs/runs/biencoder/... mine.path=pairs.jsonl mine.out=pairs_hn.jsonl \
        mine.k=5 mine.skip_top=2 [mine.fields.query=question mine.fields.positive=answer] [mine.corpus=more_docs.jsonl]

The corpus is every distinct positive document of ``mine.path`` plus, optionally, the ``mine.corpus_field``
(default ``text``) of every row of ``mine.corpus``. For each row, documents are ranked by the bi-encoder;
the query's own positives (all rows of the same query / group) are never negatives; the first
``skip_top`` remaining ones are skipped too (they are often unlabeled positives -- false negatives);
the next ``k`` are written, best first, into the row's ``mine.out_field`` (default ``negatives``), so
the output trains directly with ``data.path=OUT data.num_negatives=k``. ``run_dir=none`` mines with
the untrained backbone (config overrides such as ``+experiment=biencoder`` select it).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from medlab.inference import batches, load_run, split_args

log = logging.getLogger("medlab")


def mine_negatives(ranked_ids: list[list[int]], positives: list[set[int]], k: int, skip_top: int) -> list[list[int]]:
    """Per query: drop its positives, skip the next ``skip_top``, keep ``k`` (pure; ids in rank order)."""
    out = []
    for ids, pos in zip(ranked_ids, positives):
        candidates = [d for d in ids if d not in pos]
        out.append(candidates[skip_top : skip_top + k])
    return out


@torch.no_grad()
def main(argv: list[str] | None = None) -> dict:
    from medlab.data.readers import read_records
    from medlab.evaluate import retrieval_data
    from medlab.retrieval.evaluation import corpus_search
    from medlab.retrieval.rows import doc_key

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    args, overrides = split_args(list(sys.argv[1:] if argv is None else argv), ("run_dir", "mine"))
    if "run_dir" not in args or "mine.path" not in args or "mine.out" not in args:
        raise SystemExit("usage: python -m medlab.mine run_dir=RUN|none mine.path=FILE mine.out=OUT.jsonl [mine.k=5] "
                         "[mine.skip_top=0] [mine.fields.*=...] [mine.corpus=FILE]")
    opt = OmegaConf.to_container(OmegaConf.from_dotlist([f"{k}={v}" for k, v in args.items() if k != "run_dir"]))["mine"]
    k, skip_top = int(opt.get("k", 5)), int(opt.get("skip_top", 0))
    batch_size = int(opt.get("batch_size", 64))
    t0 = time.perf_counter()
    cfg, module, source = load_run(args["run_dir"], overrides)
    if not str(cfg.objective._target_).endswith("BiEncoder"):
        raise SystemExit(f"mining needs a bi-encoder run; this run's objective is {cfg.objective._target_}")
    ev = {"path": opt["path"], **({"fields": opt["fields"]} if "fields" in opt else {})}
    data = retrieval_data(cfg, ev, "retrieval")
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
                raise SystemExit(f"{opt['corpus']}: row {i + 1}: field {field!r} is missing or empty (mine.corpus_field)")
            docs.setdefault(doc_key(text.strip()), text.strip())
    doc_ids = list(docs)
    d = module.embed_items(data.encode([(data.doc_prefix + docs[i], None) for i in b], data.max_length)
                           for b in batches(doc_ids, batch_size))
    groups = list(positives)
    first = {}
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
               "rows_with_fewer_than_k": short, "weights": source, "seconds": round(time.perf_counter() - t0, 2)}
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    from medlab.cli import run_cli

    run_cli(main)  # a config/data problem: its message on stderr, exit code 2
