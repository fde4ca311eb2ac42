#!/usr/bin/env bash
# household x 3spo x SmolLM2-135M-Instruct on a CPU-only machine (threespo_trainer_cpu: gloo, FSDP2 fp32, vLLM's CPU
# build; see README "Running on a CPU-only machine"). `threespo-verl demo` runs this and the GRPO side with a report;
# this shell is the plain training run. Model first: threespo-verl setup model smollm2-135m.
#   bash recipes/cpu/household_3spo_smollm2.sh trainer.total_env_steps=640
set -euo pipefail
source "$(dirname "$0")/../common.sh"
MODEL=${MODEL_PATH:-$("${PYTHON:-python}" -c 'from threespo_verl.models import model_path; print(model_path("smollm2-135m"))' 2>/dev/null || echo MODEL-NOT-INSTALLED)}
if [[ "$MODEL" == MODEL-NOT-INSTALLED && "${THREESPO_RECIPE_PRINT:-0}" != 1 ]]; then
  echo "recipes: SmolLM2-135M is not installed: run  threespo-verl setup model smollm2-135m  (or set MODEL_PATH)" >&2
  exit 2
fi
# comparable_overrides (common.sh): the same outcome, invalid-action penalty and optimizer rule as every recipe, one
# optimizer step per 16 env steps at this scale; the run ends at 320 env steps (4 GRPO steps of 2 tasks x g_max 4 x
# H 10), validated every 160; total_training_steps is only a cap on the post-step updates
# shellcheck disable=SC2046  # the override list has no spaces inside an override
launch --config-name threespo_trainer_cpu algorithm=3spo env=household env.max_steps=10 env.history_length=1 \
  env.reasoning=false env.few_shot=false env.constrain_actions=true actor_rollout_ref.model.path="$MODEL" \
  algorithm.threespo.g_max=4 data.train_batch_size=2 data.max_prompt_length=2048 data.max_response_length=48 \
  actor_rollout_ref.actor.ppo_max_token_len_per_gpu=2048 actor_rollout_ref.actor.optim.lr=1e-5 \
  trainer.total_env_steps=320 trainer.val_every_env_steps=160 trainer.test_freq=-1 trainer.total_training_steps=400 \
  trainer.save_freq=100 data.val_max_samples=8 \
  $(comparable_overrides 16) trainer.experiment_name=household-3spo-smollm2-cpu "$@"
