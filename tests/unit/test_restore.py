"""EnvCache: the followed child never replays; clone vs replay give the same node; counters are honest."""

from __future__ import annotations

import asyncio

import pytest

from threespo_verl.envs import make
from threespo_verl.envs.household import HouseholdEnv
from threespo_verl.envs.restore import EnvCache


class _NoCloneHousehold(HouseholdEnv):
    """The household game with cloning switched off, to exercise the reset + replay path."""

    supports_clone = False


@pytest.fixture()
def task():
    return make("household").tasks("train")[42]


def run(coro):
    return asyncio.run(coro)


def _prefix(task, n):
    env = make("household")
    return env.oracle_actions(task)[:n]


@pytest.mark.parametrize("cls", [HouseholdEnv, _NoCloneHousehold])
def test_followed_child_never_replays(cls, task):
    cache = EnvCache(lambda: cls(max_steps=30), max_envs=8)
    plan = _prefix(task, 3)
    env = run(cache.acquire(task, []))
    for i, action in enumerate(plan):
        run(env.step(action))
        cache.release(task, plan[: i + 1], env)
        env = run(cache.acquire(task, plan[: i + 1]))
    assert cache.stats["replayed_steps"] == 0 and cache.stats["created"] == 1


@pytest.mark.parametrize("cls", [HouseholdEnv, _NoCloneHousehold])
def test_acquire_equals_fresh_play(cls, task):
    cache = EnvCache(lambda: cls(max_steps=30), max_envs=8)
    plan = _prefix(task, 4)
    fresh = make("household")
    fresh.reset(task)
    for a in plan:
        fresh.step(a)
    env = run(cache.acquire(task, plan))
    assert env.observation == fresh.observation
    assert cache.stats["replayed_steps"] == len(plan) and cache.stats["replays"] == 1


def test_clone_from_parked_node_and_ancestor(task):
    cache = EnvCache(lambda: HouseholdEnv(max_steps=30), max_envs=8)
    plan = _prefix(task, 3)
    env = run(cache.acquire(task, plan[:1]))
    cache.release(task, plan[:1], env)
    # two siblings at the parked node: both clones, the parked original stays
    a, b = run(cache.acquire(task, plan[:1])), run(cache.acquire(task, plan[:1]))
    assert a is not b and a.observation == b.observation and cache.stats["clones"] == 2 and len(cache) == 1
    # a descendant: cloned from the ancestor and advanced by the missing suffix
    c = run(cache.acquire(task, plan))
    assert cache.stats["replayed_steps"] == 1 + 2  # 1 step to build the parked node, then the 2-step suffix
    ref = make("household")
    ref.reset(task)
    for x in plan:
        ref.step(x)
    assert c.observation == ref.observation


def test_lru_eviction_and_drop_task(task):
    cache = EnvCache(lambda: HouseholdEnv(max_steps=30), max_envs=2)
    for i in range(3):
        env = make("household")
        env.reset(task)
        cache.release(task, [f"look"] * i, env)
    assert len(cache) == 2 and cache.stats["evictions"] == 1
    cache.drop_task(task.task_id)
    assert len(cache) == 0


def test_replay_that_ends_the_episode_is_an_error(task):
    cache = EnvCache(lambda: _NoCloneHousehold(max_steps=2), max_envs=2)
    with pytest.raises(RuntimeError, match="ended the episode early"):
        run(cache.acquire(task, ["look", "look", "look"]))
