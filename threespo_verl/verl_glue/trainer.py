"""The v1 trainer mode ``threespo`` (``trainer.v1.trainer_mode=threespo``): verl's sync PPO trainer driving 3SPO's
expansion rounds, and GRPO/GiGPO's episodes, through the same agent loop, environments and metrics.

What it changes in ``PPOTrainerSync`` (every other stage, from old log-probs to the actor update and the weight sync,
is verl's own):

* ``step`` (``algorithm.name=3spo``): keeps one search tree per task in flight (``rollout/tree.py``: ranked
  best-first backtracking DFS, per-task env-step budget, trajectory cap), refilled from verl's dataloader as trees
  finish. Each *round* sends one node-expansion request per tree through verl's ``AgentLoopManagerTQ``, waits for
  exactly those groups in the replay buffer (``RoundReplayBuffer.collect``: a pruned node's group holds one marker
  row, cleared), feeds the children back into the trees, records the trajectories the trees ended (once each, under
  the store keys of ``state_scope``) and commits the state store (scores of the next round see this round's
  trajectories, never earlier). Every sampled reply is a row; a node whose replies all chose the same action (or
  n = 1) is followed but gives no update row (its group advantage would be 0). ``update_mode=post_step`` updates
  after every round that yields at least ``min_update_rows`` rows; ``post_trajectory`` keeps expanding until every
  tree of the batch is finished, then updates once. The collected rows then run through verl's ``_step_once``
  unchanged (the buffer hands them over as the "sample").
* GRPO / GiGPO: verl's own prompt flow, ``rollout.n`` episode sessions per task.
* PPO / SPA-PPO (``algorithm=ppo | spa_ppo``): the same flow, one *trajectory row* per episode (observation turns
  masked, ``rollout/trajectory.py``); each step's reward at the closing token of its action turn. verl's critic
  (``_compute_values``, ``_update_critic``) runs unchanged; the advantage is the turn-level ``turn_gae`` (gamma and
  lambda per step, ``algos/turn_gae.py``) or verl's token-level ``gae`` (``algorithm.adv_estimator=gae``). verl's
  ``trainer.critic_warmup`` holds the actor back while the critic learns; ``check_trajectory_config`` checks the
  row's token budget up front.
* ``_compute_advantage``: each row's reward is ``extra_fields["step_reward"]`` at its last response token (verl
  copies the last output's ``reward_score`` onto the other outputs of a session); the per-row metadata reaches the
  ``3spo``/``gigpo``/``spa`` estimators through ``row_meta.row_metadata``, and ``turn_gae`` gets the critic's values
  the same way (verl hands them to its own ``gae`` only); padding rows (``is_padding``) join no group.
* ``_balance_batch`` / ``_get_required_batch_multiple`` / ``_update_actor`` / ``_update_critic``: mini-batches of
  at most ``algorithm.mini_batch_rows`` rows for every algorithm (DESIGN §2.8): an update of R rows takes
  K = ceil(R / mini_batch_rows) optimizer steps (x ``actor.ppo_epochs``), its rows split evenly into K mini-batches
  of whole micro-batches (``minibatch_plan``), the critic's the same K x b; ``actor/optimizer_steps`` and
  ``actor/optimizer_steps_per_env_step`` are logged.
* checkpoints: ``threespo_state.json`` (frontiers, task queue, round, counters) and ``state_store.npz`` are written
  into verl's ``global_step_N`` folder *before* verl writes its tracker file, and read back on resume; the metrics
  JSONL is cut back to the resumed step, so a killed run resumes exactly.

This module holds only the class with verl's hooks; the work lives in ``rounds`` (3SPO's expansion rounds and the
replay buffer), ``rewards`` (rewards into TransferQueue, row metadata), ``minibatch`` (the mini-batch plan),
``train_metrics`` (explore / episode / validation metrics, the rollout probe), ``checkpoint`` (save / resume) and
``verl_compat`` (the one place that touches verl's private API).
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter

import transfer_queue as tq
from transfer_queue import KVBatchMeta
from verl.trainer.ppo.padding_utils import upsample_batch_to_divisible_size
from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

from threespo_verl.envs.base import Task
from threespo_verl.rollout.expand import ScoreParams
from threespo_verl.rollout.release import GroupLedger
from threespo_verl.rollout.trajectory import TRAJECTORY_ALGOS
from threespo_verl.rollout.tree import Frontiers
from threespo_verl.verl_glue import config as typed  # a module: verl's first import may load this plugin mid-import
from threespo_verl.verl_glue import metrics_log
from threespo_verl.verl_glue import row_meta as rm
from threespo_verl.verl_glue.checkpoint import STATE_FILE, STORE_FILE, CheckpointMixin
from threespo_verl.verl_glue.minibatch import MiniBatchMixin, minibatch_plan
from threespo_verl.verl_glue.rewards import MUTATION_ENV, MUTATIONS, RewardsMixin, episode_returns_on_final_rows
from threespo_verl.verl_glue.rounds import (
    MAX_NODE_FAILURES,
    RoundReplayBuffer,
    RoundsMixin,
    apply_node_rows,
    node_children,
    node_request,
)
from threespo_verl.verl_glue.schedule import EnvStepSchedule
from threespo_verl.verl_glue.step_row import step_rows
from threespo_verl.verl_glue.train_metrics import (
    METRICS_FILE, MetricsMixin, episode_env_steps, new_round_metrics, val_success_metrics,
)
from threespo_verl.verl_glue.verl_compat import actor_dp_size, is_padding, real_rows
from threespo_verl.verl_glue.verl_compat import concat_batches as _concat
from threespo_verl.verl_glue.verl_compat import extra_fields as _extra_fields
from threespo_verl.verl_glue.verl_compat import select_rows as _select

logger = logging.getLogger("threespo_verl.trainer")

TRAINER_MODE = "threespo"

#: the names this module has always offered (the plugin, tests and benchmarks import them from here)
__all__ = [
    "MAX_NODE_FAILURES", "METRICS_FILE", "MUTATIONS", "MUTATION_ENV", "STATE_FILE", "STORE_FILE", "TRAINER_MODE",
    "RoundReplayBuffer", "ThreeSPOTrainer", "_concat", "_extra_fields", "_select", "apply_node_rows",
    "check_trajectory_config", "create_progress_worker", "episode_returns_on_final_rows", "minibatch_plan",
    "new_round_metrics", "node_children", "node_request",
]


@register_trainer(TRAINER_MODE)
class ThreeSPOTrainer(RoundsMixin, RewardsMixin, MiniBatchMixin, MetricsMixin, CheckpointMixin, PPOTrainerSync):
    """See the module docstring. Only verl's hooks live here; the work is in the mixins (``rounds``, ``rewards``,
    ``minibatch``, ``train_metrics``, ``checkpoint``)."""

    # the trainer's own state next to verl's: frontiers, task queue, counters, store, mini-batch rows, SPA worker
    def __init__(self, config) -> None:
        super().__init__(config)
        # verl's base class reads trainer_mode != "sync" as "an async mode"; this trainer has sync semantics
        self.trainer_mode = "sync"
        # the plugin's config, typed once (verl keeps its own reading of config.algorithm)
        self.algo_cfg = typed.resolve_algorithm(config.algorithm)
        self.env_cfg = typed.resolve_env(config.env)
        self.algo = self.algo_cfg.name
        self.tcfg = self.algo_cfg.threespo
        self.params = ScoreParams.from_config(self.tcfg, self.env_cfg.invalid_action_penalty)
        budget = self.tcfg.env_step_budget or self.params.g_max * self.env_cfg.max_steps
        self.frontiers = Frontiers(int(budget), self.tcfg.max_trajectories_per_task)
        self.task_queue: list[Task] = []
        #: 3SPO's groups sampled but not yet trained (``rollout/release.py``), their rows waiting in TransferQueue
        self.ledger = GroupLedger(self.tcfg.update_mode)
        #: the update explore() returned releases every pending group: the run's env-step budget is spent
        self.final_update = False
        budget = typed.resolve_budget(config.trainer)
        if budget.val_every_env_steps and int(config.trainer.get("test_freq", -1)) > 0:
            raise ValueError("trainer.val_every_env_steps schedules validation in env steps; set trainer.test_freq=-1 "
                             "(validation in updates) or trainer.val_every_env_steps=null, not both")
        self.schedule = EnvStepSchedule(budget.total_env_steps, budget.val_every_env_steps)
        self._val_now = self._stop_now = False
        self._env_step_val: dict | None = None
        self.round = 0
        self.counters: Counter = Counter()
        self.unique_states: set[int] = set()
        self.node_failures: Counter = Counter()
        self.mutation = os.environ.get(MUTATION_ENV) or None
        if self.mutation is not None:
            if self.mutation not in MUTATIONS:
                raise ValueError(f"{MUTATION_ENV}={self.mutation!r}; valid: {MUTATIONS} (tests only)")
            logger.warning("%s=%s: the learning signal is broken on purpose (a test of the learning test)",
                           MUTATION_ENV, self.mutation)
        note = bypass_with_constrained_decoding(config)
        if note:
            logger.warning(note)
        self.mini_batch_rows = self.algo_cfg.mini_batch_rows
        if self.mini_batch_rows < 1:
            raise ValueError(f"algorithm.mini_batch_rows must be >= 1, got {self.mini_batch_rows}")
        self._mb_plan: tuple[int, int] | None = None  # (optimizer steps, rows per mini-batch) of the current update
        self.metrics_path = os.path.join(config.trainer.default_local_dir, METRICS_FILE)
        self.store = None
        if self.algo == "3spo":
            if self.parameter_sync_step != 1:
                raise ValueError("algorithm=3spo updates once per expansion round; set "
                                 "trainer.v1.threespo.parameter_sync_step=1")
            from threespo_verl.store.actor import get_or_create_store

            self.store = get_or_create_store(self.tcfg.store_name)
            if (self.tcfg.merge_identical_states and self.tcfg.min_update_rows <= 1
                    and self.tcfg.update_mode == "post_step_own_round"):
                logger.warning("algorithm.threespo.merge_identical_states=true has nothing to merge with one round per "
                               "update (one node per task); use update_mode=post_step | post_trajectory or "
                               "min_update_rows > 1")
        self.progress_worker = None
        if self.algo in ("spa", "spa_ppo"):
            self.progress_worker = create_progress_worker(self.algo_cfg.spa)
        if self.algo in TRAJECTORY_ALGOS:
            check_trajectory_config(config)
        if str(config.algorithm.adv_estimator) == "turn_gae" and not self.use_critic:
            raise ValueError("algorithm.adv_estimator=turn_gae reads the critic's values, but the critic is off: set "
                             "critic.enable=true (algorithm=ppo | spa_ppo set it)")

    # 3SPO's rounds need a buffer that waits for exactly one round's groups and hands a staged batch to _step_once
    def _build_replay_buffer(self) -> ReplayBuffer:
        s = self.config.trainer.v1.sampler
        return RoundReplayBuffer(trainer_mode="sync", trainer_config={}, max_off_policy_threshold=None,
                                 max_off_policy_strategy=s.get("max_off_policy_strategy", "drop"),
                                 sampler_kwargs=s.get("sampler_kwargs", {}), refill_fn=self._add_prompts_to_generate,
                                 train_batch_size=self.config.data.train_batch_size,
                                 gen_batch_size=self.config.data.get("gen_batch_size", None)
                                 or self.config.data.train_batch_size)

    # 3SPO replaces verl's prompt sampling by expansion rounds; every other algorithm keeps verl's step. Both end
    # by deciding the env-step schedule (validation, end of run) before verl saves the step's checkpoint
    def step(self, metrics: dict, timing_raw: dict) -> KVBatchMeta:
        if self.algo != "3spo":
            batch = super().step(metrics, timing_raw)
            metrics.update(self._episode_metrics(batch))  # counts the env steps the schedule reads
        else:
            from verl.utils.debug import marked_timer

            with marked_timer("explore", timing_raw, color="red"):
                batch, explore_metrics = self.explore()
            metrics.update(explore_metrics)
            self.replay_buffer.stage(batch)
            self.local_trigger_step = 0
            batch = self._step_once(metrics, timing_raw, sample_batch_size=0)
        self._val_now, self._stop_now = self._env_step_schedule()
        return batch

    # 3SPO's rows carry the old log-probs of their sampling time (a round's rows wait for their subtree to close,
    # and the actor may be updated meanwhile); the update only fills verl's padding rows
    def _compute_old_log_prob(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        if self.algo != "3spo" or self._bypass_mode():
            return super()._compute_old_log_prob(batch, metrics)
        metrics.update(padding_old_log_probs(batch))
        return batch

    def _round_old_log_probs(self, rows: KVBatchMeta, acc: dict) -> None:
        """The old log-probs (and entropies) of one round's rows, computed now by verl's actor pass: the weights
        that sampled them. In bypass mode the rollout's log-probs serve (they are of sampling time already)."""
        if not len(rows) or self._bypass_mode():
            return
        t0 = time.perf_counter()
        padded = upsample_batch_to_divisible_size(rows, actor_dp_size(self), self.tokenizer.eos_token_id)
        m: dict = {}
        super()._compute_old_log_prob(padded, m)
        pads = [k for k, t in zip(padded.keys, padded.tags) if is_padding(t)]
        if pads:
            tq.kv_clear(keys=pads, partition_id=padded.partition_id)
        acc["old_log_prob_s"].append(time.perf_counter() - t0)

    def _env_step_schedule(self) -> tuple[bool, bool]:
        """(validate, stop) after this step's update, from the run's cumulative env steps (``schedule``)."""
        return self.schedule.decide(int(self.counters["env_steps"]))

    def _env_budget_spent(self, acc: dict) -> bool:
        """Whether the rounds so far (``acc``) spent the run's env-step budget, or this is the run's last update by
        count: then the update releases every pending group (the open subtrees would otherwise never be trained)."""
        spent = int(self.counters["env_steps"]) + sum(acc.get("env_steps", []))
        return self.schedule.budget_spent(spent) or self.global_steps >= self.total_training_steps

    def _end_run_at_budget(self) -> None:
        """The env-step budget is spent: this update is the run's last (checkpointed when checkpoints are on)."""
        freq = int(self.config.trainer.save_freq)
        if freq > 0 and self.global_steps % freq != 0 and self.global_steps < self.total_training_steps:
            self._save_checkpoint()
        logger.info("env-step budget %s reached after %d env steps at update %d: the run ends",
                    self.schedule.total, self.counters["env_steps"], self.global_steps)
        self.total_training_steps = self.global_steps  # verl's loop ends after this step

    def _bypass_mode(self) -> bool:
        correction = self.config.algorithm.get("rollout_correction", None) or {}
        return bool(correction.get("bypass_mode", False))

    # each row's own step reward (not verl's copied session score) and the row metadata the estimators read
    def _compute_advantage(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        extras = step_rows(_extra_fields(batch))
        self._rescore_metrics: dict[str, float] = {}
        self._row_rewards_to_tq(batch, extras)
        metrics.update(self._rescore_metrics)
        with rm.row_metadata(self.row_metadata(batch, extras)):
            batch = super()._compute_advantage(batch, metrics)
        if self.mutation == "flip_advantage":
            self._flip_advantages(batch)
        return batch

    # the update's real row count decides its mini-batch plan (read by _get_required_batch_multiple below)
    def _balance_batch(self, batch: KVBatchMeta, metrics, logging_prefix="global_seqlen", keep_minibatch=False):
        self._update_rows = sum(not is_padding(t) for t in batch.tags)
        # env steps of this update not counted yet (3SPO's are, by explore): what the env-step rule of the plan reads
        self._update_env_steps = 0
        if self.algo != "3spo" and self.algo_cfg.env_steps_per_optimizer_step is not None:
            self._update_env_steps = episode_env_steps(step_rows(_extra_fields(real_rows(batch))))
        return super()._balance_batch(batch, metrics, logging_prefix=logging_prefix, keep_minibatch=keep_minibatch)

    # verl pads to a multiple of the configured mini-batch; this pads to K x b rows of the update's plan
    def _get_required_batch_multiple(self, dp_size: int) -> int:
        """The batch is padded to K x b rows (``minibatch_plan``): K optimizer steps of b rows each."""
        return self._plan_rows(dp_size)

    # the actor steps over b-row mini-batches of this update's plan, not the configured ppo_mini_batch_size
    def _update_actor(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        actor = self.config.actor_rollout_ref.actor
        with self._planned_mini_batches(actor, batch) as (k, b):
            out = super()._update_actor(batch, metrics)
        metrics.update(self._actor_update_metrics(k, b, len(batch)))
        return out

    # the critic's mini-batches follow the actor's plan: the same b-row mini-batches, K optimizer steps per epoch
    def _update_critic(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        critic = self.config.critic
        with self._planned_mini_batches(critic, batch) as (k, b):
            out = super()._update_critic(batch, metrics)
        metrics["critic/optimizer_steps"] = k * int(critic.ppo_epochs)
        metrics["critic/mini_batch_rows"] = b
        return out

    # the rollout probe after init: what the rollout engine serves before any update
    def on_init_end(self):
        super().on_init_end()
        self._run_probe()

    # after each weight sync: the rollout probe (it moves exactly when the served weights do), then the validation
    # and the end of run that the env-step schedule decided in step()
    def on_step_end(self):
        super().on_step_end()  # verl's weight sync into the rollout engine
        self._run_probe()
        if self._val_now:
            from verl.utils.debug import marked_timer

            with marked_timer("testing", self.timing_raw, color="green"):
                self.on_validate_begin()
                self._env_step_val = self._validate()
                self.on_validate_end()
        if self._stop_now:
            self._end_run_at_budget()

    # verl's per-data-source validation metrics plus the panel's success rate, overall and per task type
    def _val_metrics_update(self, data_sources, sample_uids, reward_extra_infos_dict, sample_turns,
                            expected_acc_counts=None) -> dict[str, float]:
        """verl's per-data-source validation metrics (data_source = ``<env>/<task type>``), plus the success rate
        over the whole panel and per task type under ``val-core/<env>/success[/<type>]``."""
        out = super()._val_metrics_update(data_sources, sample_uids, reward_extra_infos_dict, sample_turns,
                                          expected_acc_counts=expected_acc_counts)
        out.update(val_success_metrics(self.env_cfg, data_sources, reward_extra_infos_dict))
        return out

    # val_before_train of a fresh run: the step-0 point of metrics.jsonl
    def _validate(self, *args, **kwargs):
        out = super()._validate(*args, **kwargs)
        if self.global_steps == 0 and out:
            metrics_log.append(self.metrics_path, 0, dict(out), algorithm=self.algo)
        return out

    # this trainer's metrics on top of verl's, and every step's line in metrics.jsonl
    def _compute_metrics(self, batch, metrics, timing_raw, global_steps, epoch):
        metrics.update(self._env_step_val or {})
        self._env_step_val = None
        super()._compute_metrics(batch, metrics, timing_raw, global_steps, epoch)
        self._step_metrics(batch, metrics)
        metrics_log.append(self.metrics_path, global_steps, metrics, algorithm=self.algo)

    # this state goes in before verl's files and tracker: a kill never leaves the tracker at a folder without it
    def _save_checkpoint(self):
        self.save_threespo_state(self._global_step_folder())
        return super()._save_checkpoint()

    # verl restores the model, optimizer and dataloader; this restores the trees, counters and store next to them
    def _load_checkpoint(self):
        super()._load_checkpoint()
        if self.global_steps <= 0:
            return
        self.restore_threespo_state(self._resume_folder())


def padding_old_log_probs(batch: KVBatchMeta) -> dict[str, float]:
    """Zeros as the old log-probs and entropies of verl's padding rows of an update whose real rows carry theirs
    from sampling time (verl's padding copies the first real row's fields, which do not fit a one-token response;
    padding rows have an all-zero response mask, so the values never reach a loss). Returns ``actor/entropy``, the
    token mean of the real rows' sampling-time entropies (what verl's old-log-prob pass reports)."""
    import torch
    from tensordict import TensorDict
    from verl.workers.utils.padding import response_to_nested

    pads = [k for k, t in zip(batch.keys, batch.tags) if is_padding(t)]
    if pads:
        mask = tq.kv_batch_get(keys=pads, partition_id=batch.partition_id, select_fields=["response_mask"])
        mask = mask["response_mask"]
        width = max(mask.offsets().diff().tolist())
        zeros = torch.zeros(len(pads), width, dtype=torch.float32)
        tq.kv_batch_put(keys=pads, partition_id=batch.partition_id, fields=TensorDict(
            {"old_log_probs": response_to_nested(zeros, mask), "entropy": response_to_nested(zeros, mask)},
            batch_size=len(pads)))
    real = [k for k, t in zip(batch.keys, batch.tags) if not is_padding(t)]
    if not real:
        return {}
    ent = tq.kv_batch_get(keys=real, partition_id=batch.partition_id, select_fields=["entropy"])["entropy"]
    values = ent.values() if ent.is_nested else ent.flatten()
    return {"actor/entropy": float(values.float().mean()) if values.numel() else 0.0}


def bypass_with_constrained_decoding(config) -> str | None:
    """A warning when verl's bypass mode (the rollout engine's log-probs as the PPO old log-probs) meets
    ``env.constrain_actions=true``: vLLM then returns the log-probs of the *constrained* decoding (renormalised over
    what the action grammar allows), not of the model the actor trains, so the ratio pi_theta / pi_old starts below 1
    and clipping drops negative-advantage tokens. On the CPU testbed the rollout's log-probs differ from the actor's
    by a KL of 0.10-0.28 per token with the constraint and 4e-5 without it. None when the two are not combined."""
    correction = config.algorithm.get("rollout_correction", None) or {}
    if not correction.get("bypass_mode", False) or not typed.resolve_env(config.env).constrain_actions:
        return None
    return ("algorithm.rollout_correction.bypass_mode=true with env.constrain_actions=true: vLLM's log-probs are those "
            "of the constrained decoding, not of the policy the actor trains, so the PPO ratio starts below 1 and "
            "clipping drops negative-advantage tokens; use bypass with free decoding (env.constrain_actions=false) or "
            "let the actor recompute the old log-probs (bypass_mode=false)")


def check_trajectory_config(config) -> int:
    """Up-front checks of trajectory rows (``algorithm=ppo | spa_ppo``, one row per episode; returns the row's token
    budget L = ``rollout.prompt_length + rollout.response_length``). Each reply is capped at
    m = ``env.max_tokens_per_step`` (required, m <= ``rollout.response_length``); the agent loop keeps every row
    within L by dropping the oldest turns before a reply would not fit (``trajectory/turns_dropped``). L must fit
    the model's context (``rollout.max_model_len``, else ``max_position_embeddings``) and, with dynamic batch sizes,
    every ``*max_token_len_per_gpu`` that a whole row has to fit in."""
    rollout = config.actor_rollout_ref.rollout
    budget = int(rollout.prompt_length) + int(rollout.response_length)
    reply_cap = typed.resolve_env(config.env).max_tokens_per_step
    problems = []
    if not reply_cap:
        problems.append("env.max_tokens_per_step is null: set the cap of one reply (data.max_response_length is the "
                        "budget of the whole row after its first prompt)")
    elif int(reply_cap) > int(rollout.response_length):
        problems.append(f"env.max_tokens_per_step={reply_cap} exceeds data.max_response_length="
                        f"{rollout.response_length}, the budget of everything after the first prompt")
    limit = rollout.get("max_model_len", None)
    if limit is None:
        try:
            from transformers import AutoConfig

            hf = AutoConfig.from_pretrained(str(config.actor_rollout_ref.model.path))
            limit = getattr(hf, "max_position_embeddings", None)
        except (OSError, ValueError) as e:
            logger.warning("trajectory rows: could not read the model's context length (%s)", e)
    if limit is not None and budget > int(limit):
        problems.append(f"a row of data.max_prompt_length + data.max_response_length = {budget} tokens does not fit "
                        f"the model's context of {limit} tokens")
    arr = config.actor_rollout_ref
    for name, node, dyn, key in (
            ("actor_rollout_ref.actor", arr.actor, "use_dynamic_bsz", "ppo_max_token_len_per_gpu"),
            ("actor_rollout_ref.rollout", arr.rollout, "log_prob_use_dynamic_bsz", "log_prob_max_token_len_per_gpu"),
            ("actor_rollout_ref.ref", arr.ref, "log_prob_use_dynamic_bsz", "log_prob_max_token_len_per_gpu"),
            ("critic", config.critic, "use_dynamic_bsz", "ppo_max_token_len_per_gpu")):
        if node.get(dyn, False) and node.get(key, None) is not None and int(node.get(key)) < budget:
            problems.append(f"{name}.{key}={node.get(key)} is smaller than one row ({budget} tokens)")
    if problems:
        raise ValueError(f"algorithm={config.algorithm.name} (one row per episode): " + "; ".join(problems))
    return budget


def create_progress_worker(spa_cfg: typed.SPAConfig):
    """SPA's estimator worker (``algorithm.spa.estimator_path``), with the command that makes one if it is missing."""
    from threespo_verl.verl_glue.spa_worker import get_or_create_progress_worker

    path = spa_cfg.estimator_path
    if not path or not os.path.isdir(str(path)):
        raise FileNotFoundError(
            f"algorithm=spa needs a trained progress estimator: algorithm.spa.estimator_path={path!r} is not a folder. "
            "Make one with  threespo-verl spa collect --env ENV --model MODEL --out traj.jsonl  then  "
            "threespo-verl spa train-estimator --data traj.jsonl --model MODEL --out PE_DIR")
    return get_or_create_progress_worker(spa_cfg.worker_name, str(path), spa_cfg.max_length,
                                         num_gpus=spa_cfg.estimator_num_gpus)
