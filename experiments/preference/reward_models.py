#!/usr/bin/env python
"""Reward models on medical judgment pairs (LiveQA-MedQuAD, ``../shared/data/rerank/``), held out by question:
held-out pairwise accuracy before and after training, next to the zero-shot bi-encoder cosine on the same pairs.

    nice -n 10 .venv/bin/python experiments/preference/reward_models.py --models minilm smollm2_lora --steps 60

1. The judgments are split by question id (``medlab.data.split.hold_out``, seed 0, 20% of the questions held out)
   into ``OUT/train.jsonl`` / ``OUT/val.jsonl``. Pairs = every higher-vs-lower answer of one question
   (``data=rerank_preference``), at most ``--pairs-per-question`` per question (largest judgment gaps first),
   in training and in the held-out evaluation alike.
2. Zero-shot cosine: all-MiniLM-L6-v2 mean-pooled, normalized embeddings; a pair is right when
   cos(question, chosen) > cos(question, rejected).
3. Each model: ``python -m medlab.evaluate`` of the untrained model (``run_dir=none``, random score head), then
   ``+experiment=reward_model`` trained on the train questions, then evaluated (its best checkpoint by
   ``val/accuracy``) on the held-out pairs. Rows of the table: ``OUT/results.json`` and the README.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

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
    # the same from the MiniLM bi-encoder pre-trained in-domain on MedQuAD question -> answer pairs
    # (experiments/rerank/ablate.py PRETRAIN["medquad"]; run it first: its export is the starting model)
    "minilm_prior_medquad": ["model=minilm", "model.source=hf",
                             f"model.path={ROOT / 'outputs/rerank_ablation/pretrain/medquad/export'}", "adapter=none",
                             "objective.prior=cosine", "data.pair_sides=true", "objective.prior_trainable=false",
                             "objective.lr=2e-5", "objective.lr_multipliers={classifier:50}",
                             "data.min_prompt_length=48"],
    "smollm2_lora": ["model=smollm2_135m", "adapter=lora", "adapter.r=8", "adapter.alpha=16", "objective.lr=5e-4"],
}


def split(src: Path, out: Path, val_fraction: float, seed: int) -> tuple[Path, Path]:
    from medlab.data.split import held_out_count, hold_out

    rows = [json.loads(line) for line in src.read_text(encoding="utf-8").splitlines() if line.strip()]
    groups = [str(r["qid"]) for r in rows]
    n_val = held_out_count(len(set(groups)), val_fraction)
    train, val = hold_out(groups, n_val, seed)
    paths = []
    for name, idx in (("train", train), ("val", val)):
        path = out / f"{name}.jsonl"
        path.write_text("".join(json.dumps(rows[i], ensure_ascii=False) + "\n" for i in idx), encoding="utf-8")
        paths.append(path)
    return paths[0], paths[1]


def val_pairs(path: Path, cap: int) -> list[tuple[str, str, str]]:
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
    right = [float(vecs[q] @ vecs[c]) > float(vecs[q] @ vecs[r]) for q, c, r in pairs]
    return sum(right) / len(right)


def medlab(module: str, args: list[str], log: Path) -> None:
    with log.open("w") as f:
        rc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc:
        raise SystemExit(f"{module} {' '.join(args)} failed (rc {rc}): see {log}")


def evaluate(run_dir: str, val: Path, out: Path, extra: list[str]) -> dict:
    metrics_path = out / f"eval_{abs(hash((run_dir, *extra)))}.json"
    medlab("medlab.evaluate", [f"run_dir={run_dir}", f"eval.path={val}", f"eval.out={metrics_path}",
                               "eval.batch_size=16", *extra], out / "eval.log")
    return json.loads(metrics_path.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--src", default=str(ROOT.parent / "shared/data/rerank/liveqa_medquad_train.jsonl"))
    ap.add_argument("--out", default=str(ROOT / "outputs/experiments/preference"))
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=160)
    ap.add_argument("--pairs-per-question", type=int, default=16)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, val = split(Path(args.src), out, 0.2, 0)
    pairs = val_pairs(val, args.pairs_per_question)
    results = {"src": args.src, "val_questions": len({json.loads(x)["qid"] for x in val.read_text().splitlines()}),
               "val_pairs": len(pairs), "settings": vars(args)}
    t0 = time.time()
    results["cosine_minilm"] = cosine_accuracy(pairs, args.max_length)
    print(f"zero-shot MiniLM cosine: {results['cosine_minilm']:.4f} on {len(pairs)} held-out pairs", flush=True)
    data = ["data=rerank_preference", f"data.path={train}", f"data.val_path={val}",
            f"data.max_length={args.max_length}", f"data.batch_size={args.batch_size}", "data.val_batch_size=16",
            f"data.max_pairs_per_group={args.pairs_per_question}"]
    for name in args.models:
        over = [*MODELS[name], *data]
        before = evaluate("none", val, out, ["+experiment=reward_model", *over,
                                             f"hydra.run.dir={out / (name + '_untrained')}"])
        run_dir = out / f"{name}_run"
        medlab("medlab", ["+experiment=reward_model", *over,
                          f"trainer.max_steps={args.steps}", f"trainer.val_every_n_steps={max(args.steps // 3, 1)}",
                          f"trainer.ckpt_every_n_steps={max(args.steps // 3, 1)}", "trainer.progress_bar=false",
                          "export.enabled=false", "logger=csv", f"hydra.run.dir={run_dir}"], out / f"{name}_train.log")
        after = evaluate(str(run_dir), val, out, [])
        results[name] = {"before": before["pairwise_accuracy"], "after": after["pairwise_accuracy"],
                         "n_pairs": after["n_pairs"], "mean_margin_after": after["mean_margin"],
                         "checkpoint": after.get("checkpoint_note"), "minutes": round((time.time() - t0) / 60, 1)}
        print(name, json.dumps(results[name]), flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
