"""ALFWorld snapshots are exact: a clone equals reset + replay of its node, on walkthrough trees of all six task types.

Each game's tree: the stored walkthrough (its spine) and, at every node on it, two sibling branches (other admissible
commands, seeded) of two steps each, one of them ending in an invalid step. The reference for every node and branch
is a second ``AlfWorldEnv`` that never clones (its own loaded games and planner libraries), reset and replayed from
the root; the spine is also checked against TextWorld's engine driven directly (reset by TextWorld itself).
"""

from __future__ import annotations

import asyncio

import random

import pytest

from threespo_verl.envs import check_env, make
from threespo_verl.envs.alfworld import _state_digest
from threespo_verl.envs.restore import EnvCache

SIBLINGS = 2
MAX_STEPS = 50


@pytest.fixture(scope="module")
def games(alfworld_data):
    """The first valid_seen game of each of the six task types."""
    env = make("alfworld", data_dir=alfworld_data)
    first = {}
    for task in env.tasks("valid_seen"):
        first.setdefault(task.task_type, task)
    assert sorted(first) == ["clean", "cool", "heat", "look", "pick", "pick2"]
    return [first[t] for t in ("pick", "look", "clean", "heat", "cool", "pick2")]


def replayed(ref, task, prefix):
    """``ref`` reset and replayed to the node ``prefix``."""
    ref.reset(task)
    for action in prefix:
        ref.step(action)
    return ref


def stock_engine(game_file):
    """TextWorld's PDDL engine as ALFWorld builds it, without our env around it (the process-wide parse and
    translation caches of ``envs/alfworld.py`` apply to it too)."""
    import textworld
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler
    from textworld.envs.pddl import PddlEnv

    engine = AlfredDemangler(PddlEnv(textworld.EnvInfos(won=True, admissible_commands=True)))
    engine.load(str(game_file))
    return engine


def test_clone_equals_reset_and_replay_on_walkthrough_trees(alfworld_data, games):
    env = make("alfworld", data_dir=alfworld_data, max_steps=MAX_STEPS)
    ref = make("alfworld", data_dir=alfworld_data, max_steps=MAX_STEPS)  # never clones; its own loaded games
    branch_steps = 0
    for task in games:
        walkthrough = env.walkthrough(task)
        rng = random.Random(task.task_id)
        env.reset(task)
        env.reset(task)  # a second reset of the loaded game: restores its initial snapshot
        ref.reset(task)
        stock = stock_engine(env.game_file(task))
        state = stock.reset()
        parked = []  # (node index, a clone left unstepped, the observation at the node)
        spine = []  # the original's step results along the walkthrough
        for i, action in enumerate([*walkthrough, None]):
            obs = env.observation
            # the spine: our env (whose clones have been stepped) agrees with the reference and TextWorld's engine
            assert obs == ref.observation
            assert obs.text == state.feedback.replace("-= Welcome to TextWorld, ALFRED! =-", "").strip()
            assert obs.state_key == _state_digest(stock.unwrapped._pddl_state.facts)
            assert obs.admissible_actions == (() if action is None else tuple(state["admissible_commands"]))
            parked.append((i, env.clone(), obs))
            if action is None:  # won: the episode is over, for clones too
                with pytest.raises(RuntimeError, match="episode is over"):
                    env.clone().step("look")
                break
            # two sibling branches of two steps (the last one's second step invalid), on clones stepped in turn
            # (each selects its own planner state on the library they share)
            others = [a for a in obs.admissible_actions if a != action]
            branches = [[a] for a in rng.sample(others, min(SIBLINGS, len(others)))]
            twins = [env.clone() for _ in branches]
            results = [[] for _ in branches]
            for depth in range(2):
                for b, (branch, twin, got) in enumerate(zip(branches, twins, results)):
                    if depth == 1 and twin.observation.admissible_actions:
                        invalid = b == len(branches) - 1
                        branch.append(None if invalid else rng.choice(twin.observation.admissible_actions))
                    if len(branch) > depth:
                        got.append(twin.step(branch[depth]))
            for branch, got in zip(branches, results):
                replayed(ref, task, walkthrough[:i])
                assert got == [ref.step(a) for a in branch], (task.task_id, i, branch)
                branch_steps += len(branch)
            assert env.observation == obs  # stepping its clones left the original where it was
            spine.append(env.step(action))
            assert spine[-1] == replayed(ref, task, walkthrough[:i]).step(action)
            state, _score, _done = stock.step(action)
        assert spine[-1][1] == 1.0 and spine[-1][2] and spine[-1][4]["won"]
        # the clones parked along the way stayed put while the original and their siblings played on
        for i, twin, obs in parked:
            assert twin.observation == obs
            if i < len(walkthrough):
                assert twin.step(walkthrough[i]) == spine[i]
    assert branch_steps > 100
    env.close()
    ref.close()


def test_clone_of_a_clone_outlives_the_original(alfworld_data, games):
    env = make("alfworld", data_dir=alfworld_data, max_steps=MAX_STEPS)
    task = games[2]
    walkthrough = env.walkthrough(task)
    first, _info = env.reset(task)
    env.step(walkthrough[0])
    child = env.clone()
    grandchild = child.clone()
    env.close()  # the game stays loaded for the clones
    assert child.step(walkthrough[1]) == grandchild.step(walkthrough[1])
    ahead = [grandchild.step(action) for action in walkthrough[2:]]
    assert ahead[-1][1] == 1.0 and ahead[-1][2] and ahead[-1][4]["won"]
    assert grandchild.reset(task)[0] == first  # a clone resets like any env, on the shared game
    grandchild.step(walkthrough[0])  # the reset clone plays on the shared planner library ...
    assert [child.step(action) for action in walkthrough[2:]] == ahead  # ... and the child is where it was
    unstarted = make("alfworld", data_dir=alfworld_data, max_steps=MAX_STEPS).clone()  # before any reset
    with pytest.raises(RuntimeError, match="reset"):
        unstarted.step("look")


def test_env_cache_restores_by_clone(alfworld_data, games):
    task = games[0]
    cache = EnvCache(lambda: make("alfworld", data_dir=alfworld_data, max_steps=MAX_STEPS))
    env = asyncio.run(cache.acquire(task, ()))
    walkthrough = env.unwrapped.walkthrough(task)
    cache.release(task, (), env)
    deep = asyncio.run(cache.acquire(task, tuple(walkthrough[:2])))  # a descendant of the parked root: clone + 2 steps
    assert cache.stats["clones"] == 1 and cache.stats["created"] == 1 and cache.stats["replays"] == 0
    ref = replayed(make("alfworld", data_dir=alfworld_data, max_steps=MAX_STEPS), task, walkthrough[:2])
    assert deep.observation == ref.observation


def test_check_env_with_clone(alfworld_data, games):
    check_env(make("alfworld", data_dir=alfworld_data, max_steps=8), games[:2])
