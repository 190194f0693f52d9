#!/usr/bin/env bash
# Zero-shot SmolLM2-135M-Instruct on the shared medical QA files, both scoring modes (issue 14's real numbers).
#   bash experiments/eval/zero_shot_smollm2.sh [LOGLIK_N] [GENERATE_N] [MODES]   (defaults 200, 100, "loglik generate")
#   N_pubmedqa_loglik=500 bash experiments/eval/zero_shot_smollm2.sh 200 100      (per file/mode override: N_<file>_<mode>)
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
    override="N_${name}_${mode}"
    n=${!override:-$n}
    extra=()
    # generate: the data configs' prompts (PubMedQA with its abstracts, the <answer></answer> instructions)
    [ "$mode" = generate ] && extra=(data="$name")
    mkdir -p "$OUT"
    echo "$(date -u +%H:%M:%S) $name $mode N=$n"
    .venv/bin/python -m medlab.evaluate run_dir=none model=smollm2_135m "${extra[@]}" eval.task=qa eval.mode="$mode" \
      eval.path="$DATA/${name}_train.jsonl" eval.limit="$n" eval.batch_size=8 eval.max_new_tokens=32 \
      eval.out="$OUT/${name}_${mode}/eval_metrics.json" > "$OUT.${name}_${mode}.log" 2>&1 || { echo "FAILED: $name $mode"; tail -5 "$OUT.${name}_${mode}.log"; }
  done
done
.venv/bin/python experiments/eval/zero_shot_table.py "$OUT"
