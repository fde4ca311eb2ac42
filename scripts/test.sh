#!/usr/bin/env bash
# The project's test command (README "Run the tests"; .ci/run calls exactly this):
#   bash scripts/test.sh [PYTEST ARGS]
# Installs into ./.venv (scripts/install.sh), then runs every test not marked `slow`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# shellcheck disable=SC1091
. "${THREESPO_VENV:-.venv}/bin/activate"
export PYTHONHASHSEED=0 TOKENIZERS_PARALLELISM=false RAY_DEDUP_LOGS=0
exec python -m pytest -m "not slow" "$@"
