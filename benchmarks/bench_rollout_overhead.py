"""Agent-loop overhead per env step: 3SPO node expansions vs trajectory mode (GRPO/GiGPO), side by side in one run.

    python benchmarks/bench_rollout_overhead.py [--tasks 16] [--max-steps 30] [--group 8]

Runs the real ``threespo_step`` agent loop (``verl_glue/agent_loop.py``, one instance per session as verl makes
them) in this process against a zero-latency scripted client (``ScriptedLLMClient``: no model, so what is measured
is the loop itself: prompt rendering and tokenisation, parsing, environment steps and restores, the Eq.1-3 scoring
with its round trip to the state-store actor, and output assembly). 3SPO expands every tree's head once per round,
feeds the rows back into the trees as the trainer does, and commits the store after each round; trajectory mode
plays G episodes per task. Same household tasks, same env-step budget per task (G x H).

Prints CPU seconds per env step for both modes and their ratio, and the fraction of 3SPO's env steps that had to
be replayed to restore nodes (goal <= 10%).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path


def build_loop_factory(model: Path, max_steps: int, group: int, store_name: str):
    from hydra import compose, initialize_config_module
    from transformers import AutoTokenizer
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap

    from threespo_verl.testing import ScriptedLLMClient, ScriptedPolicy, household_plans
    from threespo_verl.envs import make
    from threespo_verl.verl_glue.agent_loop import StepRolloutAgentLoop
    from threespo_verl.verl_glue.dataset import TaskDataset

    with initialize_config_module(config_module="threespo_verl.config", version_base=None):
        cfg = compose(config_name="threespo_trainer", overrides=[
            f"actor_rollout_ref.model.path={model}", f"env.max_steps={max_steps}", "data.max_prompt_length=8192",
            f"algorithm.threespo.g_max={group}", f"algorithm.threespo.store_name={store_name}",
            "actor_rollout_ref.rollout.calculate_log_probs=False"])
    tok = AutoTokenizer.from_pretrained(model)
    tasks = make("household").tasks("test")
    client = ScriptedLLMClient(str(model), seed=0,
                               policy=ScriptedPolicy(plans=household_plans(tasks)))

    def make_loop():
        return StepRolloutAgentLoop(trainer_config=DictConfigWrap(cfg), server_manager=client, tokenizer=tok,
                                    processor=None, dataset_cls=TaskDataset, data_config=DictConfigWrap(cfg.data),
                                    hf_model_type="qwen2")

    return make_loop, cfg


async def run_3spo(make_loop, tasks, budget, g_max, store):
    import ray

    from threespo_verl.rollout.tree import Frontiers
    from threespo_verl.verl_glue.dataset import REQUEST_KEY
    from threespo_verl.verl_glue.step_row import step_rows
    from threespo_verl.verl_glue.trainer import apply_node_rows, new_round_metrics, node_request

    frontiers = Frontiers(budget)
    frontiers.add(tasks)
    cpu, m, rnd = 0.0, new_round_metrics(), 0
    params = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": False}
    while frontiers.trees:
        for tree, node in frontiers.requests():
            kwargs = {REQUEST_KEY: json.dumps(node_request(tree, node, rnd, g_max)), "uid": uuid.uuid4().hex,
                      "session_id": 0}
            t0 = time.process_time()
            outs = await make_loop().run(params, **kwargs)
            apply_node_rows(tree, node, step_rows([o.extra_fields for o in outs]), m)
            cpu += time.process_time() - t0
        ray.get(store.commit.remote())
        rnd += 1
        frontiers.retire()
    return cpu, m["env_steps"], m["replayed"], rnd


async def run_episodes(make_loop, tasks, group):
    from threespo_verl.verl_glue.dataset import REQUEST_KEY, episode_request

    cpu, steps = 0.0, 0
    params = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": False}
    for task in tasks:
        uid = uuid.uuid4().hex
        for session in range(group):
            t0 = time.process_time()
            outs = await make_loop().run(params, **{REQUEST_KEY: episode_request(task), "uid": uid,
                                                    "session_id": session})
            cpu += time.process_time() - t0
            steps += len(outs)
    return cpu, steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=16)
    ap.add_argument("--max-steps", type=int, default=30)
    ap.add_argument("--group", type=int, default=8)
    a = ap.parse_args()

    import ray

    from threespo_verl.envs.panels import panel
    from threespo_verl.models import build_tiny
    from threespo_verl.store.actor import get_or_create_store

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "tiny"
        build_tiny(model)  # only its tokenizer is used: the scripted client replaces the model
        name = f"bench-store-{uuid.uuid4().hex[:6]}"
        store = get_or_create_store(name)
        make_loop, _cfg = build_loop_factory(model, a.max_steps, a.group, name)
        tasks = list(panel("household", "test").tasks)[: a.tasks]
        budget = a.group * a.max_steps
        t0 = time.perf_counter()
        cpu_t, steps_t, replayed, rounds = asyncio.run(run_3spo(make_loop, tasks, budget, a.group, store))
        wall_t = time.perf_counter() - t0
        t0 = time.perf_counter()
        cpu_e, steps_e = asyncio.run(run_episodes(make_loop, tasks, a.group))
        wall_e = time.perf_counter() - t0
    ray.shutdown()
    print(f"household | {len(tasks)} tasks | budget {budget} env steps/task (G={a.group} x H={a.max_steps}) | "
          f"zero-latency ScriptedLLMClient")
    print(f"{'mode':<12} {'env steps':>9} {'CPU s':>7} {'CPU ms/step':>11} {'wall s':>7}")
    print(f"{'3spo':<12} {steps_t:>9} {cpu_t:>7.2f} {1e3 * cpu_t / steps_t:>11.3f} {wall_t:>7.2f}   ({rounds} rounds)")
    print(f"{'trajectory':<12} {steps_e:>9} {cpu_e:>7.2f} {1e3 * cpu_e / steps_e:>11.3f} {wall_e:>7.2f}")
    print(f"replayed env steps (3spo): {replayed} of {steps_t} = {100 * replayed / max(steps_t, 1):.1f}% "
          f"(goal <= 10%)")
    print(f"CPU per env step 3spo/trajectory = {(cpu_t / steps_t) / (cpu_e / steps_e):.2f}x")


if __name__ == "__main__":
    main()
