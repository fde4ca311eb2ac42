"""Prompt rendering: goal, last K history steps, current observation, admissible actions, format."""

from __future__ import annotations

from threespo_verl.envs.base import Observation
from threespo_verl.envs.prompts import render_prompt

OBS = Observation(text="You arrive at fridge 1. The fridge 1 is closed.", state_key="k",
                  admissible_actions=("open fridge 1", "go to desk 1", "look"), task_id="t", task_type="cool",
                  goal="put a cool apple in/on desk 1.")


def test_first_step_prompt():
    (msg,) = render_prompt("household", OBS)
    text = msg["content"]
    assert msg["role"] == "user"
    assert "Your task is to: put a cool apple in/on desk 1." in text
    assert "Your current observation is: You arrive at fridge 1." in text
    assert "[open fridge 1, go to desk 1, look]" in text
    assert "<think> </think>" in text and "<action> </action>" in text
    assert "Example." not in text


def test_history_keeps_only_the_last_k_steps():
    history = [(f"obs {i}", f"act {i}") for i in range(1, 6)]
    text = render_prompt("alfworld", OBS, history, history_length=2)[0]["content"]
    assert "already taken 5 step(s)" in text and "most recent 2 observations" in text
    assert "'obs 4', Action 4: 'act 4'" in text and "'obs 5', Action 5: 'act 5'" in text
    assert "obs 3" not in text
    assert "You are now at step 6" in text


def test_few_shot_and_plain_format_and_webshop():
    text = render_prompt("household", OBS, few_shot=True, reasoning=False)[0]["content"]
    assert text.startswith("Example.") and "<think>" not in text.split("Answer:")[1]
    web = render_prompt("webshop", OBS)[0]["content"]
    assert "WebShop" in web and "open fridge 1,\ngo to desk 1" in web
    # any other environment (a user-defined one): the same layout under a neutral head, no worked example
    other = render_prompt("counting", OBS, few_shot=True)[0]["content"]
    assert other.startswith("You are an expert agent operating in a text environment. Your task is to: ")
    assert "open fridge 1, go to desk 1" in other and "Example." not in other
