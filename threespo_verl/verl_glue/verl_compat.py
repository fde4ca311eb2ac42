"""The one place that knows verl's private API (verl 0.9.1, the v1 trainer with TransferQueue).

The glue subclasses ``PPOTrainerSync`` and verl's sync ``ReplayBuffer`` and reads rows straight out of
TransferQueue, so it depends on names verl does not promise to keep: underscore methods it overrides or calls,
attributes set by verl's ``__init__``, the row-key format of ``AgentLoopWorkerTQ``, the padding tag of
``upsample_batch_to_divisible_size`` and the checkpoint folder name. Everything of that kind is declared below, and
``tests/unit/test_verl_compat.py`` checks each declaration against the installed verl, so a verl upgrade that moves
one of them fails in that one test with a message naming what moved.

Declarations:

* ``TRAINER_OVERRIDES``: the trainer methods ``ThreeSPOTrainer`` overrides, with verl's parameter names (self
  excluded) exactly: an override must accept every call verl makes.
* ``TRAINER_CALLS`` / ``REPLAY_BUFFER_CALLS`` / ``LIBRARY_CALLS``: what the glue calls, with the parameter names it
  passes (each must be a parameter of verl's, in this order).
* ``REPLAY_BUFFER_OVERRIDES``: the replay-buffer methods ``RoundReplayBuffer`` overrides (exact).
* ``AGENT_LOOP_OVERRIDES``: ``StepRolloutAgentLoop.run`` (exact); ``AGENT_LOOP_RUN_KWARGS``: what it reads from
  the keyword arguments verl passes.
* ``TRAINER_ATTRIBUTES`` / ``REPLAY_BUFFER_ATTRIBUTES`` / ``AGENT_LOOP_ATTRIBUTES``: attributes verl's constructors
  set that the glue reads or writes.
* ``REGISTRIES``: verl's agent-loop and trainer-mode registries (``registry(kind)``), read by the plugin's checks.
* ``ROW_KEY_FORMAT``, ``PADDING_TAG``, ``ROLLOUT_N_COLUMN``, ``GLOBAL_STEP_FOLDER``: formats verl writes or reads.

The helpers below are the glue's only readers of those formats and of TransferQueue's ``extra_fields`` column.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import transfer_queue as tq
from omegaconf import open_dict
from transfer_queue import KVBatchMeta

# ---- declarations (checked against the installed verl by tests/unit/test_verl_compat.py) --------------------------

#: ``verl.trainer.ppo.v1.trainer_base.PPOTrainer`` (via ``PPOTrainerSync``) methods ThreeSPOTrainer overrides
TRAINER_OVERRIDES: dict[str, tuple[str, ...]] = {
    "__init__": ("config",),
    "_build_replay_buffer": (),
    "step": ("metrics", "timing_raw"),
    "_compute_old_log_prob": ("batch", "metrics"),
    "_compute_advantage": ("batch", "metrics"),
    "_balance_batch": ("batch", "metrics", "logging_prefix", "keep_minibatch"),
    "_get_required_batch_multiple": ("dp_size",),
    "_update_actor": ("batch", "metrics"),
    "_update_critic": ("batch", "metrics"),
    "on_init_end": (),
    "on_step_end": (),
    "_val_metrics_update": ("data_sources", "sample_uids", "reward_extra_infos_dict", "sample_turns",
                            "expected_acc_counts"),
    "_validate": (),
    "_compute_metrics": ("batch", "metrics", "timing_raw", "global_steps", "epoch"),
    "_save_checkpoint": (),
    "_load_checkpoint": (),
}
#: trainer methods the glue calls (beyond ``super()`` in the overrides above)
TRAINER_CALLS: dict[str, tuple[str, ...]] = {
    "_step_once": ("metrics", "timing_raw", "sample_batch_size"),
    "_fetch_one_gen_batch": (),
    "_submit_batch_to_rollout": ("batch",),
    "_add_prompts_to_generate": ("num_prompts",),
    "get_llm_client": (),
}
#: attributes of verl's trainer the glue reads (``trainer_mode``, ``local_trigger_step``: also writes)
TRAINER_ATTRIBUTES = ("config", "trainer_mode", "parameter_sync_step", "local_trigger_step", "global_steps",
                      "replay_buffer", "use_critic", "use_reference_policy", "tokenizer", "actor_rollout_wg",
                      "total_training_steps", "timing_raw")
#: how verl's ``_balance_batch`` reads the actor's data-parallel size (``actor_dp_size`` does the same): the
#: ``Worker`` method ``_query_dispatch_info``, which the worker group exposes, queried once and cached in the
#: worker group's ``_dispatch_info``
WORKER_CALLS: dict[str, tuple[str, ...]] = {"_query_dispatch_info": ("mesh_name",)}
WORKER_GROUP_ATTRIBUTES = ("_dispatch_info",)

#: ``verl.trainer.ppo.v1.replay_buffer.ReplayBuffer``: what RoundReplayBuffer overrides (exact) and calls
REPLAY_BUFFER_OVERRIDES: dict[str, tuple[str, ...]] = {
    "sample": ("global_steps", "partition_id", "batch_size"),
}
REPLAY_BUFFER_CALLS: dict[str, tuple[str, ...]] = {
    "__init__": ("trainer_mode", "trainer_config", "max_off_policy_threshold", "max_off_policy_strategy",
                 "sampler_kwargs", "poll_interval", "refill_fn", "train_batch_size", "gen_batch_size"),
    "_sync_metadata_from_transfer_queue": (),
    "_materialize_batch": ("partition_id", "selected_prompt_uids", "partition_snapshot"),
}
#: set in ReplayBuffer.__init__: partition -> {key: tag} and partition -> set of terminal group uids
REPLAY_BUFFER_ATTRIBUTES = ("partitions", "finished_keys", "failure_keys", "poll_interval")

#: ``verl.experimental.agent_loop.agent_loop.AgentLoopBase``: the agent loop's override (exact), the attributes it
#: reads, and the keyword arguments ``AgentLoopWorkerTQ`` passes to ``run`` that it reads (the prompt's columns
#: besides)
AGENT_LOOP_OVERRIDES: dict[str, tuple[str, ...]] = {"run": ("sampling_params", "kwargs")}
AGENT_LOOP_ATTRIBUTES = ("config", "rollout_config", "server_manager", "tokenizer", "apply_chat_template_kwargs")
AGENT_LOOP_RUN_KWARGS = ("uid", "session_id")

#: module-level functions and classes the glue calls, "module:qualname" -> parameter names it passes
LIBRARY_CALLS: dict[str, tuple[str, ...]] = {
    "transfer_queue:kv_batch_get": ("keys", "partition_id", "select_fields"),
    "transfer_queue:kv_batch_put": ("keys", "partition_id", "fields"),
    "transfer_queue:kv_clear": ("keys", "partition_id"),
    "transfer_queue:KVBatchMeta": ("keys", "tags", "partition_id", "extra_info"),
    "verl.utils.tensordict_utils:get_tensordict": ("tensor_dict",),
    "verl.utils.tensordict_utils:assign_non_tensor_data": ("tensor_dict", "key", "val"),
    "verl.workers.utils.padding:response_to_nested": ("tensor", "response_mask"),
    "verl.utils.checkpoint.checkpoint_manager:find_latest_ckpt_path": ("path",),
    "verl.utils.debug:marked_timer": ("name", "timing_raw", "color"),
    "verl.trainer.ppo.padding_utils:upsample_batch_to_divisible_size": ("batch", "batch_multiple", "eos_token_id"),
    "verl.trainer.ppo.v1.trainer_base:register_trainer": ("name",),
}

#: verl's registries the plugin looks itself up in ("module:name"; the agent-loop one is private)
REGISTRIES = {
    "agent_loop": "verl.experimental.agent_loop.agent_loop:_agent_loop_registry",
    "trainer": "verl.trainer.ppo.v1.trainer_base:TRAINER_REGISTRY",
}

#: TransferQueue key of one agent-loop output: ``AgentLoopWorkerTQ`` writes ``{uid}_{session_id}_{index}``, and
#: verl's replay buffer takes the group uid as ``key.split("_")[0]`` (so a uid must not contain "_")
ROW_KEY_FORMAT = "{uid}_{session_id}_{i}"
#: tag verl's ``upsample_batch_to_divisible_size`` sets on the rows it pads a batch with
PADDING_TAG = "is_padding"
#: prompt column ``AgentLoopWorkerTQ`` pops as the number of sessions of that prompt (rollout.n otherwise)
ROLLOUT_N_COLUMN = "__rollout_n__"
#: verl's checkpoint folder of one step, under ``trainer.default_local_dir``
GLOBAL_STEP_FOLDER = "global_step_{}"


# ---- helpers -------------------------------------------------------------------------------------------------------
def registry(kind: str):
    """verl's registry of ``kind`` ("agent_loop" | "trainer", ``REGISTRIES``): the mapping name -> registered."""
    import importlib

    module, _, name = REGISTRIES[kind].partition(":")
    return getattr(importlib.import_module(module), name)


