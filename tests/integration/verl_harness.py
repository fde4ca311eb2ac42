"""Builds the threespo trainer mode on real verl machinery for CPU integration tests: Ray, TransferQueue, verl's
``AgentLoopManagerTQ`` / ``AgentLoopWorkerTQ`` running the ``threespo_step`` agent loop, verl's replay buffer and the
trainer's advantage step. Only the model is replaced: ``ScriptedLLMClient`` (a scripted policy behind verl's
``LLMServerClient.generate`` interface). The FSDP actor is not started (that is the e2e test's job).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from hydra import compose, initialize_config_module
from omegaconf import OmegaConf, open_dict

BASE_OVERRIDES = [
    "data.train_batch_size=2",
    "env.max_steps=6",
    "actor_rollout_ref.rollout.agent.num_workers=1",
    "actor_rollout_ref.rollout.n=1",
    "actor_rollout_ref.rollout.calculate_log_probs=False",
    "algorithm.threespo.sample_seed=0",
    # each round's groups in its own update, Eq.2 from the round's snapshot (the paper's literal form): these tests
    # check rounds one at a time; the default (post_step: groups released when their subtree closes, rescored) is
    # checked by test_post_step_release_through_the_trainer and trained end to end by tests/e2e/test_learning.py
    "algorithm.threespo.update_mode=post_step_own_round",
    "algorithm.threespo.reward_stats=round",
    "trainer.total_training_steps=4",
    "data.seed=1",
    "data.max_prompt_length=4096",
]


def compose_config(model_path: Path, workdir: Path, overrides: list[str], config_name: str = "threespo_trainer"):
    with initialize_config_module(config_module="threespo_verl.config", version_base=None):
        cfg = compose(config_name=config_name, overrides=[
            f"actor_rollout_ref.model.path={model_path}", f"trainer.default_local_dir={workdir / 'ckpt'}",
            *BASE_OVERRIDES, *overrides])
    with open_dict(cfg):
        cfg.transfer_queue.enable = True
    OmegaConf.resolve(cfg)
    return cfg


@dataclasses.dataclass
class Rig:
    trainer: object
    manager: object
    config: object


def build(model_path: Path, workdir: Path, overrides: list[str], policy=None, seed: int = 0,
          config_name: str = "threespo_trainer") -> Rig:
    """A ThreeSPOTrainer with its dataloader and a real agent-loop manager over a scripted client."""
    from transformers import AutoTokenizer
    from verl.trainer.ppo.v1 import AgentLoopManagerTQ

    from threespo_verl.testing import ScriptedLLMClient
    from threespo_verl.verl_glue.trainer import ThreeSPOTrainer

    cfg = compose_config(model_path, workdir, overrides, config_name)
    trainer = ThreeSPOTrainer(cfg)
    trainer.tokenizer = AutoTokenizer.from_pretrained(model_path)
    trainer.processor = None
    trainer._init_dataloader()
    client = ScriptedLLMClient(str(model_path), seed=seed, policy=policy)
    manager = AgentLoopManagerTQ.create(config=cfg, llm_client=client, teacher_client=None,
                                        reward_loop_worker_handles=None)
    trainer.agent_loop_manager = manager
    trainer.global_steps = 1
    return Rig(trainer, manager, cfg)


def attach_critic(rig: Rig):
    """verl's real critic for ``rig``'s trainer: a ``TrainingWorker`` value model in a Ray worker group (one rank,
    the CPU platform, FSDP2 in fp32), built and given verl's value loss the way verl's trainer ``_setup`` does;
    ``trainer.critic_wg`` then serves ``_compute_values`` and ``_update_critic``. Ray needs one (logical) GPU slot
    and ``VERL_PLATFORM=cpu`` in its workers' environment."""
    from functools import partial

    import ray
    from verl.single_controller.ray import RayClassWithInitArgs, RayResourcePool, RayWorkerGroup
    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers.engine_workers import TrainingWorker, TrainingWorkerConfig
    from verl.workers.utils.losses import value_loss

    critic_cfg = omega_conf_to_dataclass(rig.config.critic)
    critic_cfg.engine.infer_max_token_len_per_gpu = critic_cfg.ppo_infer_max_token_len_per_gpu
    critic_cfg.engine.max_token_len_per_gpu = critic_cfg.ppo_infer_max_token_len_per_gpu
    worker_cfg = TrainingWorkerConfig(model_type="value_model", model_config=critic_cfg.model,
                                      engine_config=critic_cfg.engine, optimizer_config=critic_cfg.optim,
                                      checkpoint_config=critic_cfg.checkpoint)
    pool = RayResourcePool([1], use_gpu=True, max_colocate_count=1)
    wg = RayWorkerGroup(resource_pool=pool, ray_cls_with_init=RayClassWithInitArgs(cls=ray.remote(TrainingWorker),
                                                                                   config=worker_cfg),
                        device_name="cpu")
    wg.reset()
    wg.set_loss_fn(partial(value_loss, config=critic_cfg))
    rig.trainer.critic_wg = wg
    rig.trainer.use_critic = True
    return wg


def shutdown(rig: Rig) -> None:
    import ray

    for w in getattr(rig.manager, "agent_loop_workers", []):
        ray.kill(w)


def constant_progress_estimator(base, out, bias: float):
    """A real estimator (token-classification head on the tiny model) whose head reads c = ``bias`` at every
    readout: weight 0, bias ``bias``. Each step's c_t is then known by hand, whatever the trajectory."""
    import torch

    from threespo_verl.spa.progress import ProgressEstimator

    pe = ProgressEstimator.from_pretrained(base, device="cpu")
    with torch.no_grad():
        pe.model.score.weight.zero_()
        pe.model.score.bias.fill_(bias)
    pe.save_pretrained(out)
    return out


def extras(batch):
    """The rows' extra fields (``StepRow`` dicts) of a TransferQueue batch, in key order."""
    from threespo_verl.verl_glue.trainer import _extra_fields

    return _extra_fields(batch)


def fetch(batch, field):
    """One TransferQueue field of every row of ``batch``, as a list in key order."""
    import transfer_queue as tq

    data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=[field])
    return [t for t in data[field]]
