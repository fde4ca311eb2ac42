"""The user-defined environment of docs/custom_env.md (examples/custom_env/counting_env.py): it passes check_env,
builds by import path in a fresh process (as a Ray rollout worker does), and plays through the rollout code with the
generic prompt."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from threespo_verl.envs import UnknownEnvError, available, check_env, make, register_env
from threespo_verl.envs.panels import panel
from threespo_verl.envs.prompts import render_prompt

ROOT = Path(__file__).resolve().parents[2]
TARGET = "examples.custom_env.counting_env:CountingEnv"


def test_counting_env_passes_check_env():
    env = make(TARGET, max_steps=6)
    check_env(env)
    check_env(env, split="test")
    assert env.name == "counting" and TARGET not in available()


def test_import_path_builds_the_env_in_a_fresh_process():
    code = ("from threespo_verl.envs import available, check_env, make\n"
            f"env = make({TARGET!r}, max_steps=5)\n"
            "check_env(env)\n"
            "print(type(env).__module__, len(env.tasks('train')), 'counting' in available())\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["examples.custom_env.counting_env", "32", "False"]


def test_register_env_names_it_in_this_process_only():
    register_env("counting-local", TARGET)
    try:
        assert type(make("counting-local")).__name__ == "CountingEnv"
    finally:
        from threespo_verl.envs import _REGISTRY

        _REGISTRY.pop("counting-local")


@pytest.mark.parametrize("name, message", [
    ("no_such_package.env:Env", "cannot import module 'no_such_package.env'"),
    ("examples.custom_env.counting_env:Nope", "has no attribute 'Nope'"),
    ("counting", "or an import path 'package.module:ClassName'"),
])
def test_bad_names_say_what_is_wrong(name, message):
    with pytest.raises(UnknownEnvError, match=message):
        make(name)


def test_a_class_that_is_not_a_text_env_is_refused():
    with pytest.raises(TypeError, match="not a TextEnv subclass"):
        make("examples.custom_env.counting_env:Observation")


def test_panel_of_a_custom_env_is_a_split_and_the_prompt_is_generic():
    p = panel(TARGET, "test")
    assert len(p) == 8 and p.tasks == tuple(make(TARGET).tasks("test"))
    obs, _info = make(TARGET).reset(p.tasks[0])
    assert p.tasks[0].env_name == "counting"
    text = render_prompt("counting", obs)[0]["content"]
    assert "operating in a text environment. Your task is to: make the counter show" in text
    assert "[add 1, add 2]" in text


def test_scripted_episodes_through_the_rollout_code():
    from threespo_verl.rollout.expand import play_episode
    from threespo_verl.testing import ScriptedPolicy, parse_prompt, scripted_sampler

    env = make(TARGET, max_steps=6)
    outcomes = []
    for k, task in enumerate(env.tasks("train")[:8]):
        steps = asyncio.run(play_episode(task, env, scripted_sampler(ScriptedPolicy(p_malformed=0.2), k)))
        last = steps[-1].branch
        assert last.done and not any(s.branch.done for s in steps[:-1])
        count = int(last.obs_text.split()[-1].rstrip("."))  # "... The counter shows N."
        assert last.won == (count == task.payload["target"])
        assert last.timeout == (len(steps) == 6 and count < task.payload["target"])  # neither won nor overshot
        outcomes.append(last.won)
    assert any(outcomes) and not all(outcomes)
    goal, actions = parse_prompt(render_prompt("counting", env.reset(env.tasks("test")[0])[0])[0]["content"])
    assert goal.startswith("make the counter show") and actions == ["add 1", "add 2"]
