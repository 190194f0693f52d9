#!/usr/bin/env python
"""Reward models on medical judgment pairs (``../shared/data/rerank/``), held out by question: held-out pairwise
accuracy before and after training, next to the zero-shot bi-encoder cosine on the same pairs.

    nice -n 10 .venv/bin/python experiments/preference/reward_models.py --models minilm_prior --steps 200

1. Two held-out sets, never trained on and never used to choose anything:
   ``liveqa_heldout``: 20% of the LiveQA-MedQuAD questions (``medlab.data.split.hold_out`` by qid, seed 0: 13
   questions), and ``mediqa_validation``: all of ``mediqa2019_validation.jsonl`` (25 questions).
2. Training pool (``--train-sources``): the other LiveQA-MedQuAD questions, ``mediqa2019_train_alexa.jsonl`` and
   ``mediqa2019_train_liveqa.jsonl``. Leak check (printed, in ``OUT/results.json``): every training question whose
   normalized text (lower case, letters and digits only) equals a held-out question's, or is near-identical to it
   (difflib ratio >= 0.9), is dropped with all its answers. MEDIQA's ``reference_score`` (1-4) is the judgment;
   qids are prefixed with their source (``OUT/*.jsonl`` rows: ``qid, question, answer, judgment, source``).
3. Checkpoint selection: a dev split of 10% of the *training* questions (by normalized question text, so one
   question asked in two sources lands on one side; seed 0) is the run's ``data.val_path``; ``val/accuracy`` on it
   picks the "best" checkpoint. Each held-out set is reported for that checkpoint and for the last one.
4. Pairs = every higher-vs-lower answer of one question (``data=rerank_preference``), at most
   ``--pairs-per-question`` per question (largest judgment gaps first), in training, dev and held-out alike.
5. Zero-shot cosine: all-MiniLM-L6-v2 mean-pooled, normalized embeddings (same ``--max-length``); a pair is right
   when cos(question, chosen) > cos(question, rejected). Ties count as wrong everywhere.
6. Each model: ``python -m medlab.evaluate`` of the untrained model (``run_dir=none``) on each held-out set, then
   ``+experiment=reward_model`` trained on the pool, then evaluated (dev-best and last checkpoint). Rows of the
   table: ``OUT/results.json`` and ``experiments/preference/README.md``.
7. ``--paired RUN_DIR...`` (no training): each run's dev-best checkpoint against the cosine pair by pair on the
   held-out files of ``--out``: pairs only one of them gets right, and the exact sign test on those.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
RERANK = ROOT.parent / "shared/data/rerank"

MODELS = {  # name -> training overrides
    "minilm": ["model=minilm", "adapter=none", "objective.lr=5e-5"],
    # the reward starts as the zero-shot cosine (objective.prior=cosine, head at zero, frozen cosine) and the head
    # learns the correction at 50x the lr (the reranker's recipe, experiments/rerank)
    "minilm_prior": ["model=minilm", "adapter=none", "objective.prior=cosine", "data.pair_sides=true",
                     "objective.prior_trainable=false", "objective.lr=2e-5", "objective.lr_multipliers={classifier:50}",
                     "data.min_prompt_length=48"],  # the joint encoding keeps >= 48 question tokens
    # the cosine branch fine-tuned too (shared backbone) at a small lr
    "minilm_prior_trainable": ["model=minilm", "adapter=none", "objective.prior=cosine", "data.pair_sides=true",
                               "objective.prior_trainable=true", "objective.lr=1e-5",
                               "objective.lr_multipliers={classifier:50}", "data.min_prompt_length=48"],
    # the same at the lr sentence-transformers fine-tunes this bi-encoder with (2e-5; the cosine enters at scale 20
    # as in its MultipleNegativesRankingLoss)
    "minilm_prior_trainable_2e5": ["model=minilm", "adapter=none", "objective.prior=cosine", "data.pair_sides=true",
                                   "objective.prior_trainable=true", "objective.lr=2e-5",
                                   "objective.lr_multipliers={classifier:50}", "data.min_prompt_length=48"],
    # the same from the MiniLM bi-encoder pre-trained in-domain on MedQuAD question -> answer pairs
    # (experiments/rerank/ablate.py PRETRAIN["medquad"]; run it first: its export is the starting model)
    "minilm_prior_medquad": ["model=minilm", "model.source=hf",
                             f"model.path={ROOT / 'outputs/rerank_ablation/pretrain/medquad/export'}", "adapter=none",
                             "objective.prior=cosine", "data.pair_sides=true", "objective.prior_trainable=false",
                             "objective.lr=2e-5", "objective.lr_multipliers={classifier:50}",
                             "data.min_prompt_length=48"],
    "smollm2_lora": ["model=smollm2_135m", "adapter=lora", "adapter.r=8", "adapter.alpha=16", "objective.lr=5e-4"],
}
# source -> (file, score column); every file has qid, question, answer
SOURCES = {"liveqa": ("liveqa_medquad_train.jsonl", "judgment"),
           "mediqa_alexa": ("mediqa2019_train_alexa.jsonl", "reference_score"),
           "mediqa_liveqa": ("mediqa2019_train_liveqa.jsonl", "reference_score"),
           "mediqa_validation": ("mediqa2019_validation.jsonl", "reference_score")}
NEAR = 0.9  # difflib ratio of two normalized questions at or above which they count as the same question


def normalize(question: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", question.lower()).split())


def read_source(name: str, root: Path = RERANK) -> list[dict]:
    """One judgments file as rows ``{qid: "source:qid", question, answer, judgment, source}``."""
    file, score = SOURCES[name]
    rows = []
    for i, line in enumerate((root / file).read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        r = json.loads(line)
        missing = [k for k in ("qid", "question", "answer", score) if r.get(k) in (None, "")]
        if missing:
            raise SystemExit(f"{root / file} row {i}: missing {', '.join(missing)}")
        rows.append({"qid": f"{name}:{r['qid']}", "question": r["question"], "answer": r["answer"],
                     "judgment": r[score], "source": name})
    return rows


def leaks(train_questions: set[str], held_questions: set[str]) -> dict[str, str]:
    """Normalized training question -> the held-out question it matches (equal, or difflib ratio >= NEAR)."""
    out = {}
    for q in train_questions:
        if q in held_questions:
            out[q] = q
            continue
        for h in held_questions:
            m = difflib.SequenceMatcher(None, q, h, autojunk=False)
            if m.real_quick_ratio() >= NEAR and m.quick_ratio() >= NEAR and m.ratio() >= NEAR:
                out[q] = h
                break
    return out


def split_by_question(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(kept, held out): ``fraction`` of the distinct normalized questions held out with all their rows."""
    from medlab.data.split import held_out_count, hold_out

    canonical: dict[str, str] = {}  # near-identical questions share one key (the first seen)
    for q in dict.fromkeys(normalize(r["question"]) for r in rows):
        canonical[q] = next(iter(leaks({q}, set(canonical.values())).values()), q)
    keys = [canonical[normalize(r["question"])] for r in rows]
    keep, held = hold_out(keys, held_out_count(len(set(keys)), fraction), seed)
    return [rows[i] for i in keep], [rows[i] for i in held]


