#!/usr/bin/env python
"""Reranker recipes vs the zero-shot bi-encoder cosine on held-out medical questions (issue 16).

    .venv/bin/python experiments/rerank/ablate.py --list                         # the variants and datasets
    .venv/bin/python experiments/rerank/ablate.py --dataset liveqa --variant default --variant bce_head
    .venv/bin/python experiments/rerank/ablate.py --table                        # results.jsonl -> markdown

Each row = one training run (``python -m medlab +experiment=reranker <dataset overrides> <variant overrides>``) on
the training questions, then ``python -m medlab.evaluate run_dir=RUN eval.checkpoint=latest eval.path=TEST`` on the
held-out questions: the reranker's NDCG@10 (graded) / MRR@10 / Accuracy@1 next to ``cosine/*`` (the zero-shot
MiniLM bi-encoder cosine of the same candidates, medlab.evaluation.retrieval.rerank_baselines) and, for MEDIQA,
``original_order/*`` (the retriever's system_rank). The last checkpoint is evaluated (no selection on the test
questions). During training the run validates on the held-out file every ``--val-every`` steps: those ``val/ndcg@10``
points are the learning curve (``curves.md``).

Splits (fixed): LiveQA-MedQuAD (63 questions, judgment 1-4): 16 questions held out by ``qid`` with
``medlab.data.split.hold_out(seed=0)``, written to ``outputs/rerank_ablation/data/``. MEDIQA-2019 task 3: train on
``mediqa2019_train_liveqa.jsonl`` (104 questions), test on ``mediqa2019_validation.jsonl`` (25 questions; reference_score
1-4, system_rank). Results are appended to ``experiments/rerank/results.jsonl`` with the command, machine and time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("MEDLAB_SHARED_DATA", ROOT.parent / "shared" / "data"))
WORK = ROOT / "outputs" / "rerank_ablation"
RESULTS = Path(__file__).resolve().parent / "results.jsonl"
PY = sys.executable

DATASETS = {
    "liveqa": {"train": WORK / "data" / "liveqa_train.jsonl", "test": WORK / "data" / "liveqa_test.jsonl",
               "overrides": ["data=liveqa_rerank"]},
    "mediqa": {"train": SHARED / "rerank" / "mediqa2019_train_liveqa.jsonl",
               "test": SHARED / "rerank" / "mediqa2019_validation.jsonl", "overrides": ["data=mediqa_rerank"]},
}
# name -> overrides on top of +experiment=reranker (whose defaults are the winning recipe)
PRE_ISSUE = ["objective.prior=none", "data.pair_sides=false", "objective.loss=bce", "data.list_size=null",
             "data.batch_size=16", "objective.lr_multipliers=null",
             "objective.lr=5e-5", "trainer.max_epochs=1"]
VARIANTS = {
    "default": [],  # the current +experiment=reranker: frozen cosine, head at 50x lr (= cosine_frozen_head50)
    # the default before the MedQuAD rows (its rows were measured as "default" with no overrides)
    "shared_trainable": ["objective.prior_trainable=true", "objective.lr_multipliers=null"],
    "bce_head": PRE_ISSUE,  # the recipe before issue 16: a new random head, BCE on label = judgment >= 3
    "bce_head_3ep": PRE_ISSUE[:-1] + ["trainer.max_epochs=3"],
    "cosine_bce": ["objective.loss=bce", "data.list_size=null", "data.batch_size=16"],
    "cosine_bce_graded": ["objective.loss=bce", "data.list_size=null", "data.batch_size=16", "data.graded_labels=true"],
    "cosine_frozen": ["objective.prior_trainable=false", "objective.lr_multipliers=null"],
    # the zero-initialised correction head at 50x the encoder's lr (at 2e-5 it barely moves next to 20 * cos)
    "cosine_frozen_head50": ["objective.prior_trainable=false", "objective.lr_multipliers={classifier:50}"],
    "default_head50": ["objective.lr_multipliers={classifier:50}"],
    "cosine_learn_scale": ["objective.prior_learn_scale=true"],
    "cosine_only": ["objective.residual=false", "objective.prior_trainable=true", "objective.lr_multipliers=null"],  # the bi-encoder branch alone, fine-tuned (no joint encoding)
    "listnet_head": ["objective.prior=none", "data.pair_sides=false", "objective.lr_multipliers=null"],  # graded listwise, random head
    "default_lr5e-5": ["objective.lr=5e-5"],
    "default_2ep": ["trainer.max_epochs=2"],
    # approach (c): the reranker starts from a bi-encoder pre-trained in-domain on MedQuAD question -> answer pairs
    # (PRETRAIN below, run once and cached); its cosine is the prior, the correction learns on the judgments
    "medquad_frozen_head50": ["objective.prior_trainable=false", "objective.lr_multipliers={classifier:50}"],
    "medquad_frozen": ["objective.prior_trainable=false", "objective.lr_multipliers=null"],
    "medquad_shared_trainable": ["objective.prior_trainable=true", "objective.lr_multipliers=null"],
}
# variant -> the pre-training run whose export is the reranker's starting model (model.source=hf model.path=...)
VARIANT_PRETRAIN = {"medquad_frozen_head50": "medquad", "medquad_frozen": "medquad",
                    "medquad_shared_trainable": "medquad"}
# InfoNCE bi-encoder on the 2,500 MedQuAD question -> answer pairs (10% of the questions held out for its own
# validation), one epoch of 32-pair batches: ~12 minutes of 2-core CPU. No judgment of either test file is used.
PRETRAIN = {
    # = +experiment=biencoder data=retrieval data.path=.../medquad_train.jsonl trainer.max_steps=70 (how the cached
    # run of the committed rows was started)
    "medquad": ["+experiment=biencoder_medquad"],
}


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except Exception:  # noqa: BLE001
        model = platform.processor() or "unknown"
    return f"{model}, {os.cpu_count()} cores"


def prepare() -> None:
    """The LiveQA-MedQuAD question split (written once)."""
    sys.path.insert(0, str(ROOT))
    from medlab.data.split import hold_out

    d = DATASETS["liveqa"]
    if d["train"].exists() and d["test"].exists():
        return
    rows = [json.loads(line) for line in (SHARED / "rerank" / "liveqa_medquad_train.jsonl").open()]
    train, test = hold_out([r["qid"] for r in rows], 16, 0)
    d["train"].parent.mkdir(parents=True, exist_ok=True)
    for path, idx in ((d["train"], train), (d["test"], test)):
        path.write_text("".join(json.dumps(rows[i]) + "\n" for i in sorted(idx)))


def pretrained(name: str, threads: int) -> Path:
    """The export of pre-training run ``name`` (PRETRAIN), trained once into ``WORK/pretrain/<name>``."""
    run_dir = WORK / "pretrain" / name
    export = run_dir / "export"
    if not (export / "config.json").exists():
        cmd = [PY, "-m", "medlab", *PRETRAIN[name], f"trainer.cpu_threads={threads}", "trainer.progress_bar=false",
               f"hydra.run.dir={run_dir}", f"name=rerank_pretrain_{name}"]
        subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": str(threads)}, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return export


def zero_shot_cosine(dataset: str, eval_max_length: int) -> dict:
    """The latest ``--baselines-only`` row of ``dataset`` (the zero-shot MiniLM cosine on the held-out questions)."""
    path = RESULTS.parent / "baselines.jsonl"
    rows = [json.loads(line) for line in path.open()] if path.exists() else []
    rows = [r for r in rows if r["dataset"] == dataset and r["eval_max_length"] == eval_max_length]
    return {k: v for k, v in rows[-1].items() if k.startswith("cosine/")} if rows else {}


def run(dataset: str, variant: str, val_every: int, threads: int, train_max_length: int | None,
        eval_max_length: int) -> dict:
    d = DATASETS[dataset]
    start = VARIANT_PRETRAIN.get(variant)
    start_model = ["model.source=hf", f"model.path={pretrained(start, threads)}"] if start else []
    run_dir = WORK / "runs" / f"{dataset}_{variant}_{time.strftime('%m%d-%H%M%S')}"
    train = [PY, "-m", "medlab", "+experiment=reranker", *d["overrides"], f"data.path={d['train']}",
             f"data.val_path={d['test']}", *start_model, *VARIANTS[variant], f"trainer.val_every_n_steps={val_every}",
             *([f"data.max_length={train_max_length}"] if train_max_length else []),
             "trainer.ckpt_every_n_steps=100000", "trainer.progress_bar=false", "logger=csv",
             f"trainer.cpu_threads={threads}", f"hydra.run.dir={run_dir}", f"name=rerank_{dataset}_{variant}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.time()
    subprocess.run(train, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    train_s = time.time() - t0
    ev = [PY, "-m", "medlab.evaluate", f"run_dir={run_dir}", f"eval.path={d['test']}", "eval.checkpoint=latest",
          f"eval.max_length={eval_max_length}", f"eval.out={run_dir}/test_metrics.json"]
    subprocess.run(ev, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = json.loads((run_dir / "test_metrics.json").read_text())
    row = {"dataset": dataset, "variant": variant, "overrides": VARIANTS[variant], "train_seconds": round(train_s),
           "train_max_length": train_max_length, "eval_max_length": eval_max_length,
           "run_dir": str(run_dir.relative_to(ROOT)), "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"),
           "command": " ".join(Path(a).name if a == PY else str(a) for a in train),
           "curve": curve(run_dir), **{k: v for k, v in metrics.items() if "@" in k}}
    if start:  # evaluate's cosine/* is the starting (pre-trained) encoder's; the bar is the zero-shot one
        row.update({"pretrain": start, "pretrain_command": PRETRAIN[start],
                    **{f"start_{k}": v for k, v in metrics.items() if k.startswith("cosine/")},
                    **zero_shot_cosine(dataset, eval_max_length)})
    with RESULTS.open("a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def baselines(dataset: str, max_length: int, threads: int) -> dict:
    """The bar alone (no training): the zero-shot MiniLM cosine and, where the file has one, the retriever's original
    order on the held-out questions (medlab.evaluation.retrieval.rerank_baselines, what evaluate prints)."""
    sys.path.insert(0, str(ROOT))
    import torch

    import medlab
    from medlab.evaluation.retrieval import load_embedder, rerank_baselines, retrieval_data

    torch.set_num_threads(threads)
    d = DATASETS[dataset]
    cfg = medlab.compose("reranker", d["overrides"], run_dir=str(WORK / "baselines"))
    data = retrieval_data(cfg, {"path": str(d["test"]), "max_length": max_length}, "rerank")
    embedder = load_embedder(cfg)
    from transformers import AutoTokenizer

    from medlab.models.backbone import minilm_dir

    data.setup(AutoTokenizer.from_pretrained(str(minilm_dir())))
    t0 = time.time()
    with torch.no_grad():
        out = rerank_baselines(data, embedder, batch_size=32)
    row = {"dataset": dataset, "variant": "baselines only", "eval_max_length": max_length, "machine": machine(),
           "date": time.strftime("%Y-%m-%d %H:%M"), "seconds": round(time.time() - t0), **out}
    with (RESULTS.parent / "baselines.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def curve(run_dir: Path) -> list[tuple[int, float]]:
    """(step, val/ndcg@10) points of the run's csv log (validation = the held-out questions)."""
    import csv

    points = []
    for path in sorted(run_dir.rglob("metrics.csv")):
        for rec in csv.DictReader(path.open()):
            if rec.get("val/ndcg@10"):
                points.append((int(float(rec["step"])), round(float(rec["val/ndcg@10"]), 4)))
    return points


