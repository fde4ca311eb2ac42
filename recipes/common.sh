#!/usr/bin/env bash
# Shared by every recipe shell: the published GiGPO/3SPO protocol and the launcher. Source it, then call
#   run_recipe <env> <algorithm> <model-size> [hydra overrides ...]
# A recipe's own overrides come after the protocol's; the user's ("$@" of the shell) come last and win.
#
# Protocol (GiGPO / 3SPO papers): 16 tasks per step x group 8; max steps 50 (ALFWorld) / 15 (WebShop); lr 1e-6;
# KL loss 0.01 (low_var_kl); validation at T=0.4; the same env-step budget per task for every algorithm (3SPO's tree
# budget g_max x H = GRPO's rollout.n episodes of at most H steps); and what keeps the algorithms comparable
# (DESIGN §2 item 8, comparable_overrides below, the CPU shell included): the same outcome, the same invalid-action
# penalty on every algorithm's step rows, one optimizer step per the same number of env steps, and runs that end on
# an env-step budget (trainer.total_env_steps) with validations at the same env-step checkpoints.
#
# THREESPO_RECIPE_PRINT=1 prints the final override list (one per line) instead of launching: the recipe
# composition test (tests/unit/test_recipes.py) reads it and composes the config with Hydra.
set -euo pipefail

GROUP=8
TASKS=16
# one optimizer step per this many env steps, every algorithm, at least one per update (DESIGN §2.8): a GRPO step of
# 16 x 8 episodes takes about as many steps as with 256-row mini-batches; 3SPO's per-round updates and PPO's
# one-row-per-episode updates get the optimizer steps their env steps warrant
ENV_STEPS_PER_OPTIMIZER_STEP=256
# verl's epoch cap, set far above any run. verl 0.9's loop (trainer/ppo/v1/trainer_base.py, fit) also stops once
# trainer.total_epochs x steps-per-epoch updates have run, steps-per-epoch = train split size // data.train_batch_size,
# whatever the budget says; a run cut there gets neither its final validation nor its final checkpoint. Post-step
# 3SPO makes an update per expansion round or so: ALFWorld's 3,553 games // 16 = 222 updates per epoch x verl's
# default 30 epochs would end a 3SPO run at update 6,660. With this cap the env-step budget alone ends every run
# (tests/unit/test_recipes.py checks each shell against its split).
EPOCHS=1000000

comparable_overrides() {  # <env steps per optimizer step>: DESIGN §2 item 8, for every algorithm and every recipe
  echo "env.outcome=won env.invalid_action_penalty=0.1 algorithm.env_steps_per_optimizer_step=$1" \
    "trainer.total_epochs=${EPOCHS}"
}

_env_protocol() {
  case "$1" in
    alfworld) H=50; MIN_ROWS=512; echo "env=alfworld env.max_steps=50 env.history_length=2 env.eval_panel=valid_seen" ;;
    webshop) H=15; MIN_ROWS=256; echo "env=webshop env.max_steps=15 env.history_length=2" ;;
    household) H=30; MIN_ROWS=64; echo "env=household env.max_steps=30 env.history_length=2" ;;
    *) echo "recipes: unknown env '$1' (alfworld | webshop | household)" >&2; return 2 ;;
  esac
}

_model() {
  case "$1" in
    1.5b) echo "actor_rollout_ref.model.path=${MODEL_PATH:-Qwen/Qwen2.5-1.5B-Instruct} trainer.n_gpus_per_node=${N_GPUS:-2} trainer.nnodes=${NNODES:-1} actor_rollout_ref.rollout.tensor_model_parallel_size=1 actor_rollout_ref.rollout.gpu_memory_utilization=0.6 actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8 actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=16 actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=16 actor_rollout_ref.actor.fsdp_config.param_offload=false actor_rollout_ref.actor.fsdp_config.optimizer_offload=false" ;;
    7b) echo "actor_rollout_ref.model.path=${MODEL_PATH:-Qwen/Qwen2.5-7B-Instruct} trainer.n_gpus_per_node=${N_GPUS:-8} trainer.nnodes=${NNODES:-1} actor_rollout_ref.rollout.tensor_model_parallel_size=2 actor_rollout_ref.rollout.gpu_memory_utilization=0.6 actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4 actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8 actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=8 actor_rollout_ref.actor.fsdp_config.param_offload=true actor_rollout_ref.actor.fsdp_config.optimizer_offload=true actor_rollout_ref.ref.fsdp_config.param_offload=true" ;;
    *) echo "recipes: unknown model size '$1' (1.5b | 7b)" >&2; return 2 ;;
  esac
}

