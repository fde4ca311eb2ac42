#!/usr/bin/env bash
# alfworld x 3spo x Qwen2.5-7B-Instruct on NNODES nodes x 8 GPUs over one Ray cluster (recipes/common.sh protocol).
#   every node: pip install -e <this repo>; threespo-verl setup alfworld   (same data path on every node)
#   head:       ray start --head --port=6379 --dashboard-host=0.0.0.0
#   workers:    ray start --address=<head-ip>:6379
#   head:       NNODES=2 bash recipes/multinode/alfworld_3spo_qwen2.5-7b.sh
# verl's ray.init() joins the running cluster (RAY_ADDRESS=auto); RAY_JOB=1 submits through `ray job submit`
# instead (RAY_DASHBOARD_ADDRESS, default http://127.0.0.1:8265). Rollout workers spread over all nodes.
set -euo pipefail
export NNODES=${NNODES:-2} N_GPUS=${N_GPUS:-8} RAY_ADDRESS=${RAY_ADDRESS:-auto}
source "$(dirname "$0")/../common.sh"
run_recipe alfworld 3spo 7b trainer.experiment_name="alfworld-3spo-qwen2.5-7b-${NNODES}nodes" "$@"
