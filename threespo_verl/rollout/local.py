"""Local rollout drivers (in process, no verl): ``explore_3spo`` (3SPO rounds over a set of tasks) and
``run_episodes`` (GRPO-style independent episodes), on the same rollout code the verl glue runs. Used by the
exploration benchmark and by tests that check the glue against them.

``explore_3spo`` does per round what the ``threespo`` trainer mode and the ``threespo_step`` agent loop do together:
one ``expand_node`` per unfinished tree, the tree updated, the trajectories that ended (as the tree reports them:
exactly once each, an expansion's failed siblings once above it: ``tree.store_records``) recorded in the store, then
one ``commit`` (scores of the next round see this round's
trajectories).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence

from threespo_verl.envs.base import Task, TextEnv
from threespo_verl.envs.restore import EnvCache
from threespo_verl.rollout.expand import Expansion, LocalScorer, SampleFn, ScoreParams, expand_node, play_episode
from threespo_verl.rollout.tree import ChildOutcome, Frontiers, TaskTree, Trajectory, store_records


@dataclasses.dataclass
class ExploreResult:
    trees: list[TaskTree]
    rounds: int
    env_steps: int
    llm_calls: int
    replayed_steps: int
    states: set[str]
    n_history: list[int]  # n(s) of every expanded or pruned node, in order
    round_rows: list[int] = dataclasses.field(default_factory=list)  # update rows of each round (the trainer's rule)
    rows: int = 0  # update rows in all


def record_trajectories(store, trajectories: Sequence[Trajectory], params: ScoreParams) -> None:
    """Record finished trajectories (as ``TaskTree.expand``/``prune`` return them) as pending in ``store``, under
    the store keys of ``params.state_scope``."""
    for traj in trajectories:
        store.record_trajectory(params.store_keys(traj.task_id, traj.path_keys), traj.success)


def apply_expansion(tree: TaskTree, node_id: int, exp: Expansion) -> list[Trajectory]:
    """Feed an expansion back into its tree (prune, or the distinct children); the trajectories it ended."""
    if exp.pruned:
        return [tree.prune(node_id, exp.state_key, exp.obs_text)]
    return tree.expand(node_id, exp.state_key, exp.obs_text, [
        ChildOutcome(b.action, b.action_text, b.state_key, b.obs_text, b.reward, b.done, b.won)
        for b in exp.branches])


def update_rows(exp: Expansion) -> int:
    """Rows an expansion gives the update (the trainer's rule): every sampled reply, when the replies chose at least
    two distinct actions; none otherwise (a pruned node, or a singleton group whose advantage would be 0)."""
    return len(exp.replies) if len(exp.branches) >= 2 else 0


async def _explore(tasks, env_factory, sample, store, params, budget, max_trajectories, history_length,
                   max_envs, max_rounds=None, slots=None) -> ExploreResult:
    frontiers = Frontiers(budget, max_trajectories)
    queue = list(tasks)
    slots = len(queue) if slots is None else int(slots)

    def refill():  # as the trainer does from verl's dataloader: finished trees free their slot for the next task
        while queue and len(frontiers) < slots:
            frontiers.add([queue.pop(0)])

    refill()
    cache = EnvCache(env_factory, max_envs=max_envs)
    scorer = LocalScorer(store)
    done: list[TaskTree] = []
    rounds = env_steps = llm_calls = 0
    states: set[str] = set()
    n_hist: list[int] = []
    round_rows: list[int] = []
    while frontiers.trees and (max_rounds is None or rounds < max_rounds):
        round_rows.append(0)
        for tree, node in frontiers.requests():
            exp = await expand_node(tree.task, node.actions, tree.history(node), cache, sample, scorer, params,
                                    max_branches=min(params.g_max, tree.remaining_budget),
                                    history_length=history_length)
            ended = apply_expansion(tree, node.node_id, exp)
            for keys, won in store_records(ended, tree.path_keys(node)):  # the trainer's rule (DESIGN §2.6)
                store.record_trajectory(params.store_keys(tree.task_id, keys), won)
            n_hist.append(exp.n_branches)
            round_rows[-1] += update_rows(exp)
            env_steps += len(exp.branches)
            llm_calls += exp.n_branches
            states.add(exp.state_key)
            states.update(b.state_key for b in exp.branches)
        store.commit()
        rounds += 1
        for tree in frontiers.retire():
            cache.drop_task(tree.task_id)
            done.append(tree)
        refill()
    replayed = cache.stats["replayed_steps"]
    cache.close()
    done.extend(frontiers.trees.values())  # trees still live when max_rounds stopped the run
    return ExploreResult(done, rounds, env_steps, llm_calls, replayed, states, n_hist, round_rows, sum(round_rows))


def explore_3spo(tasks: Sequence[Task], env_factory: Callable[[], TextEnv], sample: SampleFn, store,
                 params: ScoreParams | None = None, budget: int = 240, max_trajectories: int = 32,
                 history_length: int = 2, max_envs: int = 256, max_rounds: int | None = None,
                 slots: int | None = None) -> ExploreResult:
    """Explore ``tasks`` (one expansion per tree per round) until every tree is done (or ``max_rounds``). With
    ``slots``, at most that many trees are in flight and a finished tree's slot goes to the next task in order (the
    trainer's refill); by default all tasks start together."""
    return asyncio.run(_explore(list(tasks), env_factory, sample, store, params or ScoreParams(), budget,
                                max_trajectories, history_length, max_envs, max_rounds, slots))


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