def split_row_key(key: str) -> tuple[str, str, str]:
    """(uid, session, output index) of a TransferQueue row key (``ROW_KEY_FORMAT``)."""
    uid, session, idx = key.rsplit("_", 2)
    return uid, session, idx


def is_padding(tag: dict[str, Any]) -> bool:
    """Whether verl added this row to pad the batch (``PADDING_TAG``)."""
    return bool(tag.get(PADDING_TAG, False))


def global_step_folder(default_local_dir: str, global_steps: int) -> str:
    """verl's checkpoint folder of step ``global_steps`` (``GLOBAL_STEP_FOLDER``) under ``default_local_dir``."""
    return os.path.join(default_local_dir, GLOBAL_STEP_FOLDER.format(global_steps))


def actor_dp_size(trainer) -> int:
    """The actor's data-parallel size, read as verl's ``_balance_batch`` reads it (``WORKER_GROUP_CALLS``)."""
    wg = trainer.actor_rollout_wg
    if "actor" not in wg._dispatch_info:
        wg._dispatch_info["actor"] = wg._query_dispatch_info("actor")
    return max(wg._dispatch_info["actor"]) + 1


def concat_batches(batches: list[KVBatchMeta], partition_id: str = "train") -> KVBatchMeta:
    keys = [k for b in batches for k in b.keys]
    tags = [t for b in batches for t in b.tags]
    return KVBatchMeta(partition_id=partition_id, keys=keys, tags=tags)


