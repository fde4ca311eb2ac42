"""How ``spa/progress.py``'s estimator sees a trajectory: token windows with a readout per step (DESIGN §3).

**Serialization.** A trajectory is the first step's prompt (the task head: the env's system/task text and first
observation, as the policy saw it) followed by alternating turns: assistant = the policy's reply of step t, user =
the environment's observation after step t (``observations``; by default the user message of step t+1's prompt).
It goes through the tokenizer's chat template; each turn is tokenized on its own, so the token blocks of the turns
are independent and a turn can be dropped whole. The assistant span of a turn is its content plus the template's
end-of-turn marker (``<|im_end|>`` for ChatML/Qwen2/SmolLM2, ``<|eot_id|>`` for Llama 3), trailing whitespace not
included; its last token is the readout (``threespo_verl.algos.spa.readout_positions`` of the assistant mask). A
sequence ends at its last readout.

**Truncation.** When a trajectory does not fit ``max_length`` tokens, old turns are dropped whole from the left,
keeping the head when it fits together with at least the last turn (else the head goes too). A dropped turn's
readout is never lost: ``serialize_windows`` scores the dropped steps from the serialization of the trajectory's
prefix that ends with them (truncated the same way), so every step has exactly one c_t. The backbone is causal, so
c_t only depends on tokens up to its readout: for a trajectory that fits, a prefix gives the same c_t as the whole.
A single turn longer than ``max_length`` is an error (raise ``max_length`` or cap the reply length).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from threespo_verl.algos.spa import readout_positions


class TemplateError(ValueError):
    """The chat template does not render a conversation as the concatenation of its turns."""


@dataclasses.dataclass(frozen=True)
class Serialized:
    """One token sequence of a trajectory and the readouts it scores: steps ``first_step .. end_step - 1``."""

    input_ids: list[int]
    assistant_mask: list[int]
    readouts: list[int]  # token index of the readout of each scored step, in step order
    first_step: int
    end_step: int
    truncated: bool  # old turns or the head were dropped to fit max_length
    head_kept: bool

    @property
    def steps(self) -> range:
        return range(self.first_step, self.end_step)


@dataclasses.dataclass(frozen=True)
class _Turn:
    pre: list[int]  # template tokens opening the assistant turn
    core: list[int]  # reply + end-of-turn marker (the assistant span; its last token is the readout)
    post: list[int]  # trailing whitespace + the following user observation turn ([] for the last step)


def _render(tokenizer, messages, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _after(longer: str, prefix: str, what: str) -> str:
    if not longer.startswith(prefix):
        raise TemplateError(
            f"the chat template rewrites earlier turns when {what} is added (rendering is not prefix-stable, e.g. "
            f"it strips reasoning from old assistant turns); serialize needs a template that renders a "
            f"conversation as the concatenation of its turns (ChatML, Qwen2/2.5, Llama 3, SmolLM2 templates do)")
    return longer[len(prefix):]


def _tokens(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def _user_content(messages) -> str:
    users = [m["content"] for m in messages if m.get("role") == "user"]
    if not users:
        raise ValueError("a step's prompt has no user message to use as the observation turn")
    return users[-1]


def _turns(messages_per_step, actions, tokenizer, observations) -> tuple[list[int], list[_Turn]]:
    n = len(actions)
    if n == 0:
        raise ValueError("a trajectory needs at least one step")
    if len(messages_per_step) != n:
        raise ValueError(f"{n} actions but {len(messages_per_step)} step prompts")
    if observations is None:
        observations = [_user_content(messages_per_step[t + 1]) for t in range(n - 1)]
    elif len(observations) < n - 1:
        raise ValueError(f"{n} steps need at least {n - 1} observations, got {len(observations)}")
    conv = [dict(m) for m in messages_per_step[0]]
    prev = _render(tokenizer, conv, False)
    head = _tokens(tokenizer, prev)
    turns = []
    for t in range(n):
        opened = _render(tokenizer, conv, True)
        pre = _after(opened, prev, "a generation prompt")
        conv.append({"role": "assistant", "content": str(actions[t])})
        closed = _render(tokenizer, conv, False)
        act = _after(closed, opened, f"assistant turn {t}")
        core = act.rstrip()
        if not core:
            raise TemplateError(f"assistant turn {t} renders to no text; cannot place its readout")
        post = act[len(core):]
        if t < n - 1:
            conv.append({"role": "user", "content": str(observations[t])})
            nxt = _render(tokenizer, conv, False)
            post += _after(nxt, closed, f"observation turn {t}")
            prev = nxt
        turns.append(_Turn(_tokens(tokenizer, pre), _tokens(tokenizer, core), _tokens(tokenizer, post)))
    return head, turns


def _window(head: list[int], turns: list[_Turn], end: int, max_length: int) -> Serialized:
    """Steps [j, end) with j as small as fits: head (if it fits with turn end-1) + turns j..end-1, the last turn
    without its following observation."""
    def size(t: int, last: bool) -> int:
        u = turns[t]
        return len(u.pre) + len(u.core) + (0 if last else len(u.post))

    need = size(end - 1, True)
    if need > max_length:
        raise ValueError(f"step {end - 1}'s turn alone is {need} tokens, more than max_length={max_length}: raise "
                         f"max_length or cap the reply length (max_tokens)")
    head_kept = len(head) + need <= max_length
    total = need + (len(head) if head_kept else 0)
    j = end - 1
    while j > 0 and total + size(j - 1, False) <= max_length:
        j -= 1
        total += size(j, False)
    ids, mask = (list(head), [0] * len(head)) if head_kept else ([], [])
    for t in range(j, end):
        u = turns[t]
        post = [] if t == end - 1 else u.post
        ids += u.pre + u.core + post
        mask += [0] * len(u.pre) + [1] * len(u.core) + [0] * len(post)
    readouts = readout_positions(np.asarray(mask, dtype=np.int8)).tolist()
    assert len(readouts) == end - j and len(ids) <= max_length
    return Serialized(ids, mask, readouts, j, end, truncated=j > 0 or not head_kept, head_kept=head_kept)


def serialize(messages_per_step: Sequence[Sequence[dict]], actions: Sequence[str], tokenizer, max_length: int,
              observations: Sequence[str] | None = None) -> Serialized:
    """The token sequence of a whole trajectory (see the module docstring): ``input_ids``, one ``readouts`` entry
    per kept action turn, ``truncated`` if old turns (or the head) had to be dropped to fit ``max_length``; the
    kept steps are ``first_step ..`` the last. Raises ValueError if even the last turn does not fit."""
    head, turns = _turns(messages_per_step, actions, tokenizer, observations)
    return _window(head, turns, len(turns), max_length)


def serialize_windows(messages_per_step, actions, tokenizer, max_length: int,
                      observations: Sequence[str] | None = None) -> list[Serialized]:
    """Sequences that score every step exactly once, in step order: ``serialize`` of the whole trajectory, then,
    while steps were dropped from its left, ``serialize`` of the prefix ending with the last dropped step."""
    head, turns = _turns(messages_per_step, actions, tokenizer, observations)
    windows, end = [], len(turns)
    while end > 0:
        w = _window(head, turns, end, max_length)
        windows.append(w)
        end = w.first_step
    return windows[::-1]


def record_turns(record: dict[str, Any]) -> tuple[list, list[str], list[str]]:
    """(messages per step, replies, observations) of a collected trajectory record."""
    steps = record.get("steps")
    if not steps:
        raise ValueError(f"trajectory {record.get('task_id', '?')} has no steps")
    return [s["messages"] for s in steps], [s["reply"] for s in steps], [s["observation"] for s in steps]
