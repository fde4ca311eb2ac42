#!/usr/bin/env bash
# alfworld x gigpo x Qwen2.5-1.5B-Instruct on 2 GPUs, the published GiGPO/3SPO protocol (recipes/common.sh).
# Data first: threespo-verl setup alfworld. Any Hydra override appended here wins, e.g.
#   ENV_STEPS=20000 bash recipes/alfworld/gigpo_qwen2.5-1.5b.sh
#   MODEL_PATH=/models/qwen bash recipes/alfworld/gigpo_qwen2.5-1.5b.sh   (MODEL_PATH, N_GPUS, NNODES: environment)
set -euo pipefail
source "$(dirname "$0")/../common.sh"
run_recipe alfworld gigpo 1.5b "$@"