def select_rows(batch: KVBatchMeta, keep: list[bool]) -> tuple[KVBatchMeta, list[str]]:
    """(the kept rows, the keys of the others)."""
    kept = KVBatchMeta(partition_id=batch.partition_id, keys=[k for k, m in zip(batch.keys, keep) if m],
                       tags=[t for t, m in zip(batch.tags, keep) if m])
    return kept, [k for k, m in zip(batch.keys, keep) if not m]


def real_rows(batch: KVBatchMeta) -> KVBatchMeta:
    """The batch without verl's padding rows."""
    return KVBatchMeta(partition_id=batch.partition_id,
                       keys=[k for k, t in zip(batch.keys, batch.tags) if not is_padding(t)],
                       tags=[t for t in batch.tags if not is_padding(t)])


def extra_fields(batch: KVBatchMeta) -> list[dict[str, Any]]:
    """Each row's ``extra_fields`` (the agent loop's ``StepRow``, as a dict), in ``batch.keys`` order."""
    if not len(batch):
        return []
    data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["extra_fields"])
    return [getattr(e, "data", e) for e in data.pop("extra_fields").tolist()]


@contextlib.contextmanager
def mini_batch_size(config, node, size: int) -> Iterator[None]:
    """Inside the block ``node.ppo_mini_batch_size`` (``node``: the actor's or the critic's config, inside
    ``config``) is ``size``; the configured value is restored afterwards.

    Why the config and not the batch: verl's worker reads the mini-batch size from the batch
    (``batch.extra_info["mini_batch_size"]``, popped in ``TrainingWorker.train_mini_batch``), but verl's
    ``_update_actor`` / ``_update_critic`` compute that entry from ``ppo_mini_batch_size`` x ``rollout.n`` and
    ``batch.extra_info.update(...)`` it immediately before dispatching to the workers, overwriting whatever the
    caller put there. Setting it on the batch would mean copying verl's whole ``_update_actor`` (its entropy and
    distillation flags included) or wrapping the worker group's dispatch; both couple tighter to verl than this. The
    change is confined to the driver's config object for the duration of one update call (the workers hold their
    own copies of the config and are never told), and the config logged at start-up is the configured one.
    ``tests/unit/test_verl_compat.py`` fails once verl stops reading the size from the config in ``_update_actor``
    / ``_update_critic``, the moment to switch to the batch.
    """
    saved = node.ppo_mini_batch_size
    with open_dict(config):
        node.ppo_mini_batch_size = size
    try:
        yield
    finally:
        with open_dict(config):
            node.ppo_mini_batch_size = saved
