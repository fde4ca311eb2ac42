"""Where the agent loop's environments live: ``env.num_workers`` (``auto``: the process's cores shared among the
agent-loop workers; 0: in this process) and ``env.max_worker_mb`` reach the ``EnvPool`` the agent loop builds."""

from __future__ import annotations

import asyncio
import os

import pytest

from threespo_verl.envs import make
from threespo_verl.envs.household import HouseholdEnv
from threespo_verl.envs.pool import EnvPool
from threespo_verl.verl_glue import agent_loop as al
from threespo_verl.verl_glue.config import resolve_env


@pytest.fixture(autouse=True)
def _fresh_pools():
    al._POOLS.clear()
    al._CACHES.clear()
    yield
    for pool in al._POOLS.values():
        pool.close()
    al._POOLS.clear()
    al._CACHES.clear()


@pytest.mark.parametrize("cores, agent_workers, expected", [(16, 1, 16), (16, 4, 4), (16, 5, 3), (2, 8, 1)])
def test_auto_shares_the_process_cores_among_the_agent_workers(cores, agent_workers, expected, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(cores)), raising=False)
    assert al.env_workers(resolve_env({"name": "household", "num_workers": "auto"}), agent_workers) == expected


def test_a_number_of_workers_is_taken_as_it_is():
    assert al.env_workers(resolve_env({"name": "household", "num_workers": 3}), agent_workers=8) == 3
    assert al.env_workers(resolve_env({"name": "household", "num_workers": 0}), agent_workers=8) == 0


def test_zero_workers_makes_envs_in_this_process():
    factory = al.env_factory(resolve_env({"name": "household", "num_workers": 0, "max_steps": 7}))
    env = factory()
    assert isinstance(env, HouseholdEnv) and env.max_steps == 7
    assert al._POOLS == {}


def test_worker_pools_get_the_memory_budget_and_are_shared_per_configuration():
    cfg = resolve_env({"name": "household", "num_workers": 1, "max_worker_mb": 4096})
    factory = al.env_factory(cfg)
    assert al.env_factory(cfg).__self__ is factory.__self__  # one pool per process and configuration
    pool = factory.__self__
    assert isinstance(pool, EnvPool) and pool.num_workers == 1 and pool.max_worker_mb == 4096
    # another budget is another configuration: its own pool, with its own budget
    other = al.env_factory(resolve_env({"name": "household", "num_workers": 1, "max_worker_mb": 1})).__self__
    assert other is not pool and other.max_worker_mb == 1
    task = make("household").tasks("train")[0]

    async def play():
        env = factory()
        obs, _info = await env.reset(task)
        env.close()
        return obs

    assert asyncio.run(play()) == make("household").reset(task)[0]


def test_env_caches_follow_the_pools_budget():
    small, large = (resolve_env({"name": "household", "num_workers": 1, "max_worker_mb": mb}) for mb in (1, 4096))
    assert al.env_cache(small) is al.env_cache(small)
    assert al.env_cache(small) is not al.env_cache(large)  # each cache builds its envs in its own budget's pool
    assert {p.max_worker_mb for p in al._POOLS.values()} == {1, 4096}