def build(out: Path, train_sources: list[str], seed: int = 0) -> dict:
    """Write OUT/{train,dev,liveqa_heldout,mediqa_validation}.jsonl; the counts and the leak check."""
    from medlab.data.split import held_out_count, hold_out

    liveqa = read_source("liveqa")
    qids = [r["qid"] for r in liveqa]
    keep, held = hold_out(qids, held_out_count(len(set(qids)), 0.2), seed)  # the split of the older rows
    heldout = {"liveqa_heldout": [liveqa[i] for i in held], "mediqa_validation": read_source("mediqa_validation")}
    held_questions = {normalize(r["question"]) for rows in heldout.values() for r in rows}
    report: dict = {"heldout": {k: {"questions": len({r["qid"] for r in v}), "answers": len(v)}
                                for k, v in heldout.items()}, "train_sources": {}}
    pool = []
    for name in train_sources:
        rows = [liveqa[i] for i in keep] if name == "liveqa" else read_source(name)
        questions = {normalize(r["question"]) for r in rows}
        leaked = leaks(questions, held_questions)
        kept = [r for r in rows if normalize(r["question"]) not in leaked]
        report["train_sources"][name] = {"questions": len(questions), "leaked_questions_dropped": len(leaked),
                                         "exact": sum(k == v for k, v in leaked.items()),
                                         "near": sum(k != v for k, v in leaked.items()),
                                         "rows_kept": len(kept), "rows_dropped": len(rows) - len(kept)}
        print(f"leak check {name}: {len(questions)} questions, {len(leaked)} match a held-out question "
              f"({report['train_sources'][name]['exact']} exact, {report['train_sources'][name]['near']} near) "
              f"-> dropped with their {len(rows) - len(kept)} answers", flush=True)
        pool += kept
    train, dev = split_by_question(pool, 0.1, seed)
    assert not ({normalize(r["question"]) for r in train + dev} & held_questions)
    assert not leaks({normalize(r["question"]) for r in train}, {normalize(r["question"]) for r in dev})
    files = {"train": train, "dev": dev, **heldout}
    for name, rows in files.items():
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                           encoding="utf-8")
    report["files"] = {k: {"questions": len({r["qid"] for r in v}), "answers": len(v)} for k, v in files.items()}
    held_answers = {r["answer"] for rows in heldout.values() for r in rows}
    report["heldout_answers_also_in_train"] = len(held_answers & {r["answer"] for r in train})
    return report


