#!/usr/bin/env bash
# webshop x spa x Qwen2.5-1.5B-Instruct on 2 GPUs: SPA-RL's pipeline on the published protocol (recipes/common.sh):
# (1) behaviour cloning on the expert trajectories (threespo-verl sft) -> (2) SPA_M (4) rollouts of the clone on
# SPA_TASKS (512) training tasks -> (3) the progress estimator -> (4-5) RL from the clone with algorithm=spa_ppo
# (r_t = c_t + 0.5 g'_t - 0.1 1{invalid} at each action turn, a critic, per-step GAE 0.99/0.95).
# SPA_ALGO=spa runs the critic-free variant instead. Work files in SPA_WORK (default runs/spa-webshop-1.5b); every
# stage resumes. Data first: threespo-verl setup webshop.
#   ENV_STEPS=20000 bash recipes/webshop/spa_qwen2.5-1.5b.sh
set -euo pipefail
source "$(dirname "$0")/../common.sh"
run_spa_recipe webshop 1.5b "$@"
