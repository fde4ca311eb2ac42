"""Every shipped environment passes ``check_env`` (the protocol of threespo_verl/envs/base.py); ``check_env`` names
what is wrong with an environment that breaks it."""

from __future__ import annotations

import asyncio

import pytest

from threespo_verl.envs import EnvCheckError, available, check_env, make
from threespo_verl.envs.household import HouseholdEnv
from threespo_verl.envs.restore import EnvCache

#: split used for conformance per environment, and the fixture that provides its data (None: no data needed)
SETTINGS = {
    "household": ("train", None),
    "alfworld": ("valid_unseen", "alfworld_data"),
    "webshop": ("test", "webshop_data"),
}


@pytest.fixture(params=available())
def env_factory(request):
    name = request.param
    assert name in SETTINGS, f"environment {name!r} is registered but has no conformance settings"
    split, fixture = SETTINGS[name]
    kwargs = {"data_dir": request.getfixturevalue(fixture)} if fixture else {}

    def factory(max_steps: int = 20):
        return make(name, max_steps=max_steps, **kwargs)

    factory.split = split
    return factory


def test_shipped_env_passes_check_env(env_factory):
    check_env(env_factory(), split=env_factory.split)


def test_check_env_with_a_small_step_limit(env_factory):
    env = env_factory(max_steps=4)
    check_env(env, env.tasks(env_factory.split)[0])


def test_restore_through_the_cache_equals_replay(env_factory):
    env = env_factory(max_steps=50)
    task = env.tasks(env_factory.split)[0]
    env.reset(task)
    prefix = [env.admissible_actions[0], None, env.admissible_actions[-1]]
    replay = env_factory(max_steps=50)
    replay.reset(task)
    for a in prefix:
        replay.step(a)
    via_cache = asyncio.run(EnvCache(lambda: env_factory(max_steps=50)).acquire(task, prefix))
    assert via_cache.observation == replay.observation


# ---- check_env names what is broken ------------------------------------------------------------------------------
class OldShape(HouseholdEnv):
    """The protocol before (obs, reward, done, info)."""

    def reset(self, task):
        return super().reset(task)[0]


class FourTuple(HouseholdEnv):
    def step(self, action):
        obs, r, terminated, truncated, info = super().step(action)
        return obs, r, terminated or truncated, info


class CountingKey(HouseholdEnv):
    """A state key with the step counter in it."""

    def step(self, action):
        obs, r, terminated, truncated, info = super().step(action)
        import dataclasses

        self._obs = dataclasses.replace(obs, state_key=f"{obs.state_key}#{info['steps']}")
        return self._obs, r, terminated, truncated, info


class EarlyTimeout(HouseholdEnv):
    """Truncates one step before the limit."""

    def step(self, action):
        obs, r, terminated, truncated, info = super().step(action)
        if info["steps"] == self.max_steps - 1 and not terminated:
            self._done = truncated = info["timeout"] = True
        return obs, r, terminated, truncated, info


class Flaky(HouseholdEnv):
    """reset depends on how often it was called."""

    calls = 0

    def reset(self, task):
        import dataclasses

        Flaky.calls += 1
        obs, info = super().reset(task)
        self._obs = dataclasses.replace(obs, text=f"{obs.text} ({Flaky.calls})")
        return self._obs, info


@pytest.mark.parametrize("cls, message", [
    (OldShape, r"reset\(task\) must return \(observation, info\)"),
    (FourTuple, r"must return \(observation, reward, terminated, truncated, info\), got a tuple of 4"),
    (CountingKey, "changed the state key"),
    (EarlyTimeout, "truncated exactly when the step limit is reached"),
    (Flaky, "not deterministic"),
])
def test_check_env_names_the_broken_rule(cls, message):
    with pytest.raises(EnvCheckError, match=message) as err:
        check_env(cls(max_steps=6))
    assert cls.__name__ in str(err.value) and isinstance(err.value, AssertionError)
