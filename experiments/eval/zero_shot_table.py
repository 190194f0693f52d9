"""The table of experiments/eval/README.md from the runs of zero_shot_smollm2.sh.

    .venv/bin/python experiments/eval/zero_shot_table.py outputs/eval/smollm2_zero_shot

Per file and mode: the questions scored, accuracy (and loglik's acc_norm) with Wilson 95% intervals (binomial,
z = 1.96), the random-chance rate (1 / number of options: PubMedQA 1/3, MedQA A-E 1/5, CMMLU 1/4), the exact
two-sided binomial p-value of "accuracy = chance" (scipy when installed), the majority-class rate of the same
questions' gold answers (what always answering the commonest letter would score), loglik's commonest prediction
and its share (a model stuck on one letter scores that letter's gold rate), the format-failure rate
(generate) and the seconds the run took.
"""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from pathlib import Path

FILES = {"pubmedqa": ("PubMedQA (abstracts)", 3), "medqa_usmle": ("MedQA-USMLE (A-E)", 5),
         "cmmlu_medical": ("CMMLU medical (zh, A-D)", 4)}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k / n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def binom_p(k: int, n: int, p: float) -> float | None:
    try:
        from scipy.stats import binomtest
    except ImportError:
        return None
    return float(binomtest(k, n, p).pvalue)


def cell(k: int, n: int) -> str:
    lo, hi = wilson(k, n)
    return f"{k / n:.3f} [{lo:.3f}, {hi:.3f}]"


def main(out: Path) -> None:
    print("| file | mode | questions | chance | majority class | accuracy [95% CI] | p vs chance | "
          "acc_norm [95% CI] | commonest prediction | format failures | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for mode in ("loglik", "generate"):
        for name, (label, n_opt) in FILES.items():
            d = out / f"{name}_{mode}"
            if not (d / "eval_metrics.json").exists():
                print(f"| {label} | {mode} | missing ||||||||")
                continue
            m = json.loads((d / "eval_metrics.json").read_text())
            recs = [json.loads(line) for line in (d / "eval_samples.jsonl").read_text().splitlines() if line]
            n = len(recs)
            k = sum(bool(r["correct"]) for r in recs)
            refs = Counter(str(r.get("reference")) for r in recs)
            top, top_n = refs.most_common(1)[0]
            pv = binom_p(k, n, 1 / n_opt)
            norm = cell(sum(bool(r["correct_norm"]) for r in recs), n) if "correct_norm" in recs[0] else "-"
            preds = Counter(str(r["prediction"]) for r in recs).most_common(1)[0] if mode == "loglik" else None
            pred = f"{preds[0]} ({preds[1] / n:.2f})" if preds else "-"
            fail = f"{m['format_failure_rate']:.3f}" if "format_failure_rate" in m else "-"
            print(f"| {label} | {mode} | {n} | {1 / n_opt:.3f} | {top_n / n:.3f} ({top}) | {cell(k, n)} | "
                  f"{'-' if pv is None else f'{pv:.2g}'} | {norm} | {pred} | {fail} | {m['seconds']:.0f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/eval/smollm2_zero_shot"))
