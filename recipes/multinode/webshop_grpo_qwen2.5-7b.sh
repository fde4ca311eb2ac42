#!/usr/bin/env bash
# webshop x grpo x Qwen2.5-7B-Instruct on NNODES nodes x 8 GPUs over one Ray cluster: the GRPO side of the
# multi-node comparison; set-up as in recipes/multinode/alfworld_3spo_qwen2.5-7b.sh.
set -euo pipefail
export NNODES=${NNODES:-2} N_GPUS=${N_GPUS:-8} RAY_ADDRESS=${RAY_ADDRESS:-auto}
source "$(dirname "$0")/../common.sh"
run_recipe webshop grpo 7b trainer.experiment_name="webshop-grpo-qwen2.5-7b-${NNODES}nodes" "$@"
