"""The private verl API the glue relies on (``threespo_verl/verl_glue/verl_compat.py``) against the installed verl.

A verl upgrade that renames a hook, changes its parameters, drops an attribute or changes a key format fails
``test_declared_private_api_matches_installed_verl`` with one line per thing that moved."""

from __future__ import annotations

import importlib
import inspect
import re

import pytest
from omegaconf import OmegaConf

from threespo_verl.verl_glue import row_meta as rm
from threespo_verl.verl_glue import verl_compat as vc


def _params(fn) -> tuple[str, ...]:
    """Parameter names of ``fn`` without ``self`` (``*args`` / ``**kwargs`` by their names)."""
    return tuple(p for p in inspect.signature(fn).parameters if p != "self")


def _is_subsequence(wanted: tuple[str, ...], have: tuple[str, ...]) -> bool:
    it = iter(have)
    return all(name in it for name in wanted)


def _check_methods(cls, declared: dict[str, tuple[str, ...]], table: str, exact: bool) -> list[str]:
    problems = []
    for name, params in declared.items():
        fn = getattr(cls, name, None)
        if fn is None:
            problems.append(f"{cls.__name__}.{name} is gone (verl_compat.{table})")
            continue
        have = _params(fn)
        ok = have == params if exact else _is_subsequence(params, have)
        if not ok:
            problems.append(f"{cls.__name__}.{name}{have}: the glue expects parameters {params} "
                            f"({'exactly' if exact else 'in this order'}; verl_compat.{table})")
    return problems


def _check_assigned(sources: str, owner: str, names: tuple[str, ...], table: str) -> list[str]:
    return [f"{owner} no longer sets self.{name} (verl_compat.{table})" for name in names
            if not re.search(rf"self\.{name}\s*(:[^=\n]*)?=[^=]", sources)]


def _check_in(needle: str, source: str, where: str, table: str) -> list[str]:
    return [] if needle in source else [f"{where} no longer contains {needle!r} (verl_compat.{table})"]


