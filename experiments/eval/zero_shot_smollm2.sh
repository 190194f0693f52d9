#!/usr/bin/env bash
# Zero-shot SmolLM2-135M-Instruct on the shared medical QA files, both scoring modes (issue 14's real numbers).
#   bash experiments/eval/zero_shot_smollm2.sh [LOGLIK_N] [GENERATE_N] [MODES]   (defaults 200, 100, "loglik generate")
# Each run: python -m medlab.evaluate run_dir=none model=smollm2_135m eval.task=qa eval.mode=... ; metrics and
# per-question records go to outputs/eval/smollm2_zero_shot/<file>_<mode>/ (not committed: they quote the data);
# the table printed at the end is the one in experiments/eval/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
LOGLIK_N=${1:-200}
GENERATE_N=${2:-100}
MODES=${3:-loglik generate}
DATA=../shared/data/qa
OUT=outputs/eval/smollm2_zero_shot
for mode in $MODES; do
  for name in pubmedqa medqa_usmle cmmlu_medical; do
    n=$([ "$mode" = loglik ] && echo "$LOGLIK_N" || echo "$GENERATE_N")
    extra=()
    # generate: the data configs' prompts (PubMedQA with its abstracts, the <answer></answer> instructions)
    [ "$mode" = generate ] && extra=(data="$name")
    .venv/bin/python -m medlab.evaluate run_dir=none model=smollm2_135m "${extra[@]}" eval.task=qa eval.mode="$mode" \
      eval.path="$DATA/${name}_train.jsonl" eval.limit="$n" eval.batch_size=8 eval.max_new_tokens=32 \
      eval.out="$OUT/${name}_${mode}/eval_metrics.json" > "$OUT.${name}_${mode}.log" 2>&1 || { echo "FAILED: $name $mode"; tail -5 "$OUT.${name}_${mode}.log"; }
  done
done
.venv/bin/python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print("| file | mode | questions | accuracy | acc_norm | format failures | seconds |")
print("|---|---|---|---|---|---|---|")
for mode in ("loglik", "generate"):
    for name in ("pubmedqa", "medqa_usmle", "cmmlu_medical"):
        p = out / f"{name}_{mode}" / "eval_metrics.json"
        if not p.exists():
            print(f"| {name} | {mode} | missing |||||"); continue
        m = json.loads(p.read_text())
        norm = f"{m['acc_norm']:.3f}" if "acc_norm" in m else "-"
        fail = f"{m['format_failure_rate']:.3f}" if "format_failure_rate" in m else "-"
        print(f"| {name} | {mode} | {m['num_questions']} | {m['accuracy']:.3f} | {norm} | {fail} | {m['seconds']:.0f} |")
PY
