"""EnvPool: parallel steps equal sequential ones; a killed worker loses nothing; a poisoned step is reported."""

from __future__ import annotations

import os
import random
import signal

import pytest

from threespo_verl.envs import make
from threespo_verl.envs.household import HouseholdEnv
from threespo_verl.envs.pool import EnvPool


class CrashOnCommand(HouseholdEnv):
    """Test env: the household game whose worker process dies (os._exit) on the command 'crash'."""

    def step(self, action):
        if action == "crash":
            os._exit(3)
        return super().step(action)


def _sequential(tasks, plans):
    out = []
    for task, plan in zip(tasks, plans):
        env = make("household", max_steps=30)
        env.reset(task)
        out.append([env.step(a) for a in plan])
    return out


@pytest.fixture(scope="module")
def tasks_and_plans():
    env = make("household")
    tasks = env.tasks("train")[:6]
    rng = random.Random(0)
    plans = []
    for t in tasks:
        env.reset(t)
        plan = []
        for _ in range(6):
            a = rng.choice(env.admissible_actions)
            plan.append(a)
            if any(env.step(a)[2:4]):
                break
        plans.append(plan)
    return tasks, plans


def _run(pool, tasks, plans, before_step=None):
    handles = [pool.reset(t)[0] for t in tasks]
    got = [[] for _ in tasks]
    for k in range(max(len(p) for p in plans)):
        if before_step:
            before_step(k)
        reqs = [(h, p[k]) for h, p in zip(handles, plans) if k < len(p)]
        owners = [i for i, p in enumerate(plans) if k < len(p)]
        for i, res in zip(owners, pool.step_many(reqs)):
            assert res.error is None, res.error
            got[i].append((res.observation, res.reward, res.terminated, res.truncated, res.info))
    return got


def test_parallel_equals_sequential(tasks_and_plans):
    tasks, plans = tasks_and_plans
    with EnvPool("household", {"max_steps": 30}, num_workers=2) as pool:
        got = _run(pool, tasks, plans)
        assert pool.stats["restarts"] == 0
    assert got == _sequential(tasks, plans)


def test_killed_worker_is_restarted_and_the_step_retried(tasks_and_plans):
    tasks, plans = tasks_and_plans
    with EnvPool("household", {"max_steps": 30}, num_workers=2) as pool:

        def kill_at_3(k):
            if k == 3:
                os.kill(pool.worker_pids()[0], signal.SIGKILL)

        got = _run(pool, tasks, plans, before_step=kill_at_3)
        assert pool.stats["restarts"] == 1 and pool.stats["retried_steps"] > 0
        assert pool.stats["replayed_steps"] > 0 and pool.stats["failed_steps"] == 0
    assert got == _sequential(tasks, plans)


def test_a_step_that_kills_its_worker_twice_is_reported_not_lost():
    task = make("household").tasks("train")[0]
    with EnvPool(factory=CrashOnCommand, env_kwargs={"max_steps": 30}, num_workers=1) as pool:
        h1, _ = pool.reset(task)
        h2, _ = pool.reset(task)
        res = pool.step_many([(h1, "look"), (h2, "crash")])
        assert all(r.retried for r in res)
        assert res[1].error and "crashed twice" in res[1].error
        assert pool.stats["failed_steps"] == 2 and pool.stats["restarts"] == 2
        # the pool is still usable afterwards, the good env at its pre-step state
        (ok,) = pool.step_many([(h1, "look")])
        assert ok.error is None and ok.info["valid"]


def test_memory_budget_restarts_a_worker(tasks_and_plans):
    tasks, plans = tasks_and_plans
    with EnvPool("household", {"max_steps": 30}, num_workers=1, max_worker_mb=1) as pool:
        got = _run(pool, tasks[:2], plans[:2])
        assert pool.stats["restarts"] >= 1
    assert got == _sequential(tasks[:2], plans[:2])


def test_alfworld_through_the_pool_matches_in_process(alfworld_data):
    env = make("alfworld", data_dir=alfworld_data, max_steps=50)
    task = env.tasks("valid_unseen")[0]
    plan = env.walkthrough(task)
    env.reset(task)
    expected = [env.step(a) for a in plan]
    env.close()
    with EnvPool("alfworld", {"data_dir": str(alfworld_data), "max_steps": 50}, num_workers=1) as pool:
        h, _obs = pool.reset(task)
        got = [pool.step_many([(h, a)])[0] for a in plan]
    assert [(r.observation, r.reward, r.terminated, r.truncated, r.info) for r in got] == expected
    assert got[-1].info["won"]
