"""Prompt rendering: task, the last K steps of history, the current observation, the admissible actions.

The wording follows the ALFWorld and WebShop prompts of verl-agent / GiGPO (the protocol 3SPO and GiGPO report
numbers with), so results stay comparable: one user message per step, the last ``history_length`` (default 2)
observation/action pairs inlined, and the answer format ``<think>...</think><action>...</action>``.

Any other environment (a user-defined one, ``docs/custom_env.md``) gets the same layout under a neutral head line
("You are an expert agent operating in a text environment. Your task is to: ..."), one admissible action per
comma, and no worked example (``few_shot`` adds nothing there).

``few_shot=True`` prepends one worked example (a small model such as SmolLM2-135M needs it to emit valid actions at
all); ``reasoning=False`` asks for the action block only (shorter replies on slow CPU rollouts).
"""

from __future__ import annotations

from collections.abc import Sequence

from threespo_verl.envs.base import Observation

Step = tuple[str, str]  # (observation text, action taken)

_ALFWORLD_HEAD = "You are an expert agent operating in the ALFRED Embodied Environment. Your task is to: {goal}\n"
_WEBSHOP_HEAD = "You are an expert autonomous agent operating in the WebShop e-commerce game. Your task is to: {goal}\n"
_GENERIC_HEAD = "You are an expert agent operating in a text environment. Your task is to: {goal}\n"

_HISTORY = (
    "Prior to this step, you have already taken {n_steps} step(s). Below are the most recent {k} observations and "
    "the corresponding actions you took: {history}\n"
    "You are now at step {step} and your current observation is: {obs}\n"
)
_FIRST = "Your current observation is: {obs}\n"
_ACTIONS = "Your admissible actions of the current situation are: [{actions}].\n\n"
_FORMAT_REASON = (
    "Now it's your turn to take an action.\n"
    "You should first reason step-by-step about the current situation. This reasoning process MUST be enclosed "
    "within <think> </think> tags.\n"
    "Once you've finished your reasoning, you should choose an admissible action for current step and present it "
    "within <action> </action> tags."
)
_FORMAT_PLAIN = (
    "Now it's your turn to take an action. Choose one admissible action for the current step and present it within "
    "<action> </action> tags."
)
_EXAMPLE = {
    "alfworld": (
        "Example. Task: put a mug in/on desk 1. Observation: You arrive at cabinet 1. The cabinet 1 is open. In it, "
        "you see a mug 1. Admissible actions: [close cabinet 1, take mug 1 from cabinet 1, go to desk 1, look].\n"
        "Answer: <action>take mug 1 from cabinet 1</action>\n\n"
    ),
    "webshop": (
        "Example. Task: i need a red cotton t-shirt under 30 dollars. Observation: [Search]. Admissible actions: "
        "[search[<your query>]].\nAnswer: <action>search[red cotton t-shirt]</action>\n\n"
    ),
}


def _render(family: str, head: str, obs: Observation, history: Sequence[Step], history_length: int,
            few_shot: bool, reasoning: bool, action_sep: str) -> list[dict[str, str]]:
    parts = [_EXAMPLE.get(family, "") if few_shot else "", head.format(goal=obs.goal)]
    recent = list(history)[-history_length:] if history_length > 0 else []
    if history:
        lines = "\n".join(
            f"[Observation {len(history) - len(recent) + i + 1}: '{o}', Action {len(history) - len(recent) + i + 1}: "
            f"'{a}']"
            for i, (o, a) in enumerate(recent)
        )
        parts.append(_HISTORY.format(n_steps=len(history), k=len(recent), history=lines or "(none)",
                                     step=len(history) + 1, obs=obs.text))
    else:
        parts.append(_FIRST.format(obs=obs.text))
    parts.append(_ACTIONS.format(actions=action_sep.join(obs.admissible_actions)))
    parts.append(_FORMAT_REASON if reasoning else _FORMAT_PLAIN)
    return [{"role": "user", "content": "".join(parts)}]


def render_alfworld_prompt(obs: Observation, history: Sequence[Step] = (), history_length: int = 2,
                           few_shot: bool = False, reasoning: bool = True) -> list[dict[str, str]]:
    """Chat messages for ALFWorld and the ALFWorld-like ``household`` game."""
    return _render("alfworld", _ALFWORLD_HEAD, obs, history, history_length, few_shot, reasoning, ", ")


def render_webshop_prompt(obs: Observation, history: Sequence[Step] = (), history_length: int = 2,
                          few_shot: bool = False, reasoning: bool = True) -> list[dict[str, str]]:
    """Chat messages for WebShop (one admissible action per line, as in verl-agent)."""
    return _render("webshop", _WEBSHOP_HEAD, obs, history, history_length, few_shot, reasoning, ",\n")


def render_generic_prompt(obs: Observation, history: Sequence[Step] = (), history_length: int = 2,
                          few_shot: bool = False, reasoning: bool = True) -> list[dict[str, str]]:
    """Chat messages for an environment without a template of its own (no worked example exists for it)."""
    return _render("generic", _GENERIC_HEAD, obs, history, history_length, few_shot, reasoning, ", ")


_RENDERERS = {"household": render_alfworld_prompt, "alfworld": render_alfworld_prompt,
              "webshop": render_webshop_prompt}


def render_prompt(env_name: str, obs: Observation, history: Sequence[Step] = (), history_length: int = 2,
                  few_shot: bool = False, reasoning: bool = True) -> list[dict[str, str]]:
    """The prompt of ``env_name`` (its ``Task.env_name``): the shipped environments' own templates, the generic
    one for any other environment."""
    return _RENDERERS.get(env_name, render_generic_prompt)(obs, history, history_length, few_shot, reasoning)


def render_fitting(render, fits, env_name: str, obs: Observation, history: Sequence[Step], *, history_length: int,
                   **kw) -> tuple[list[dict[str, str]], int]:
    """(messages, dropped): ``render`` with the most recent history turns that keep ``fits(messages)`` true.

    An over-long prompt keeps its head (system text, task, chat-template start) and the current observation; the
    oldest history turns are dropped one at a time (at most ``history_length``; with none left the prompt is returned
    as it is, the caller decides). ``dropped`` counts the turns removed, for the ``prompt_truncated`` metric.
    """
    shown = min(int(history_length), len(history))
    k = shown
    while True:
        messages = render(env_name, obs, history, history_length=k, **kw)
        if k == 0 or fits(messages):
            return messages, shown - k
        k -= 1
