"""Loglik multiple-choice scoring speed: medlab (`eval.mode=loglik`) vs lm-evaluation-harness's HF backend.

    .venv/bin/python experiments/bench/qa_loglik_vs_lmeval.py                 # SmolLM2-135M, 100 questions/file
    .venv/bin/python experiments/bench/qa_loglik_vs_lmeval.py --n 40 --batch-size 8 --fewshot 3
    .venv/bin/python experiments/bench/qa_loglik_vs_lmeval.py --n 50 --repeats 3   # alternating, medians

Held equal: the same SmolLM2-135M-Instruct weights (one model object, fp32, CPU, sdpa), the same tokenizer, the
same questions (the first N of each shared file: PubMedQA with abstracts, MedQA-USMLE A-E, CMMLU medical) and the
same requests: medlab's prompts (`medlab.evaluation.mcq`, the harness's task formats) as (context, " choice")
pairs, handed to `HFLM.loglikelihood` as `Instance`s and to `medlab.evaluation.loglik.option_logliks`; the same
batch size. Timed: the scoring call only (tokenization included on both sides), one warm-up batch first;
`--repeats R` times each side R times, alternating which goes first, and reports the median times (the
machine is shared: the per-repeat speedups show the spread). The
per-request log-likelihoods are compared (max |delta|) and both sides' accuracies printed. `--fewshot K` prepends
K first_n examples from the same file (the CMMLU setting), where medlab encodes the shared block once per batch.

Prints one markdown table (append it to experiments/bench/RESULTS.md with the machine line printed above it).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data" / "qa"
FILES = {"pubmedqa": SHARED / "pubmedqa_train.jsonl", "medqa": SHARED / "medqa_usmle_train.jsonl",
         "cmmlu": SHARED / "cmmlu_medical_train.jsonl"}


def load_rows(path: Path, n: int, skip: int = 0) -> list[dict]:
    from medlab.data.readers import read_located
    from medlab.rl.data import PromptData

    records = read_located(path, limit=n + skip).dataset.to_list()
    return PromptData(None).rows_from_records(records[skip:], str(path))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--fewshot", type=int, default=0)
    ap.add_argument("--datasets", default="pubmedqa,medqa,cmmlu")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per side, alternating; medians reported")
    args = ap.parse_args()

    import torch
    import lm_eval
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    import medlab
    from medlab.evaluation.loglik import option_logliks
    from medlab.evaluation.mcq import FewShot, build_items, prompt_style
    from medlab.evaluation.qa_loglik import score_items
    from medlab.evaluation.loglik import OptionScore
    from medlab.models.build import build_model

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    cfg = medlab.compose(overrides=["model=smollm2_135m"], run_dir="/tmp/medlab-bench-unused")
    model, tok, _ = build_model(cfg)
    model.eval()
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=args.batch_size, device="cpu")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    cpu = next((l.split(":", 1)[1].strip() for l in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
                if l.startswith("Model name")), platform.processor())
    print(f"- machine: {cpu}, {os.cpu_count()} cores (1-min load average at start: {os.getloadavg()[0]:.2f})")
    print(f"- versions: torch {torch.__version__}, lm-eval {lm_eval.__version__}, medlab {commit}")
    print(f"- command: `.venv/bin/python experiments/bench/qa_loglik_vs_lmeval.py --n {args.n} --batch-size "
          f"{args.batch_size} --fewshot {args.fewshot} --repeats {args.repeats}` "
          f"(OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']})")
    print()
    print("| data | questions | shots | mean prompt tokens | medlab q/s | lm-eval q/s | speedup | per-repeat speedups "
          "| max abs dloglik | acc medlab / lm-eval |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.datasets.split(","):
        path = FILES[name]
        if not path.exists():
            print(f"| {name} | skipped: {path} not found |||||||")
            continue
        pool = load_rows(path, args.fewshot, 0) if args.fewshot else []
        rows = load_rows(path, args.n, args.fewshot)
        style = prompt_style("auto", rows)
        shots = FewShot(pool, args.fewshot, style, sampler="first_n") if args.fewshot else None
        items = build_items(rows, style, fewshot=shots)
        requests = [(it.context, it.continuations) for it in items]
        flat = [(c, k) for c, conts in requests for k in conts]
        tokens = sum(len(tok(c)["input_ids"]) for c, _ in requests) / len(requests)
        # warm-up: one batch each
        option_logliks(model, tok, requests[: args.batch_size], batch_size=args.batch_size)
        lm.loglikelihood([Instance("loglikelihood", {}, fc, i) for i, fc in enumerate(flat[: args.batch_size])],
                         disable_tqdm=True)

        def run_ours():
            return option_logliks(model, tok, requests, batch_size=args.batch_size)

        def run_theirs():
            return lm.loglikelihood([Instance("loglikelihood", {}, fc, i) for i, fc in enumerate(flat)],
                                    disable_tqdm=True)

        # alternating (ours first on even repeats, theirs first on odd ones): load from other jobs hits both
        times: dict[str, list[float]] = {"ours": [], "theirs": []}
        for rep in range(args.repeats):
            for side in (("ours", "theirs") if rep % 2 == 0 else ("theirs", "ours")):
                t0 = time.perf_counter()
                result = run_ours() if side == "ours" else run_theirs()
                times[side].append(time.perf_counter() - t0)
                if side == "ours":
                    ours = result
                else:
                    theirs_flat = result
        t_ours, t_theirs = statistics.median(times["ours"]), statistics.median(times["theirs"])
        ratios = sorted(t / o for o, t in zip(times["ours"], times["theirs"]))
        theirs, i = [], 0
        for _, conts in requests:
            theirs.append([OptionScore(float(ll), 0, bool(g)) for ll, g in theirs_flat[i:i + len(conts)]])
            i += len(conts)
        diff = max(abs(a.loglik - b.loglik) for ra, rb in zip(ours, theirs) for a, b in zip(ra, rb))
        acc_ours = score_items(items, ours)[0]["acc"]
        acc_theirs = score_items(items, theirs)[0]["acc"]
        q_ours, q_theirs = len(items) / t_ours, len(items) / t_theirs
        print(f"| {name} | {len(items)} | {args.fewshot} | {tokens:.0f} | {q_ours:.2f} | {q_theirs:.2f} | "
              f"{q_ours / q_theirs:.2f}x | {', '.join(f'{r:.2f}' for r in ratios)} | {diff:.1e} | "
              f"{acc_ours:.3f} / {acc_theirs:.3f} |", flush=True)


if __name__ == "__main__":
    main()