def test_declared_private_api_matches_installed_verl():
    from verl.experimental.agent_loop import agent_loop as al
    from verl.trainer.ppo import padding_utils
    from verl.trainer.ppo.v1 import agent_loop_tq, replay_buffer, trainer_base, trainer_sync
    from verl.utils.checkpoint.checkpoint_manager import find_latest_ckpt_path
    from verl.workers import engine_workers

    trainer_cls = trainer_sync.PPOTrainerSync
    problems = []
    problems += _check_methods(trainer_cls, vc.TRAINER_OVERRIDES, "TRAINER_OVERRIDES", exact=True)
    problems += _check_methods(trainer_cls, vc.TRAINER_CALLS, "TRAINER_CALLS", exact=False)
    problems += _check_methods(replay_buffer.ReplayBuffer, vc.REPLAY_BUFFER_OVERRIDES, "REPLAY_BUFFER_OVERRIDES",
                               exact=True)
    problems += _check_methods(replay_buffer.ReplayBuffer, vc.REPLAY_BUFFER_CALLS, "REPLAY_BUFFER_CALLS",
                               exact=False)
    problems += _check_methods(al.AgentLoopBase, vc.AGENT_LOOP_OVERRIDES, "AGENT_LOOP_OVERRIDES", exact=True)
    from verl.single_controller.base.worker import Worker

    problems += _check_methods(Worker, vc.WORKER_CALLS, "WORKER_CALLS", exact=False)
    wg_src = inspect.getsource(importlib.import_module("verl.single_controller.base.worker_group"))
    wg_src += inspect.getsource(importlib.import_module("verl.single_controller.ray.base"))
    problems += _check_assigned(wg_src, "RayWorkerGroup", vc.WORKER_GROUP_ATTRIBUTES, "WORKER_GROUP_ATTRIBUTES")
    problems += _check_in("max(dp_rank_mapping) + 1", inspect.getsource(trainer_base.PPOTrainer._balance_batch),
                          "PPOTrainer._balance_batch (how the actor's dp size is read)", "actor_dp_size")
    for spec, params in vc.LIBRARY_CALLS.items():
        module, _, name = spec.partition(":")
        fn = getattr(importlib.import_module(module), name, None)
        if fn is None:
            problems.append(f"{spec} is gone (verl_compat.LIBRARY_CALLS)")
        elif not _is_subsequence(params, _params(fn)):
            problems.append(f"{spec}{_params(fn)}: the glue passes {params} (verl_compat.LIBRARY_CALLS)")

    for kind, spec in vc.REGISTRIES.items():
        module, _, name = spec.partition(":")
        if not isinstance(getattr(importlib.import_module(module), name, None), dict):
            problems.append(f"verl's {kind} registry {spec} is gone (verl_compat.REGISTRIES)")

    trainer_src = inspect.getsource(trainer_base) + inspect.getsource(trainer_sync)
    problems += _check_assigned(trainer_src, "PPOTrainer", vc.TRAINER_ATTRIBUTES, "TRAINER_ATTRIBUTES")
    problems += _check_assigned(inspect.getsource(replay_buffer.ReplayBuffer.__init__), "ReplayBuffer.__init__",
                                vc.REPLAY_BUFFER_ATTRIBUTES, "REPLAY_BUFFER_ATTRIBUTES")
    problems += _check_assigned(inspect.getsource(al.AgentLoopBase.__init__), "AgentLoopBase.__init__",
                                vc.AGENT_LOOP_ATTRIBUTES, "AGENT_LOOP_ATTRIBUTES")

    tq_src = inspect.getsource(agent_loop_tq)
    problems += _check_in(f'f"{vc.ROW_KEY_FORMAT}"', tq_src, "AgentLoopWorkerTQ's row keys", "ROW_KEY_FORMAT")
    problems += _check_in('key.split("_")[0]', inspect.getsource(replay_buffer), "ReplayBuffer's group uid",
                          "ROW_KEY_FORMAT")
    problems += _check_in(f'prompt.pop("{vc.ROLLOUT_N_COLUMN}"', tq_src, "AgentLoopWorkerTQ", "ROLLOUT_N_COLUMN")
    for kw in vc.AGENT_LOOP_RUN_KWARGS:
        problems += _check_in(f'kwargs["{kw}"]', tq_src, "AgentLoopWorkerTQ's run kwargs", "AGENT_LOOP_RUN_KWARGS")
    problems += _check_in(f"{vc.PADDING_TAG}=True", inspect.getsource(padding_utils), "verl's padding_utils (the tag "
                          "of upsample_batch_to_divisible_size's rows)", "PADDING_TAG")
    problems += _check_in(f'tag.get("{vc.PADDING_TAG}", False)', trainer_src, "PPOTrainer", "PADDING_TAG")
    if rm.IS_PADDING != vc.PADDING_TAG:
        problems.append(f"row_meta.IS_PADDING={rm.IS_PADDING!r} is not verl's padding tag {vc.PADDING_TAG!r}")
    fmt = inspect.signature(find_latest_ckpt_path).parameters.get("directory_format")
    if fmt is None or fmt.default != vc.GLOBAL_STEP_FOLDER:
        problems.append(f"find_latest_ckpt_path's directory_format is {fmt} (verl_compat.GLOBAL_STEP_FOLDER)")
    problems += _check_in('f"global_step_{self.global_steps}"',
                          inspect.getsource(trainer_base.PPOTrainer._save_checkpoint), "PPOTrainer._save_checkpoint",
                          "GLOBAL_STEP_FOLDER")

    # verl_compat.mini_batch_size: the size goes through the config because verl's updates read it from there and
    # overwrite batch.extra_info with it; once that changes, the size should travel with the batch instead
    actor_src = inspect.getsource(trainer_base.PPOTrainer._update_actor)
    critic_src = inspect.getsource(trainer_base.PPOTrainer._update_critic)
    problems += _check_in("self.config.actor_rollout_ref.actor.ppo_mini_batch_size", actor_src,
                          "PPOTrainer._update_actor", "mini_batch_size")
    problems += _check_in("self.config.critic.ppo_mini_batch_size", critic_src, "PPOTrainer._update_critic",
                          "mini_batch_size")
    for where, src in (("PPOTrainer._update_actor", actor_src), ("PPOTrainer._update_critic", critic_src)):
        problems += _check_in("batch.extra_info.update(extra_info)", src, where, "mini_batch_size")
    problems += _check_in('tu.pop(data, key="mini_batch_size"',
                          inspect.getsource(engine_workers.TrainingWorker.train_mini_batch),
                          "TrainingWorker.train_mini_batch", "mini_batch_size")
    assert not problems, "verl's private API moved:\n  " + "\n  ".join(problems)


