"""In-process drivers of the same rollout code the verl glue runs, without verl: 3SPO rounds over a set of tasks and
GRPO-style independent episodes. Used by the exploration benchmark and by tests that check the glue against them.

``explore_3spo`` does per round what the ``threespo`` trainer mode and the ``threespo_step`` agent loop do together:
one ``expand_node`` per unfinished tree, the trajectories that ended recorded in the store, the tree updated, then
one ``commit`` (scores of the next round see this round's trajectories).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence

from threespo_verl.envs.base import Task, TextEnv
from threespo_verl.envs.restore import EnvCache
from threespo_verl.rollout.expand import Expansion, LocalScorer, SampleFn, ScoreParams, expand_node, play_episode
from threespo_verl.rollout.tree import ChildOutcome, Frontiers, TaskTree, trajectory_keys


@dataclasses.dataclass
class ExploreResult:
    trees: list[TaskTree]
    rounds: int
    env_steps: int
    llm_calls: int
    replayed_steps: int
    states: set[str]
    n_history: list[int]  # n(s) of every expanded or pruned node, in order


def record_expansion(store, path_keys: Sequence[str], exp: Expansion) -> None:
    """Record the trajectories an expansion ended (pruned node, or terminal children) as pending in ``store``."""
    if exp.pruned:
        store.record_trajectory(trajectory_keys(path_keys, exp.state_key), False)
        return
    for b in exp.branches:
        if b.done:
            store.record_trajectory(trajectory_keys(path_keys, exp.state_key, b.state_key), b.won)


def apply_expansion(tree: TaskTree, node_id: int, exp: Expansion) -> None:
    """Feed an expansion back into its tree (prune, or the distinct children)."""
    if exp.pruned:
        tree.prune(node_id, exp.state_key, exp.obs_text)
    else:
        tree.expand(node_id, exp.state_key, exp.obs_text, [
            ChildOutcome(b.action, b.action_text, b.state_key, b.obs_text, b.reward, b.done, b.won)
            for b in exp.branches])


async def _explore(tasks, env_factory, sample, store, params, budget, max_trajectories, history_length,
                   max_envs) -> ExploreResult:
    frontiers = Frontiers(budget, max_trajectories)
    frontiers.add(tasks)
    cache = EnvCache(env_factory, max_envs=max_envs)
    scorer = LocalScorer(store)
    done: list[TaskTree] = []
    rounds = env_steps = llm_calls = 0
    states: set[str] = set()
    n_hist: list[int] = []
    while frontiers.trees:
        for tree, node in frontiers.requests():
            exp = await expand_node(tree.task, node.actions, tree.history(node), cache, sample, scorer, params,
                                    max_branches=min(params.g_max, tree.remaining_budget),
                                    history_length=history_length)
            record_expansion(store, tree.path_keys(node), exp)
            apply_expansion(tree, node.node_id, exp)
            n_hist.append(exp.n_branches)
            env_steps += len(exp.branches)
            llm_calls += exp.n_branches
            states.add(exp.state_key)
            states.update(b.state_key for b in exp.branches)
        store.commit()
        rounds += 1
        for tree in frontiers.retire():
            cache.drop_task(tree.task_id)
            done.append(tree)
    replayed = cache.stats["replayed_steps"]
    cache.close()
    return ExploreResult(done, rounds, env_steps, llm_calls, replayed, states, n_hist)


def explore_3spo(tasks: Sequence[Task], env_factory: Callable[[], TextEnv], sample: SampleFn, store,
                 params: ScoreParams | None = None, budget: int = 240, max_trajectories: int = 32,
                 history_length: int = 2, max_envs: int = 256) -> ExploreResult:
    """Explore ``tasks`` together (one expansion per tree per round) until every tree is done."""
    return asyncio.run(_explore(list(tasks), env_factory, sample, store, params or ScoreParams(), budget,
                                max_trajectories, history_length, max_envs))


@dataclasses.dataclass
class EpisodesResult:
    solved: dict[str, bool]
    env_steps: int
    states: dict[str, set[str]]  # task id -> distinct states its episodes visited
    episodes: int


def run_episodes(tasks: Sequence[Task], env_factory: Callable[[], TextEnv], sample: SampleFn, group_size: int = 8,
                 history_length: int = 2) -> EpisodesResult:
    """GRPO's rollout: ``group_size`` independent episodes per task."""

    async def run():
        solved, steps, states, episodes = {}, 0, {}, 0
        env = env_factory()
        try:
            for task in tasks:
                won = False
                seen = states.setdefault(task.task_id, set())
                for _ in range(group_size):
                    ep = await play_episode(task, env, sample, history_length=history_length)
                    episodes += 1
                    steps += len(ep)
                    for s in ep:
                        seen.add(s.state_key)
                        seen.add(s.branch.state_key)
                    won = won or ep[-1].branch.won
                solved[task.task_id] = won
        finally:
            env.close()
        return EpisodesResult(solved, steps, states, episodes)

    return asyncio.run(run())
