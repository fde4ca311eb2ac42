"""The conformance suite every environment of the registry passes (rules in threespo_verl/envs/base.py)."""

from __future__ import annotations

import random

import pytest

from threespo_verl.envs import INFO_KEYS, available, make
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
    factory.env_name = name
    return factory


def _tasks(factory, n=3):
    env = factory()
    tasks = env.tasks(factory.split)
    return [tasks[i] for i in range(0, len(tasks), max(1, len(tasks) // n))][:n]


def _random_actions(env, rng, n):
    actions = []
    for _ in range(n):
        acts = env.admissible_actions
        # mostly admissible, sometimes garbage or a malformed reply
        a = rng.choice(acts) if acts and rng.random() < 0.8 else rng.choice([None, "fly to the moon"])
        actions.append(a)
        _obs, _r, done, _info = env.step(a)
        if done:
            break
    return actions


def _trace(env, task, actions):
    out = [env.reset(task)]
    for a in actions:
        out.append(env.step(a))
    return out


def test_reset_and_step_are_deterministic(env_factory):
    rng = random.Random(0)
    for task in _tasks(env_factory):
        env = env_factory()
        env.reset(task)
        actions = _random_actions(env, rng, 8)
        assert _trace(env_factory(), task, actions) == _trace(env, task, actions)


def test_step_returns_the_protocol(env_factory):
    env = env_factory()
    task = _tasks(env_factory, 1)[0]
    obs = env.reset(task)
    assert obs.task_id == task.task_id and obs.task_type == task.task_type and obs.goal and obs.state_key
    assert obs.admissible_actions and all(env.is_valid(a) for a in obs.admissible_actions)
    obs2, reward, done, info = env.step(obs.admissible_actions[0])
    assert set(INFO_KEYS) <= set(info) and info["steps"] == 1 and info["valid"]
    assert 0.0 <= reward <= 1.0 and isinstance(done, bool)


@pytest.mark.parametrize("bad", [None, "", "fly to the moon", "<action>", "go to " * 50])
def test_invalid_actions_keep_the_state_key(env_factory, bad):
    env = env_factory()
    obs = env.reset(_tasks(env_factory, 1)[0])
    assert not env.is_valid(bad)
    obs2, reward, done, info = env.step(bad)
    assert not info["valid"] and not info["state_changed"] and obs2.state_key == obs.state_key
    assert not info["won"] and info["steps"] == 1


def test_timeout_exactly_at_max_steps(env_factory):
    env = env_factory(max_steps=4)
    env.reset(_tasks(env_factory, 1)[0])
    for i in range(1, 5):
        _obs, _r, done, info = env.step(None)
        assert done == (i == 4) and info["timeout"] == (i == 4)
    with pytest.raises(RuntimeError):
        env.step(None)


def test_state_key_has_no_counters(env_factory):
    """A step that changes nothing visible (an invalid action) keeps the key at any step count."""
    env = env_factory()
    obs = env.reset(_tasks(env_factory, 1)[0])
    keys = {env.step("fly to the moon")[0].state_key for _ in range(3)}
    assert keys == {obs.state_key}


def test_restore_by_replay_equals_restore_by_clone(env_factory):
    rng = random.Random(1)
    task = _tasks(env_factory, 1)[0]
    env = env_factory(max_steps=50)
    env.reset(task)
    prefix = []
    for a in _random_actions(env, rng, 6)[:5]:
        prefix.append(a)
    replay_env = env_factory(max_steps=50)
    replay_env.reset(task)
    for a in prefix:
        replay_env.step(a)
    cache = EnvCache(lambda: env_factory(max_steps=50))
    via_cache = cache.acquire(task, prefix)
    assert via_cache.observation == replay_env.observation
    if replay_env.supports_clone:
        twin = replay_env.clone()
        assert twin.observation == replay_env.observation
        for a in replay_env.admissible_actions[:3]:
            a_env, b_env = replay_env.clone(), twin.clone()
            assert a_env.step(a) == b_env.step(a)
