"""ALFWorld through our wrapper: the stored walkthroughs win; splits, task types, keys, invalid actions."""

from __future__ import annotations

from collections import Counter

import pytest

from threespo_verl.data import MissingDataError
from threespo_verl.envs import make


@pytest.fixture(scope="module")
def env(alfworld_data):
    e = make("alfworld", data_dir=alfworld_data, max_steps=50)
    yield e
    e.close()


def _win(env, task):
    obs, _info = env.reset(task)
    info = {}
    for action in env.walkthrough(task):
        assert env.is_valid(action), (task.task_id, action, obs.admissible_actions[:20])
        obs, reward, terminated, truncated, info = env.step(action)
    return info.get("won", False) and reward == 1.0 and terminated and not truncated


def test_splits_and_task_types(env, alfworld_data):
    seen, unseen = env.tasks("valid_seen"), env.tasks("valid_unseen")
    assert (len(seen), len(unseen)) == (140, 134)
    assert set(Counter(t.task_type for t in seen)) == {"pick", "look", "clean", "heat", "cool", "pick2"}
    assert [t.task_id for t in seen] == sorted(t.task_id for t in seen)
    assert seen[0].task_id.startswith("alfworld/valid_seen/")
    with pytest.raises(ValueError, match="valid: train, valid_seen, valid_unseen"):
        env.tasks("test")
    from threespo_verl.envs.alfworld_setup import _installed

    if "train" in _installed(alfworld_data):  # the user's full install (`threespo-verl setup alfworld`)
        assert len(env.tasks("train")) > 3000
    else:  # the archives fixture installs only the eval splits: a missing split names the fix
        with pytest.raises(MissingDataError, match="threespo-verl setup alfworld"):
            env.tasks("train")


def test_walkthrough_wins_one_game_per_task_type(env):
    sample = {}
    for task in env.tasks("valid_unseen"):
        sample.setdefault(task.task_type, task)
    assert len(sample) == 6
    for task in sample.values():
        assert _win(env, task), task.task_id


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_walkthrough_wins_all_274_eval_games(env):
    failed = [t.task_id for split in ("valid_seen", "valid_unseen") for t in env.tasks(split) if not _win(env, t)]
    assert failed == []


def test_first_observation_and_goal(env):
    obs, _info = env.reset(env.tasks("valid_seen")[0])
    assert obs.text.startswith("You are in the middle of a room.") and "Welcome" not in obs.text
    assert obs.goal and f"Your task is to: {obs.goal}" in obs.text
    assert all(a == a.lower() for a in obs.admissible_actions) and "look" in obs.admissible_actions


def test_state_keys(env):
    task = env.tasks("valid_seen")[3]
    obs0, _info = env.reset(task)
    go = [a for a in obs0.admissible_actions if a.startswith("go to ")]
    k1 = env.step(go[0])[0].state_key
    assert k1 != obs0.state_key
    env.step(go[1])
    obs, _, _, _, info = env.step(go[0])
    assert obs.state_key == k1  # back in the same situation: same key, whatever the step count
    for cmd in ("look", "inventory"):
        obs, _, _, _, info = env.step(cmd)
        assert info["valid"] and obs.state_key == k1 and not info["state_changed"]
    obs, _, _, _, info = env.step("teleport to the moon")
    assert obs.text == "Nothing happens." and not info["valid"] and obs.state_key == k1


def test_missing_data_names_the_setup_command(tmp_path):
    with pytest.raises(MissingDataError, match="threespo-verl setup alfworld"):
        make("alfworld", data_dir=tmp_path / "nothing")