def pairs_of(path: Path, cap: int) -> list[tuple[str, str, str]]:
    """(question, chosen, rejected) texts, exactly the pairs PreferenceData makes from the file."""
    from medlab.data.preference_rows import judged_row, judgment_pairs

    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        rows.append(judged_row({"prompt": r["question"], "doc": r["answer"], "score": r["judgment"],
                                "group": r["qid"]}))
    pairs, _ = judgment_pairs(rows, max_pairs_per_group=cap)
    return [(p["prompt"][-1]["content"], p["chosen"][-1]["content"], p["rejected"][-1]["content"]) for p in pairs]


def cosine_accuracy(pairs: list[tuple[str, str, str]], max_length: int) -> float:
    right = cosine_right(pairs, max_length)
    return sum(right) / len(right)


def cosine_right(pairs: list[tuple[str, str, str]], max_length: int) -> list[bool]:
    """Per pair: does the zero-shot cosine rank the chosen answer first?"""
    import torch
    from hydra.utils import instantiate

    from medlab.config.compose import compose
    from medlab.retrieval.pooling import embed

    model, tok = instantiate(compose(overrides=["model=minilm"]).model)(head="embed")
    model.eval()
    texts = list(dict.fromkeys(t for p in pairs for t in p))
    vecs = {}
    with torch.no_grad():
        for i in range(0, len(texts), 32):
            chunk = texts[i:i + 32]
            enc = tok(chunk, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            for t, v in zip(chunk, embed(hidden, enc["attention_mask"], "mean", normalize=True)):
                vecs[t] = v
    return [float(vecs[q] @ vecs[c]) > float(vecs[q] @ vecs[r]) for q, c, r in pairs]


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided sign test (McNemar's exact test) on the discordant pairs."""
    from math import comb

    n = wins + losses
    tail = sum(comb(n, k) for k in range(min(wins, losses) + 1)) / 2 ** n if n else 1.0
    return min(1.0, 2 * tail)


def paired_with_cosine(run_dir: Path, path: Path, cap: int, max_length: int, checkpoint: str = "best") -> dict:
    """Pair by pair, the run's reward model (its ``checkpoint``) against the zero-shot cosine on ``path``: pairs
    only the reward model gets right (wins), only the cosine gets right (losses), and the sign test's p."""
    from medlab.evaluation.preference import PairBatches, preference_data, reward_pairs
    from medlab.evaluation.runs import load_run

    pairs = pairs_of(path, cap)
    cfg, module, choice = load_run(str(run_dir), checkpoint=checkpoint)
    data = preference_data(cfg, {"path": str(path), "batch_size": 16})
    data.setup(module.tokenizer)
    tok = module.tokenizer  # the file's pairs in the same order as pairs_of: checked on every answer's own encoding
    assert len(data.train_dataset) == len(pairs)
    def text(ids: list[int]) -> str:
        return tok.decode(ids[:64], skip_special_tokens=True)[:200]

    assert all(text(e["chosen_side"]) == text(tok(c, add_special_tokens=False)["input_ids"])
               and text(e["rejected_side"]) == text(tok(r, add_special_tokens=False)["input_ids"])
               for e, (_, c, r) in zip(data.train_dataset, pairs)), "the pairs are not in the same order"
    chosen, rejected = reward_pairs(module, PairBatches(data, 16))
    rm = (chosen - rejected > 0).tolist()
    cos = cosine_right(pairs, max_length)
    wins, losses = sum(a and not b for a, b in zip(rm, cos)), sum(b and not a for a, b in zip(rm, cos))
    return {"checkpoint": str(choice), "n_pairs": len(pairs), "rm_accuracy": sum(rm) / len(rm),
            "cosine_accuracy": sum(cos) / len(cos), "rm_only_right": wins, "cosine_only_right": losses,
            "sign_test_p": sign_test(wins, losses)}


def medlab(module: str, args: list[str], log: Path) -> None:
    with log.open("w") as f:
        rc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, stdout=f,
                            stderr=subprocess.STDOUT).returncode
    if rc:
        raise SystemExit(f"{module} {' '.join(args)} failed (rc {rc}): see {log}")


def evaluate(run_dir: str, path: Path, out: Path, tag: str, extra: list[str]) -> dict:
    metrics_path = out / f"eval_{tag}_{path.stem}.json"
    medlab("medlab.evaluate", [f"run_dir={run_dir}", f"eval.path={path}", f"eval.out={metrics_path}",
                               "eval.batch_size=16", *extra], out / f"eval_{tag}_{path.stem}.log")
    m = json.loads(metrics_path.read_text())
    return {"accuracy": m["pairwise_accuracy"], "n_pairs": m["n_pairs"], "mean_margin": m["mean_margin"],
            "checkpoint": m.get("checkpoint_note") or m.get("checkpoint_selected_by"), "weights": m.get("weights")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["minilm_prior"], choices=list(MODELS))
    ap.add_argument("--train-sources", nargs="+", default=["liveqa", "mediqa_alexa", "mediqa_liveqa"],
                    choices=["liveqa", "mediqa_alexa", "mediqa_liveqa"])
    ap.add_argument("--out", default=str(ROOT / "outputs/experiments/preference_pool"))
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--evals", type=int, default=4, help="dev evaluations (and checkpoints) during training")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--pairs-per-question", type=int, default=12)
    ap.add_argument("--seed", type=int, default=42, help="trainer.seed (data order, dropout); the splits keep seed 0")
    ap.add_argument("--skip-untrained", action="store_true", help="no evaluation before training (the untrained "
                                                                   "model's numbers do not depend on --steps)")
    ap.add_argument("--prepare-only", action="store_true", help="write the splits, print the leak check and the "
                                                                 "cosine baseline, train nothing")
    ap.add_argument("--paired", nargs="+", metavar="RUN_DIR", help="no training: each run's dev-best checkpoint "
                    "against the cosine, pair by pair, on the held-out files of --out (sign test)")
    args = ap.parse_args()
    out = Path(args.out)
    if args.paired:
        for run_dir in args.paired:
            for name in ("liveqa_heldout", "mediqa_validation"):
                res = paired_with_cosine(Path(run_dir), out / f"{name}.jsonl", args.pairs_per_question,
                                         args.max_length)
                print(run_dir, name, json.dumps(res), flush=True)
        return
    out.mkdir(parents=True, exist_ok=True)
    results = {"settings": vars(args), "data": build(out, args.train_sources)}
    heldout = {name: out / f"{name}.jsonl" for name in ("liveqa_heldout", "mediqa_validation")}
    cap = args.pairs_per_question
    results["pairs"] = {name: len(pairs_of(out / f"{name}.jsonl", cap))
                        for name in ("train", "dev", *heldout)}
    print("data:", json.dumps(results["data"]["files"]), "pairs:", json.dumps(results["pairs"]), flush=True)
    results["cosine_minilm"] = {}
    for name, path in {"dev": out / "dev.jsonl", **heldout}.items():
        results["cosine_minilm"][name] = cosine_accuracy(pairs_of(path, cap), args.max_length)
        print(f"zero-shot MiniLM cosine on {name}: {results['cosine_minilm'][name]:.4f} "
              f"({results['pairs'][name]} pairs)", flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    if args.prepare_only:
        return
    every = max(args.steps // args.evals, 1)
    data = ["data=rerank_preference", f"data.path={out / 'train.jsonl'}", f"data.val_path={out / 'dev.jsonl'}",
            f"data.max_length={args.max_length}", f"data.batch_size={args.batch_size}", "data.val_batch_size=16",
            f"data.max_pairs_per_group={cap}"]
    for name in args.models:
        t0 = time.time()
        over = [*MODELS[name], *data]
        row: dict = {"before": {}, "after_dev_best": {}, "after_last": {}}
        for h, path in ({} if args.skip_untrained else heldout).items():
            row["before"][h] = evaluate("none", path, out, f"{name}_untrained",
                                        ["+experiment=reward_model", *over,
                                         f"hydra.run.dir={out / (name + '_untrained')}"])
        run_dir = out / f"{name}_run"
        t_train = time.time()
        medlab("medlab", ["+experiment=reward_model", *over, f"trainer.max_steps={args.steps}",
                          f"trainer.seed={args.seed}",
                          f"trainer.val_every_n_steps={every}", f"trainer.ckpt_every_n_steps={every}",
                          f"trainer.keep_last_k={args.evals + 1}", "trainer.progress_bar=false",
                          "export.enabled=false", "logger=csv", f"hydra.run.dir={run_dir}"], out / f"{name}_train.log")
        row["train_minutes"] = round((time.time() - t_train) / 60, 1)
        for h, path in heldout.items():
            row["after_dev_best"][h] = evaluate(str(run_dir), path, out, f"{name}_best", ["eval.checkpoint=best"])
            latest = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
            same = (ROOT / row["after_dev_best"][h]["weights"]).resolve() == latest.resolve()
            row["after_last"][h] = (row["after_dev_best"][h] if same
                                    else evaluate(str(run_dir), path, out, f"{name}_last", ["eval.checkpoint=latest"]))
        row["minutes"] = round((time.time() - t0) / 60, 1)
        results[name] = row
        for h in heldout:
            before = f"{row['before'][h]['accuracy']:.3f}" if h in row["before"] else "not run"
            print(f"{name} {h}: cosine {results['cosine_minilm'][h]:.3f}, before {before}, "
                  f"after (dev-best: {row['after_dev_best'][h]['checkpoint']}) "
                  f"{row['after_dev_best'][h]['accuracy']:.3f}, after (last) {row['after_last'][h]['accuracy']:.3f}, "
                  f"{row['after_last'][h]['n_pairs']} pairs", flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
