#!/usr/bin/env bash
# webshop x ppo x Qwen2.5-7B-Instruct on 8 GPUs: PPO with a critic and GAE over turns, outcome only (the PPO baseline of
# the GiGPO/3SPO papers), on the published protocol (recipes/common.sh). One row per episode (observation turns masked),
# the critic as verl-agent's PPO baseline plus a warm-up; gamma = lambda = 1 per step (algorithm/ppo.yaml).
# Data first: threespo-verl setup webshop. Any Hydra override appended here wins, e.g.
#   ENV_STEPS=20000 bash recipes/webshop/ppo_qwen2.5-7b.sh algorithm.gamma=0.99 algorithm.lam=0.95
set -euo pipefail
source "$(dirname "$0")/../common.sh"
run_recipe webshop ppo 7b "$@"
