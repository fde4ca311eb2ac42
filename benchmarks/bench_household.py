"""Household env speed: reset time and steps/s (oracle and random-admissible policies) on one core.

Run: ``python benchmarks/bench_household.py``. Goal (DESIGN §4): >= 1000 steps/s. Measured, never asserted.
"""

from __future__ import annotations

import random
import time

from threespo_verl.envs import make


def bench_reset(n: int = 200) -> float:
    env = make("household", max_steps=100)
    tasks = env.tasks("train")[:n]
    t0 = time.perf_counter()
    for t in tasks:
        env.reset(t)
    return (time.perf_counter() - t0) / len(tasks)


def bench_steps(n_tasks: int = 100, policy: str = "random") -> float:
    env = make("household", max_steps=100)
    rng = random.Random(0)
    steps, elapsed = 0, 0.0
    for t in env.tasks("train")[:n_tasks]:
        plan = env.oracle_actions(t) if policy == "oracle" else None
        obs, _info = env.reset(t)
        t0 = time.perf_counter()
        done, i = False, 0
        while not done:
            a = plan[i] if plan is not None and i < len(plan) else rng.choice(obs.admissible_actions)
            obs, _, terminated, truncated, _ = env.step(a)
            done = terminated or truncated
            i += 1
            steps += 1
        elapsed += time.perf_counter() - t0
    return steps / elapsed


if __name__ == "__main__":
    print(f"household reset: {bench_reset() * 1e6:.0f} us/task")
    print(f"household oracle policy: {bench_steps(policy='oracle'):,.0f} steps/s")
    print(f"household random policy: {bench_steps(policy='random'):,.0f} steps/s (goal >= 1000)")
