#!/usr/bin/env bash
# SmolLM2-135M-Instruct vs a short LoRA SFT of it on MedQuAD (../shared/data), compared on 50 held-out questions.
#   bash experiments/compare/run.sh [STEPS] [N_QUESTIONS]      (defaults 40 LoRA steps, 50 questions)
# Writes outputs/compare_exp/ (data split, run, report with the answer cache); the committed copy of the report
# (report.md, summary.json, PNGs) is experiments/compare/results/. CPU: nice'd, bounded (STEPS LoRA steps of 4
# rows <= 256 tokens, 128-token answers).
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
STEPS=${1:-40}
N=${2:-50}
OUT=outputs/compare_exp
RUN=$OUT/sft_lora_smollm2

# 1. MedQuAD question -> answer pairs as SFT rows (answers <= 900 characters), N held out for the comparison
nice -n 10 .venv/bin/python -m medlab.prepare prepare.path=../shared/data/retrieval/medquad_train.jsonl \
  prepare.task=sft '+prepare.fields={instruction: question, output: answer}' prepare.val_size="$N" \
  prepare.max_chars=900 prepare.out=$OUT/medquad_sft.jsonl prepare.progress=false

# 2. a short LoRA SFT of SmolLM2-135M-Instruct on the other rows (never on the held-out ones)
rm -rf "$RUN"
nice -n 10 .venv/bin/python -m medlab +experiment=sft_lora model=smollm2_135m data=sft_chat \
  data.path=$OUT/medquad_sft.jsonl data.val_path=$OUT/medquad_sft_val.jsonl \
  data.max_length=256 data.batch_size=4 objective.lr=1e-3 trainer.max_steps="$STEPS" \
  trainer.val_every_n_steps="$STEPS" trainer.limit_val_batches=4 trainer.ckpt_every_n_steps="$STEPS" \
  trainer.log_every_n_steps=1 trainer.progress_bar=false logger=csv export.enabled=false hydra.run.dir=$RUN

# 3. the comparison: base vs run on the N held-out questions (examples=0: no data text in the committed report)
rm -rf $OUT/report
nice -n 10 .venv/bin/python -m medlab.compare "compare.models=[smollm2_135m,$RUN]" \
  "compare.labels=[smollm2_base,smollm2_lora_sft]" compare.path=$OUT/medquad_sft_val.jsonl compare.limit="$N" \
  compare.max_new_tokens=128 +compare.examples=0 compare.out=$OUT/report \
  "compare.command='bash experiments/compare/run.sh $STEPS $N'"

mkdir -p experiments/compare/results
cp $OUT/report/{report.md,summary.json,radar.png,bars.png,box.png} experiments/compare/results/
