"""household: determinism, solvability (oracle), task types, ALFWorld-like mechanics."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from threespo_verl.envs import make
from threespo_verl.envs.household import TASK_TYPES, HouseholdEnv


@pytest.fixture(scope="module")
def env() -> HouseholdEnv:
    return make("household", max_steps=30)


def _play(env, task, actions):
    out = [env.reset(task)]
    for a in actions:
        obs, r, terminated, truncated, info = env.step(a)
        out.append((obs, r, terminated, truncated, info))
        if terminated or truncated:
            break
    return out


def test_splits_are_fixed_and_disjoint(env):
    train, test = env.tasks("train"), env.tasks("test")
    assert len(train) == 10_000 and len(test) == 64
    assert not {t.task_id for t in train} & {t.task_id for t in test}
    assert [t.task_id for t in env.tasks("test")] == [t.task_id for t in test]
    assert set(Counter(t.task_type for t in test)) == set(TASK_TYPES)
    with pytest.raises(ValueError, match="valid: train, test"):
        env.tasks("valid_unseen")


def test_oracle_wins_every_test_task_and_a_train_sample(env):
    tasks = env.tasks("test") + env.tasks("train")[::97]
    for task in tasks:
        plan = env.oracle_actions(task)
        trace = _play(env, task, plan)
        obs, reward, terminated, truncated, info = trace[-1]
        assert all(step[4]["valid"] for step in trace[1:]), task.task_id
        assert info["won"] and reward == 1.0 and terminated and not truncated and not info["timeout"], task.task_id
        assert len(trace) - 1 == len(plan)


def test_reset_is_deterministic_and_independent_of_history(env):
    task = env.tasks("train")[123]
    first, _info = env.reset(task)
    rng = random.Random(0)
    for _ in range(10):
        env.step(rng.choice(env.admissible_actions))
    env.reset(env.tasks("train")[5])
    again, _info = env.reset(task)
    assert first == again
    assert make("household").reset(task) == (first, {})  # a fresh instance too


def test_alfworld_like_text_and_goal():
    env = make("household")
    task = next(t for t in env.tasks("test") if t.task_type == "heat")
    obs, _info = env.reset(task)
    assert obs.text.startswith("You are in the middle of a room. Looking quickly around you, you see a ")
    assert "Your task is to: put a hot " in obs.text and obs.goal.startswith("put a hot ")
    obs, _, _, _, info = env.step("go to microwave 1")
    assert obs.text.startswith("You arrive at microwave 1.") and info["valid"] and info["state_changed"]
    obs, _, _, _, info = env.step("dance")
    assert obs.text == "Nothing happens." and not info["valid"] and not info["state_changed"]


def test_holding_at_most_one_object():
    env = make("household")
    task = env.tasks("test")[0]
    plan = env.oracle_actions(task)
    env.reset(task)
    for a in plan:
        env.step(a)
        if a.startswith("take "):
            break
    assert not any(c.startswith("take ") for c in env.admissible_actions)
    assert any(c.startswith("put ") for c in env.admissible_actions)


def test_clone_is_independent(env):
    task = env.tasks("train")[7]
    env.reset(task)
    env.step(env.admissible_actions[0])
    twin = env.clone()
    key = twin.observation.state_key
    env.step(env.admissible_actions[0])
    assert twin.observation.state_key == key
    obs_a = env.step("look")[0]
    assert twin.step("look")[0].state_key == key and obs_a.state_key == env.observation.state_key


def test_returning_to_a_situation_gives_its_key_and_lookups_keep_it(env):
    task = env.tasks("train")[3]
    env.reset(task)
    receps = [a for a in env.admissible_actions if a.startswith("go to ")]
    k1 = env.step(receps[0])[0].state_key
    env.step(receps[1])
    assert env.step(receps[0])[0].state_key == k1  # same situation, 3 steps later
    for cmd in ("look", "inventory"):
        obs, _, _, _, info = env.step(cmd)
        assert info["valid"] and not info["state_changed"] and obs.state_key == k1
