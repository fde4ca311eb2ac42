"""EnvPool: remote environments equal in-process ones; requests of many sessions are multiplexed without blocking
the event loop; a killed worker or a raising engine costs one retry, a second failure is one ``EnvFailure``."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from pathlib import Path

import pytest

from threespo_verl.envs import make
from threespo_verl.envs.household import HouseholdEnv
from threespo_verl.envs.pool import EnvFailure, EnvPool, LocalEnv
from threespo_verl.envs.restore import EnvCache
from threespo_verl.rollout.expand import LocalScorer, Sample, ScoreParams, expand_node, play_episode
from threespo_verl.store.state_store import StateStore

HERE = "tests.unit.test_env_pool"


class FailOn(HouseholdEnv):
    """Test env: the household game that raises on the command ``fail`` while ``marker`` exists (the marker is
    deleted by the first failure when ``once``), and whose worker dies (os._exit) on ``crash``."""

    def __init__(self, marker: str = "", once: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.marker, self.once = marker, once

    def step(self, action):
        if action == "crash":
            os._exit(3)
        if action == "fail" and self.marker and Path(self.marker).exists():
            if self.once:
                Path(self.marker).unlink()
            raise ValueError("engine error")
        return super().step(action)


class Hang(HouseholdEnv):
    """Test env: the household game that hangs (sleeps far past the pool's timeout) on the command ``hang`` while
    ``marker`` exists; the first hang deletes the marker when ``once``."""

    def __init__(self, marker: str = "", once: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.marker, self.once = marker, once

    def step(self, action):
        if action == "hang" and Path(self.marker).exists():
            if self.once:
                Path(self.marker).unlink()
            time.sleep(120)
        return super().step(action)


class CloneFails(HouseholdEnv):
    """Test env: the household game whose ``clone`` raises (an engine that claims to clone but cannot now)."""

    def clone(self):
        raise ValueError("engine cannot clone now")


class Slow(HouseholdEnv):
    """Test env: every step takes 0.3 s of wall time in its worker."""

    def step(self, action):
        time.sleep(0.3)
        return super().step(action)


def run(coro):
    return asyncio.run(coro)


def sequence_sampler(replies):
    """The replies in order, one per sampled reply, across calls."""
    it = iter(replies)

    async def sample(messages, n, choices=()):
        return [Sample(next(it)) for _ in range(n)]

    return sample


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


def _sequential(tasks, plans):
    out = []
    for task, plan in zip(tasks, plans):
        env = make("household", max_steps=30)
        out.append([env.reset(task)[0], *[env.step(a) for a in plan]])
    return out


async def _play_all(pool, tasks, plans, hook=None):
    """Every task as its own session, concurrently; ``hook(i, k)`` runs before session i's step k."""

    async def session(i):
        env = pool.env()
        got = [(await env.reset(tasks[i]))[0]]
        for k, a in enumerate(plans[i]):
            if hook:
                await hook(i, k, env)
            got.append(await env.step(a))
        env.close()
        return got

    return list(await asyncio.gather(*[session(i) for i in range(len(tasks))]))


def test_concurrent_sessions_equal_in_process_play(tasks_and_plans):
    tasks, plans = tasks_and_plans
    with EnvPool("household", {"max_steps": 30}, num_workers=2) as pool:
        got = run(_play_all(pool, tasks, plans))
        assert pool.stats["failures"] == pool.stats["retries"] == pool.stats["restarts"] == 0
    assert got == _sequential(tasks, plans)


def test_reused_envs_equal_fresh_ones(tasks_and_plans):
    """Sessions one after another on one worker: each reset reuses the env the previous session released."""
    tasks, plans = tasks_and_plans
    with EnvPool("household", {"max_steps": 30}, num_workers=1) as pool:
        got = [run(_play_all(pool, [t], [p]))[0] for t, p in zip(tasks, plans)]
    assert got == _sequential(tasks, plans)


def test_a_killed_worker_costs_one_retry_and_no_result(tasks_and_plans):
    tasks, plans = tasks_and_plans
    with EnvPool("household", {"max_steps": 30}, num_workers=2) as pool:

        async def kill_once(i, k, env):
            if i == 0 and k == 2:
                os.kill(pool.worker_pids()[env.worker], signal.SIGKILL)
                await asyncio.sleep(0.2)

        got = run(_play_all(pool, tasks, plans, kill_once))
        assert pool.stats["restarts"] == 1 and pool.stats["failures"] == 0
        assert pool.stats["replayed_steps"] >= 2  # session 0's env rebuilt by replaying its 2 steps
    assert got == _sequential(tasks, plans)


def test_raising_engine_is_retried_once_then_fails(tmp_path):
    task = make("household").tasks("train")[0]
    marker = tmp_path / "fail"
    for once, failures in ((True, 0), (False, 1)):
        marker.touch()
        with EnvPool(f"{HERE}:FailOn", {"max_steps": 30, "marker": str(marker), "once": once}, num_workers=1) as pool:
            env = pool.env()
            run(env.reset(task))

            async def go():
                await env.step("look")
                return await env.step("fail")

            if failures:
                with pytest.raises(EnvFailure, match="engine error"):
                    run(go())
            else:
                obs, _r, _t, _tr, info = run(go())
                assert not info["valid"]  # the retried step ran on the env rebuilt after 'look'
            assert pool.stats["retries"] == 1 and pool.stats["failures"] == failures


def test_worker_dying_twice_is_one_counted_failure():
    task = make("household").tasks("train")[0]
    with EnvPool(f"{HERE}:FailOn", {"max_steps": 30}, num_workers=1) as pool:
        env = pool.env()
        run(env.reset(task))
        with pytest.raises(EnvFailure):
            run(env.step("crash"))
        assert pool.stats["retries"] == 1 and pool.stats["failures"] == 1
        # the pool goes on: the dead worker is restarted (the second restart) and the same env, rebuilt, steps again
        assert run(env.step("look"))[4]["valid"] and pool.stats["restarts"] == 2


@pytest.mark.parametrize("once", [True, False])
def test_a_hung_worker_is_killed_after_the_timeout_and_retried_once(once, tmp_path):
    task = make("household").tasks("train")[0]
    marker = tmp_path / "hang"
    marker.touch()
    with EnvPool(f"{HERE}:Hang", {"max_steps": 30, "marker": str(marker), "once": once}, num_workers=1,
                 timeout=1.5) as pool:
        env = pool.env()
        run(env.reset(task))
        first = pool.worker_pids()[0]
        run(env.step("look"))
        t0 = time.monotonic()
        if once:
            # the hung worker is killed; a new one rebuilds the env (reset + 'look') and the step runs there
            assert not run(env.step("hang"))[4]["valid"]
            assert pool.stats["restarts"] == 1 and pool.stats["failures"] == 0
        else:
            with pytest.raises(EnvFailure, match="did not answer within 1.5 s"):
                run(env.step("hang"))
            assert pool.stats["restarts"] == 1 and pool.stats["failures"] == 1
        assert pool.stats["retries"] == 1 and pool.stats["replayed_steps"] >= 1
        assert time.monotonic() - t0 < 60, "the hung call was waited out instead of timed out"
        assert first not in pool.worker_pids()
        # the pool goes on with the same env, rebuilt on a fresh worker
        assert run(env.step("look"))[4]["valid"]


def test_env_steps_do_not_block_the_event_loop():
    """While a worker steps (0.3 s each), another coroutine on the same loop keeps running; 2 workers overlap."""
    tasks = make("household").tasks("train")[:2]
    with EnvPool(f"{HERE}:Slow", {"max_steps": 30}, num_workers=2) as pool:
        run(pool.ready())

        async def main():
            envs = [pool.env(), pool.env()]
            await asyncio.gather(*[e.reset(t) for e, t in zip(envs, tasks)])
            ticks = 0
            stop = False

            async def ticker():
                nonlocal ticks
                while not stop:
                    ticks += 1
                    await asyncio.sleep(0.01)

            tick = asyncio.create_task(ticker())
            t0 = time.perf_counter()
            await asyncio.gather(*[e.step("look") for e in envs for _ in range(1)])
            elapsed = time.perf_counter() - t0
            stop = True
            await tick
            return ticks, elapsed, {e.worker for e in envs}

        ticks, elapsed, workers = run(main())
    assert workers == {0, 1}  # spread by load
    assert ticks >= 5  # the loop ran while both envs stepped
    assert elapsed < 0.55  # two 0.3 s steps on two workers overlapped (sequential would take 0.6 s)


def test_remote_clone_and_cache_restores_equal_replay():
    task = make("household").tasks("train")[3]
    plan = make("household").oracle_actions(task)[:3]
    ref = make("household", max_steps=30)
    ref.reset(task)
    for a in plan:
        ref.step(a)
    with EnvPool("household", {"max_steps": 30}, num_workers=2) as pool:
        cache = EnvCache(pool.env)

        async def go():
            env = await cache.acquire(task, plan[:1])
            cache.release(task, plan[:1], env)
            twin = await cache.acquire(task, plan)  # cloned from the parked ancestor, advanced by 2 steps
            return env, twin

        env, twin = run(go())
        assert twin.observation == ref.observation and twin.worker == env.worker
        assert cache.stats["clones"] == 1 and cache.stats["replayed_steps"] == 1 + 2


def test_a_failed_remote_clone_falls_back_to_reset_and_replay():
    task = make("household").tasks("train")[3]
    plan = make("household").oracle_actions(task)
    ref = make("household", max_steps=30)
    ref.reset(task)
    for a in plan[:3]:
        ref.step(a)
    with EnvPool(f"{HERE}:CloneFails", {"max_steps": 30}, num_workers=1) as pool:
        assert pool.supports_clone

        async def go():
            env = pool.env()
            await env.reset(task)
            for a in plan[:2]:
                await env.step(a)
            twin = await env.clone()  # the worker's clone raises: the twin is built by reset + replay instead
            twin_step = await twin.step(plan[2])
            env_step = await env.step(plan[2])  # the original is rebuilt before its next call, and steps the same
            return twin, twin_step, env_step

        twin, twin_step, env_step = run(go())
        assert twin.observation == ref.observation
        assert twin_step == env_step
        assert pool.stats["failures"] == 0 and pool.stats["restarts"] == 0


def test_a_failed_branch_is_a_counted_row_not_an_exception(tmp_path):
    """expand_node through the pool: the branch whose step fails twice ends as a failed child (env_failed, terminal,
    not won, state unchanged); the other branches and every reply's row are there."""
    marker = tmp_path / "fail"
    marker.touch()
    task = make("household").tasks("train")[0]
    store = StateStore()
    with EnvPool(f"{HERE}:FailOn", {"max_steps": 30, "marker": str(marker), "once": False}, num_workers=1) as pool:
        # the first distinct action steps the node's own env (FailOn); later ones step clones (plain household)
        replies = ["<action>fail</action>", "<action>look</action>", "<action>fail</action>"]
        exp = run(expand_node(task, (), [], EnvCache(pool.env), sequence_sampler(replies), LocalScorer(store),
                              ScoreParams(g_max=3)))
        assert len(exp.replies) == 3 and len(exp.branches) == 2
        failed = [b for b in exp.branches if b.env_failed]
        assert len(failed) == 1 and failed[0].done and not failed[0].won and failed[0].merged == 2
        assert failed[0].state_key == exp.state_key and failed[0].r_penalty == 0.0
        episode = sequence_sampler(["<action>look</action>", "<action>fail</action>"])
        steps = run(play_episode(task, pool.env(), episode))
        assert len(steps) == 2 and steps[-1].branch.env_failed and steps[-1].branch.r_success == 0.0


def test_local_env_retries_like_a_worker(tmp_path):
    marker = tmp_path / "fail"
    marker.touch()
    env = LocalEnv(FailOn(marker=str(marker), once=True, max_steps=30))
    run(env.reset(make("household").tasks("train")[0]))
    assert not run(env.step("fail"))[4]["valid"] and env.stats["retries"] == 1 and env.stats["failures"] == 0


def test_memory_budget_restarts_an_idle_worker(tasks_and_plans):
    tasks, plans = tasks_and_plans
    with EnvPool("household", {"max_steps": 30}, num_workers=1, max_worker_mb=1) as pool:
        got = run(_play_all(pool, tasks[:2], plans[:2]))
        assert pool.stats["restarts"] >= 1 and pool.stats["failures"] == 0
    assert got == _sequential(tasks[:2], plans[:2])


def test_alfworld_through_the_pool_matches_in_process(alfworld_data):
    """Walkthroughs of games A, B, A through one worker (the second A reuses the released env with A loaded) equal
    fresh in-process play."""
    env = make("alfworld", data_dir=alfworld_data, max_steps=50)
    tasks = env.tasks("valid_unseen")[:2]
    plans = [env.walkthrough(t) for t in tasks]
    expected = [[env.reset(t)[0], *[env.step(a) for a in p]] for t, p in zip(tasks, plans)]
    env.close()
    with EnvPool("alfworld", {"data_dir": str(alfworld_data), "max_steps": 50}, num_workers=1) as pool:
        got = [run(_play_all(pool, [tasks[i]], [plans[i]]))[0] for i in (0, 1, 0)]
    assert got == [expected[0], expected[1], expected[0]] and got[0][-1][4]["won"]