# The run's length in env steps (DESIGN §2.8): TRAIN_STEPS GRPO steps of TASKS x GROUP episodes of at most H steps
# (ENV_STEPS overrides it), validated every TEST_FREQ of them (trainer.val_every_env_steps), the same checkpoints for
# every algorithm; trainer.total_training_steps is only a cap. 3SPO (update_mode=post_step, the default) updates
# after every expansion round that released at least MIN_UPDATE_ROWS rows (ALFWorld 512, WebShop 256: an update's
# fixed cost, weight sync included, stays a few percent of it, docs/gpu_scale.md), so it makes many more, smaller
# updates than GRPO for the same env steps; its checkpoints are counted in updates, about H per GRPO step.
_algorithm() {  # <algorithm> <min update rows>
  local steps=${TRAIN_STEPS:-150} test_freq=${TEST_FREQ:-5} unit=$((TASKS * GROUP * H))
  local budget=${ENV_STEPS:-$((steps * unit))}
  local run="trainer.total_env_steps=${budget} trainer.val_every_env_steps=$((test_freq * unit)) trainer.test_freq=-1"
  case "$1" in
    3spo) echo "algorithm=3spo algorithm.threespo.g_max=${GROUP} algorithm.threespo.env_step_budget=null actor_rollout_ref.rollout.n=1 algorithm.threespo.min_update_rows=${MIN_UPDATE_ROWS:-$2} ${run} trainer.total_training_steps=$((steps * H * 4)) trainer.save_freq=$((test_freq * 2 * H))" ;;
    grpo | gigpo | spa | ppo | spa_ppo) echo "algorithm=$1 actor_rollout_ref.rollout.n=${GROUP} ${run} trainer.total_training_steps=$((steps * 4)) trainer.save_freq=$((test_freq * 2))" ;;
    *) echo "recipes: unknown algorithm '$1' (3spo | grpo | gigpo | spa | ppo | spa_ppo)" >&2; return 2 ;;
  esac
}

# PPO and SPA-PPO train on one row per episode (trajectory mode, DESIGN §3): the row holds every turn, so
# data.max_response_length is the budget of the whole episode after its first prompt (4,096 + 28,672 = 32,768 tokens,
# Qwen2.5's context; older turns are dropped beyond it, counted in trajectory/turns_dropped) and one reply keeps the
# 512 tokens of every other recipe (env.max_tokens_per_step). Micro-batches are cut by tokens (one row can fill
# one). The advantage is GAE over turns (algorithm.adv_estimator=turn_gae, the algorithm group's default: gamma and
# lambda per step, 1/1 for ppo as verl-agent's PPO baseline, 0.99/0.95 for spa_ppo as the SPA-RL paper). The critic:
# the policy's model with a value head at lr 1e-5, ten times the actor's 1e-6 (verl-agent's PPO baseline; SPA-RL's
# code trains its value head at its policy's lr, 1e-5), the actor's micro-batch, and the algorithm group's warm-up
# (trainer.critic_warmup=3: the actor's first update is at step 3; ours, neither paper has one); with 7B its
# parameters and optimizer are offloaded as the actor's.
_trajectory() {  # <algorithm> <size>
  case "$1" in
    ppo | spa_ppo) ;;
    *) return 0 ;;
  esac
  local tok=32768 offload=false micro=8
  [[ "$2" == 7b ]] && offload=true && micro=4
  echo "env.max_tokens_per_step=512 data.max_response_length=$((tok - 4096))" \
    "actor_rollout_ref.actor.use_dynamic_bsz=true actor_rollout_ref.actor.ppo_max_token_len_per_gpu=${tok}" \
    "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=true" \
    "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=${tok}" \
    "actor_rollout_ref.ref.log_prob_use_dynamic_bsz=true actor_rollout_ref.ref.log_prob_max_token_len_per_gpu=${tok}" \
    "critic.optim.lr=1e-5 critic.ppo_micro_batch_size_per_gpu=${micro} critic.use_dynamic_bsz=true" \
    "critic.ppo_max_token_len_per_gpu=${tok} critic.fsdp.param_offload=${offload}" \
    "critic.fsdp.optimizer_offload=${offload}"
}

protocol_overrides() {  # <env> <algorithm> <size>
  local env_args model_args algo_args
  # explicit checks: errexit does not apply inside a function whose caller tests it ($(...) || exit)
  env_args=$(_env_protocol "$1") || return 2
  _env_protocol "$1" >/dev/null  # sets H in this shell (command substitution runs in a subshell)
  model_args=$(_model "$3") || return 2
  algo_args=$(_algorithm "$2" "$MIN_ROWS") || return 2
  echo "$env_args $algo_args $(comparable_overrides "$ENV_STEPS_PER_OPTIMIZER_STEP") $model_args" \
    "data.train_batch_size=${TASKS}" \
    "data.max_prompt_length=4096" \
    "data.max_response_length=512 env.reasoning=true actor_rollout_ref.actor.optim.lr=1e-6" \
    "actor_rollout_ref.actor.use_kl_loss=true actor_rollout_ref.actor.kl_loss_coef=0.01" \
    "actor_rollout_ref.actor.kl_loss_type=low_var_kl actor_rollout_ref.actor.entropy_coeff=0.0" \
    "algorithm.use_kl_in_reward=false actor_rollout_ref.rollout.val_kwargs.temperature=0.4" \
    "actor_rollout_ref.rollout.val_kwargs.do_sample=true trainer.val_before_train=true" \
    "trainer.logger=[console,tensorboard] trainer.project_name=threespo_verl trainer.experiment_name=$1-$2-qwen2.5-$3" \
    "$(_trajectory "$2" "$3")"
}