def table() -> str:
    rows = [json.loads(line) for line in RESULTS.open()] if RESULTS.exists() else []
    head = ("| dataset | variant | starts from | overrides on `+experiment=reranker` | NDCG@10 | zero-shot cosine NDCG@10 | "
            "Δ vs cosine | starting encoder's cosine NDCG@10 | MRR@10 (cosine) | original order NDCG@10 | train s | machine |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        orig, start = r.get("original_order/ndcg@10"), r.get("start_cosine/ndcg@10")
        lines.append(f"| {r['dataset']} | {r['variant']} | {r.get('pretrain') or 'MiniLM'} | "
                     f"`{' '.join(r['overrides']) or '(defaults)'}` | "
                     f"{r['ndcg@10']:.4f} | {r['cosine/ndcg@10']:.4f} | {r['ndcg@10'] - r['cosine/ndcg@10']:+.4f} | "
                     f"{'' if start is None else f'{start:.4f}'} | "
                     f"{r['mrr@10']:.3f} ({r['cosine/mrr@10']:.3f}) | {'' if orig is None else f'{orig:.4f}'} | "
                     f"{r['train_seconds']} | {r['machine']} |")
    curves = ["| dataset | variant | val/ndcg@10 on the held-out questions by step |", "|---|---|---|"]
    for r in rows:
        curves.append(f"| {r['dataset']} | {r['variant']} | " + ", ".join(f"{s}: {v:.3f}" for s, v in r["curve"]) + " |")
    return "\n".join(lines) + "\n\nLearning curves:\n\n" + "\n".join(curves)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", action="append", choices=sorted(DATASETS))
    p.add_argument("--variant", action="append", choices=sorted(VARIANTS))
    p.add_argument("--val-every", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--train-max-length", type=int, default=None,
                   help="data.max_length while training (default: the data config's, 256); cheaper runs")
    p.add_argument("--eval-max-length", type=int, default=256,
                   help="the held-out evaluation's max length, reranker and cosine baseline alike (MiniLM's 256)")
    p.add_argument("--table", action="store_true")
    p.add_argument("--baselines-only", action="store_true", help="the cosine / original-order bar of each dataset")
    p.add_argument("--list", action="store_true")
    a = p.parse_args()
    if a.list:
        for name, ov in VARIANTS.items():
            print(f"{name:20s} {' '.join(ov) or '(the +experiment=reranker defaults)'}")
        return
    if a.table:
        print(table())
        return
    prepare()
    if a.baselines_only:
        for dataset in a.dataset or sorted(DATASETS):
            print(json.dumps(baselines(dataset, a.eval_max_length, a.threads)), flush=True)
        return
    for dataset in a.dataset or sorted(DATASETS):
        for variant in a.variant or ["default", "bce_head"]:
            row = run(dataset, variant, a.val_every, a.threads, a.train_max_length, a.eval_max_length)
            print(json.dumps({k: row[k] for k in ("dataset", "variant", "ndcg@10", "cosine/ndcg@10", "train_seconds")}),
                  flush=True)


if __name__ == "__main__":
    main()
