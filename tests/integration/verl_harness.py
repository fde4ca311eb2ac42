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
    "trainer.total_training_steps=4",
    "data.seed=1",
    "data.max_prompt_length=4096",
]


def compose_config(model_path: Path, workdir: Path, overrides: list[str]):
    with initialize_config_module(config_module="threespo_verl.config", version_base=None):
        cfg = compose(config_name="threespo_trainer", overrides=[
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


def build(model_path: Path, workdir: Path, overrides: list[str], policy=None, seed: int = 0) -> Rig:
    """A ThreeSPOTrainer with its dataloader and a real agent-loop manager over a scripted client."""
    from transformers import AutoTokenizer
    from verl.trainer.ppo.v1 import AgentLoopManagerTQ

    from threespo_verl.rollout.scripted import ScriptedLLMClient
    from threespo_verl.verl_glue.trainer import ThreeSPOTrainer

    cfg = compose_config(model_path, workdir, overrides)
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


def shutdown(rig: Rig) -> None:
    import ray

    for w in getattr(rig.manager, "agent_loop_workers", []):
        ray.kill(w)