def test_overrides_are_declared():
    """Every verl method ThreeSPOTrainer / RoundReplayBuffer / the agent loop override is declared in verl_compat."""
    from verl.experimental.agent_loop.agent_loop import AgentLoopBase
    from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer
    from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

    from threespo_verl.verl_glue.agent_loop import StepRolloutAgentLoop
    from threespo_verl.verl_glue.rounds import RoundReplayBuffer
    from threespo_verl.verl_glue.trainer import ThreeSPOTrainer

    def overridden(cls, base):
        own = {n for k in cls.__mro__ if k not in base.__mro__ and k is not object for n in vars(k)}
        return {n for n in own if callable(getattr(base, n, None)) and (not n.startswith("__") or n == "__init__")}

    assert overridden(ThreeSPOTrainer, PPOTrainerSync) == set(vc.TRAINER_OVERRIDES)
    assert overridden(RoundReplayBuffer, ReplayBuffer) - {"__init__"} == set(vc.REPLAY_BUFFER_OVERRIDES)
    assert overridden(StepRolloutAgentLoop, AgentLoopBase) == set(vc.AGENT_LOOP_OVERRIDES)


def test_helpers():
    key = vc.ROW_KEY_FORMAT.format(uid="0af3", session_id=2, i=11)
    assert vc.split_row_key(key) == ("0af3", "2", "11")
    assert vc.is_padding({vc.PADDING_TAG: True}) and not vc.is_padding({}) and not vc.is_padding({"seq_len": 3})
    assert vc.global_step_folder("/ckpt", 7) == "/ckpt/global_step_7"

    cfg = OmegaConf.create({"actor": {"ppo_mini_batch_size": 16}})
    OmegaConf.set_struct(cfg, True)
    with vc.mini_batch_size(cfg, cfg.actor, 3):
        assert cfg.actor.ppo_mini_batch_size == 3
    assert cfg.actor.ppo_mini_batch_size == 16
    with pytest.raises(RuntimeError), vc.mini_batch_size(cfg, cfg.actor, 5):
        raise RuntimeError
    assert cfg.actor.ppo_mini_batch_size == 16


def test_every_private_trainer_name_the_glue_uses_is_declared():
    """A ``self._name`` in the trainer's modules that verl's trainer class defines (and the glue does not) is
    declared in verl_compat, so the declarations cannot fall behind the code."""
    from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

    from threespo_verl.verl_glue import checkpoint, minibatch, rewards, rounds, train_metrics, trainer

    ours = {n for k in trainer.ThreeSPOTrainer.__mro__ if k.__module__.startswith("threespo_verl") for n in vars(k)}
    declared = set(vc.TRAINER_OVERRIDES) | set(vc.TRAINER_CALLS) | set(vc.TRAINER_ATTRIBUTES)
    used = set()
    for module in (checkpoint, minibatch, rewards, rounds, train_metrics, trainer):
        used |= set(re.findall(r"\bself\.(_\w+)", inspect.getsource(module)))
    verls = {n for n in used if hasattr(PPOTrainerSync, n) and (n not in ours or n in vc.TRAINER_OVERRIDES)}
    assert verls - declared == set(), f"verl trainer names used but not declared in verl_compat: {verls - declared}"

    from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer

    src = inspect.getsource(rounds.RoundReplayBuffer)
    used = set(re.findall(r"\bself\.(\w+)", src)) - set(vars(rounds.RoundReplayBuffer)) - {"_staged"}
    declared = set(vc.REPLAY_BUFFER_OVERRIDES) | set(vc.REPLAY_BUFFER_CALLS) | set(vc.REPLAY_BUFFER_ATTRIBUTES)
    assert used - declared == set(), f"ReplayBuffer names used but not declared in verl_compat: {used - declared}"
