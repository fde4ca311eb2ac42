#!/usr/bin/env bash
# The project's test command (README "Run the tests"; .ci/run calls exactly this):
#   bash scripts/test.sh [PYTEST ARGS]
# Installs into ./.venv (scripts/install.sh), then runs every test not marked `slow`, in two phases: the unit tests
# spread over the CPU cores (pytest-xdist; THREESPO_TEST_WORKERS=N to choose, 0 for one process), then the
# integration and e2e tests one at a time (each starts Ray, vLLM and verl's workers, which need the cores to
# themselves). PYTEST ARGS go to both phases (e.g. -x, --durations=30, -m integration); a phase that then selects
# no test is not a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# shellcheck disable=SC1091
. "${THREESPO_VENV:-.venv}/bin/activate"
export PYTHONHASHSEED=0 TOKENIZERS_PARALLELISM=false RAY_DEDUP_LOGS=0

phase() {  # pytest exit status 5 = no test selected
    local rc=0
    python -m pytest -m "not slow" "$@" || rc=$?
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then
        echo "scripts/test.sh: pytest $* failed (exit status $rc)" >&2
        return "$rc"
    fi
}

status=0
phase -n "${THREESPO_TEST_WORKERS:-auto}" tests/unit "$@" || status=$?
phase tests/integration tests/e2e "$@" || status=$?
exit "$status"
