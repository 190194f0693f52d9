#!/usr/bin/env bash
# SmolLM2-135M-Instruct vs a short LoRA SFT of it on MedQuAD (../shared/data), compared on 40 held-out questions.
# Writes outputs/compare_exp/ (data split, run, report with the answer cache); the committed copy of the report
# (report.md, summary.json, PNGs) is experiments/compare/. CPU: nice'd, bounded (10 LoRA steps, 96-token answers).
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
OUT=outputs/compare_exp
RUN=$OUT/sft_lora_smollm2

# 1. MedQuAD question -> answer pairs as SFT rows (answers <= 900 characters), 40 held out for the comparison
nice -n 10 .venv/bin/python -m medlab.prepare prepare.path=../shared/data/retrieval/medquad_train.jsonl \
  prepare.task=sft '+prepare.fields={instruction: question, output: answer}' prepare.val_size=40 \
  prepare.max_chars=900 prepare.out=$OUT/medquad_sft.jsonl prepare.progress=false

# 2. a short LoRA SFT of SmolLM2-135M-Instruct on the other 1413 rows
nice -n 10 .venv/bin/python -m medlab +experiment=sft_lora model=smollm2_135m data=sft_chat \
  data.path=$OUT/medquad_sft.jsonl data.val_path=$OUT/medquad_sft_val.jsonl \
  data.max_length=192 data.batch_size=4 objective.lr=1e-3 trainer.max_steps=10 trainer.val_every_n_steps=10 \
  trainer.limit_val_batches=1 trainer.ckpt_every_n_steps=10 trainer.log_every_n_steps=1 trainer.progress_bar=false \
  logger=csv export.enabled=false hydra.run.dir=$RUN

# 3. the comparison: base vs run on the 40 held-out questions (examples=0: no data text in the committed report)
nice -n 10 .venv/bin/python -m medlab.compare "compare.models=[smollm2_135m,$RUN]" \
  "compare.labels=[smollm2_base,smollm2_lora_sft]" compare.path=$OUT/medquad_sft_val.jsonl compare.limit=40 \
  compare.max_new_tokens=96 compare.examples=0 compare.out=$OUT/report

mkdir -p experiments/compare
cp $OUT/report/{report.md,summary.json,radar.png,bars.png,box.png} experiments/compare/
