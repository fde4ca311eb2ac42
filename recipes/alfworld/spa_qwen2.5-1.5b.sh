#!/usr/bin/env bash
# alfworld x spa x Qwen2.5-1.5B-Instruct on 2 GPUs: SPA's three stages on the published protocol
# (recipes/common.sh): collect SPA_M (4) rollouts on SPA_TASKS (512) training tasks -> train the progress estimator ->
# RL with algorithm=spa (r_t = c_t + 0.5 g_t, advantage: reward-to-go minus the task group's mean at step t).
# Work files in SPA_WORK (default runs/spa-alfworld-1.5b); every stage resumes. Data first: threespo-verl setup alfworld.
#   bash recipes/alfworld/spa_qwen2.5-1.5b.sh trainer.total_training_steps=10
set -euo pipefail
source "$(dirname "$0")/../common.sh"
run_spa_recipe alfworld 1.5b "$@"
