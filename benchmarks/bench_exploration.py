"""State exploration: 3SPO's branching tree search vs GRPO's independent episodes, side by side in one run.

    python benchmarks/bench_exploration.py --env household [--tasks 32] [--seeds 3]
    python benchmarks/bench_exploration.py --env alfworld  [--tasks 4] [--max-steps 20]     (valid_seen games)

Both sides get the same env-step budget per task (G x H: GRPO plays G = 8 episodes of at most H steps; 3SPO's tree
may spend G x H env steps) and the same fixed stochastic scripted policy (``threespo_verl/testing.py``: a random choice
among the admissible actions, biased towards the task's known solution: the household oracle, ALFWorld's stored
walkthrough), seeded identically. 3SPO runs the same code the trainer runs (``rollout/local.py``: one expansion per
tree per round, statistics committed after every round); GRPO plays its episodes with the same prompt, parser and
environment. Printed per seed and in total: env steps spent, unique states visited (distinct states per task,
summed over tasks) and tasks solved (at least one winning trajectory/episode). The last line is the ratio of unique
states 3SPO / GRPO (the 3SPO paper reports 2.4x; this prints what we measure).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from threespo_verl.envs import make
from threespo_verl.envs.panels import panel
from threespo_verl.rollout.expand import ScoreParams
from threespo_verl.rollout.local import explore_3spo, run_episodes
from threespo_verl.testing import ScriptedPolicy, household_plans, scripted_sampler
from threespo_verl.store.state_store import StateStore


def setup(env_name: str, n_tasks: int, max_steps: int, data: Path | None, scratch: Path):
    if env_name == "household":
        tasks = list(panel("household", "test").tasks)[:n_tasks]
        return tasks, (lambda: make("household", max_steps=max_steps)), household_plans(tasks), "household test panel"
    if env_name == "alfworld":
        import sys

        sys.path.insert(0, str(Path(__file__).parent))
        from bench_envs import resolve_data

        folder = resolve_data("alfworld", data, scratch)
        if folder is None:
            raise SystemExit("ALFWorld data not found: run `threespo-verl setup alfworld` (or pass --data DIR)")
        tasks = list(panel("alfworld", "valid_seen", data_dir=folder).tasks)[:n_tasks]
        env = make("alfworld", data_dir=folder, max_steps=max_steps)
        plans = {env.reset(t)[0].goal: env.walkthrough(t) for t in tasks}
        env.close()
        return tasks, (lambda: make("alfworld", data_dir=folder, max_steps=max_steps)), plans, "valid_seen games"
    raise SystemExit(f"--env must be household or alfworld, got {env_name!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default="household", choices=("household", "alfworld"))
    ap.add_argument("--tasks", type=int, default=None, help="tasks (default: household 32, alfworld 4)")
    ap.add_argument("--max-steps", type=int, default=None, help="H (default: household 30, alfworld 20)")
    ap.add_argument("--group", type=int, default=8, help="G: GRPO's episodes per task = 3SPO's g_max")
    ap.add_argument("--g-max", type=int, default=None, help="3SPO's G_max (default: = --group)")
    ap.add_argument("--seeds", type=int, default=None, help="policy seeds (default: household 3, alfworld 1)")
    ap.add_argument("--data", type=Path, default=None, help="ALFWorld data folder (default: the data home)")
    a = ap.parse_args()
    alf = a.env == "alfworld"
    n_tasks = a.tasks or (4 if alf else 32)
    h = a.max_steps or (20 if alf else 30)
    seeds = a.seeds or (1 if alf else 3)
    budget = a.group * h
    with tempfile.TemporaryDirectory() as scratch:
        tasks, factory, plans, where = setup(a.env, n_tasks, h, a.data, Path(scratch))
        policy = ScriptedPolicy(plans=plans)
        print(f"env {a.env} | {len(tasks)} tasks ({where}) | budget {budget} env steps per task (G={a.group} x H={h})"
              f" | 3SPO G_max={a.g_max or a.group} | ScriptedPolicy(goal/plan-biased), seeds 0..{seeds - 1}")
        print(f"{'seed':>4} | {'3SPO env steps':>14} {'states':>7} {'solved':>6} {'replayed':>8} {'s':>6} | "
              f"{'GRPO env steps':>14} {'states':>7} {'solved':>6} {'s':>6}")
        tot = {"t_steps": [], "t_states": [], "t_solved": [], "g_steps": [], "g_states": [], "g_solved": []}
        for seed in range(seeds):
            t0 = time.perf_counter()
            r = explore_3spo(tasks, factory, scripted_sampler(policy, seed), StateStore(),
                             ScoreParams(g_max=a.g_max or a.group), budget=budget, max_envs=1024)
            t_s = time.perf_counter() - t0
            t_states = sum(len(t.state_keys()) for t in r.trees)
            t_solved = sum(t.solved for t in r.trees)
            t0 = time.perf_counter()
            e = run_episodes(tasks, factory, scripted_sampler(policy, seed), group_size=a.group)
            g_s = time.perf_counter() - t0
            g_states = sum(len(s) for s in e.states.values())
            g_solved = sum(e.solved.values())
            print(f"{seed:>4} | {r.env_steps:>14} {t_states:>7} {t_solved:>6} {r.replayed_steps:>8} {t_s:>6.1f} | "
                  f"{e.env_steps:>14} {g_states:>7} {g_solved:>6} {g_s:>6.1f}", flush=True)
            for k, v in (("t_steps", r.env_steps), ("t_states", t_states), ("t_solved", t_solved),
                         ("g_steps", e.env_steps), ("g_states", g_states), ("g_solved", g_solved)):
                tot[k].append(v)
        m = {k: statistics.mean(v) for k, v in tot.items()}
        print(f"mean | {m['t_steps']:>14.0f} {m['t_states']:>7.1f} {m['t_solved']:>6.1f} {'':>8} {'':>6} | "
              f"{m['g_steps']:>14.0f} {m['g_states']:>7.1f} {m['g_solved']:>6.1f}")
        print(f"tasks solved 3spo/grpo = {m['t_solved']:.1f}/{m['g_solved']:.1f}")
        print(f"unique states 3spo/grpo = {m['t_states'] / max(m['g_states'], 1e-9):.2f}x "
              f"(same env-step budget; the 3SPO paper reports 2.4x)")


if __name__ == "__main__":
    main()
