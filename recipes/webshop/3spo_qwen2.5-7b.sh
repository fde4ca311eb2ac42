#!/usr/bin/env bash
# webshop x 3spo x Qwen2.5-7B-Instruct on 8 GPUs, the published GiGPO/3SPO protocol (recipes/common.sh).
# Data first: threespo-verl setup webshop. Any Hydra override appended here wins, e.g.
#   ENV_STEPS=20000 bash recipes/webshop/3spo_qwen2.5-7b.sh
#   MODEL_PATH=/models/qwen bash recipes/webshop/3spo_qwen2.5-7b.sh   (MODEL_PATH, N_GPUS, NNODES: environment)
set -euo pipefail
source "$(dirname "$0")/../common.sh"
run_recipe webshop 3spo 7b "$@"