launch() {  # the final argument list -> python -m threespo_verl.main (or printed for the composition test)
  if [[ "${THREESPO_RECIPE_PRINT:-0}" == 1 ]]; then
    printf '%s\n' "$@"
    return 0
  fi
  if [[ "${RAY_JOB:-0}" == 1 ]]; then  # submit to a running Ray cluster (recipes/multinode)
    exec ray job submit --address "${RAY_DASHBOARD_ADDRESS:-http://127.0.0.1:8265}" -- \
      "${PYTHON:-python}" -m threespo_verl.main "$@"
  fi
  exec "${PYTHON:-python}" -m threespo_verl.main "$@"
}

spa_stages() {  # <env> <size> <work dir>: SPA's offline stages before its RL run (DESIGN §3)
  local env=$1 size=$2 work=$3 model gpus
  model=$(_model "$size" | tr ' ' '\n' | sed -n 's/^actor_rollout_ref.model.path=//p')
  gpus=$(_model "$size" | tr ' ' '\n' | sed -n 's/^trainer.n_gpus_per_node=//p')
  # stage 1: behaviour cloning on the environment's expert trajectories (ALFWorld's walkthroughs, the WebShop
  # oracle) with verl's SFT trainer, the RL prompts (history 2, reasoning) and the RL horizon; the clone (sft/model)
  # is the policy of every later stage. 3 epochs at lr 1e-5, 64 trajectories per step (chosen: the SPA paper does
  # not state its SFT schedule)
  local sft=(threespo-verl sft --env "$env" --split train --model "$model" --out "$work/sft" --max-steps "$H"
    --history-length 2 --reasoning --epochs "${SPA_SFT_EPOCHS:-3}" --lr 1e-5 --batch-size 64 --max-length 16384
    --workers "${SPA_SFT_WORKERS:-8}" --nproc "$gpus" --quiet)
  # stage 2: M rollouts per training task with the cloned policy (vLLM), one JSONL line per trajectory (resumable)
  local collect=(threespo-verl spa collect --env "$env" --split train --tasks "${SPA_TASKS:-512}" --m "${SPA_M:-4}"
    --model "$work/sft/model" --max-steps "$H" --temperature 1.0 --out "$work/trajectories.jsonl")
  # stage 3: the progress estimator (token classification on the cloned policy, loss (R - sum_t c_t)^2)
  # (on GPUs: transformers' Trainer in bf16 with gradient checkpointing; more GPUs: torchrun, README "SPA")
  local pe=(threespo-verl spa train-estimator --data "$work/trajectories.jsonl" --model "$work/sft/model"
    --out "$work/pe" --epochs "${SPA_PE_EPOCHS:-2}" --lr 1e-5 --batch-size 16 --micro-batch-size 4 --bf16
    --gradient-checkpointing)
  if [[ "${THREESPO_RECIPE_PRINT:-0}" == 1 ]]; then  # the stages' commands, on stderr (stdout is the override list)
    printf 'stage: %s\n' "${sft[*]}" "${collect[*]}" "${pe[*]}" >&2
    return 0
  fi
  mkdir -p "$work"
  "${sft[@]}"
  "${collect[@]}"
  if [[ ! -f "$work/pe/spa_pe.json" ]]; then
    "${pe[@]}"
  fi
}

run_spa_recipe() {  # <env> <size> [overrides...]: stages 1-3 in SPA_WORK (default runs/spa-<env>-<size>), then RL
  # from the clone: SPA_ALGO=spa_ppo (default: the paper's PPO with a critic and GAE across steps) or spa (the
  # critic-free variant: reward-to-go minus the task group's mean at the same step)
  local env=$1 size=$2 work algo=${SPA_ALGO:-spa_ppo}
  shift 2
  case "$algo" in
    spa | spa_ppo) ;;
    *) echo "recipes: SPA_ALGO='$algo' (spa_ppo | spa)" >&2; exit 2 ;;
  esac
  work=$(realpath -m "${SPA_WORK:-runs/spa-$env-$size}")
  _env_protocol "$env" >/dev/null  # H for the stages' horizon
  spa_stages "$env" "$size" "$work"
  run_recipe "$env" "$algo" "$size" actor_rollout_ref.model.path="$work/sft/model" \
    algorithm.spa.estimator_path="$work/pe" "$@"
}

run_recipe() {  # <env> <algorithm> <size> [overrides...]
  local env=$1 algo=$2 size=$3
  shift 3
  local proto
  proto=$(protocol_overrides "$env" "$algo" "$size") || exit 2
  # shellcheck disable=SC2086  # the protocol is a whitespace-separated override list without spaces inside
  launch $proto "$@"
}
