"""One episode as one token row: trajectory mode of ``algorithm=ppo | spa_ppo`` (DESIGN §3, §5).

The policy plays the episode as one growing chat, the sequence verl's critic and the advantage estimator read::

    prompt   = U_k                                           (the first kept user turn + generation prompt)
    response = A_k C_k U_k+1 A_k+1 C_k+1 ... U_T-1 A_T-1     (mask: A = 1, C and U = 0)

``U_t`` is step t's user turn exactly as ``envs.prompts.render_prompt`` renders it for every other algorithm (one
user message per step, with the K-step history), ``A_t`` the tokens the policy generated for it (the reply, ending
with the template's end-of-turn token when the policy wrote it), ``C_t`` the template tokens that close the turn
after the reply (the end-of-turn token when the reply did not end with it, then the template's trailing text). Reply
t is generated with the row's prefix up to ``U_t`` as its context, so the sequence the actor and the critic are
trained on is the one the policy was sampled from. The tokens equal the tokenization of
``apply_chat_template([u_k, a_k, u_k+1, ...])`` (tested), the format ``threespo-verl sft`` trains on.

**Rewards.** Step t's reward sits at the closing token of ``A_t`` (its last generated token, ``turn_ends``) and
nowhere else. Each ``A_t`` is one contiguous run of mask 1s (``C_t U_t+1`` is never empty), which is how the default
estimator ``turn_gae`` (``algos/turn_gae.py``) finds the turns: GAE over turns, V read at each turn's first action
token, gamma and lambda once per step. verl's ``gae`` (``algorithm.adv_estimator=gae``) skips the masked tokens
instead, so with values V_j at the action tokens j = 1..n (in order) and r_j the step reward on a closing token (0
elsewhere) it discounts once per token::

    delta_j = r_j + gamma V_j+1 - V_j        (V_n+1 = 0)          A_j = delta_j + gamma lambda A_j+1

**Context budget** (checked before each reply, never after): ``len(prefix) + len(C_t-1 U_t) + reply_cap <= budget``
(``budget`` = ``rollout.prompt_length + rollout.response_length``, ``reply_cap`` = ``env.max_tokens_per_step``).
When the next turn would not fit, the oldest turns are dropped whole: the row then starts at a later user turn
rendered as a first turn, and later replies are generated from that shorter context. Dropped turns leave the row
(their rewards too) and are counted in ``dropped``; the turn a reply was generated for is never dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

Messages = list[dict[str, str]]
#: algorithms whose episodes are one row each (trajectory mode: critic + GAE over turns, DESIGN §3)
TRAJECTORY_ALGOS = ("ppo", "spa_ppo")


@dataclasses.dataclass
class _Turn:
    messages: Messages  # the step's user turn, as rendered
    cont_ids: list[int]  # U_t as a continuation turn (no system prompt)
    act_ids: list[int] = dataclasses.field(default_factory=list)  # A_t (generated)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    close_ids: list[int] = dataclasses.field(default_factory=list)  # C_t (template)


@dataclasses.dataclass(frozen=True)
class TrajectoryRow:
    """The row of one episode: ``prompt_ids`` + ``response_ids`` with ``response_mask`` 1 on generated tokens."""

    prompt_ids: list[int]
    response_ids: list[int]
    response_mask: list[int]
    response_logprobs: list[float]
    turn_ends: list[int]  # index in response_ids of the closing token of each kept action turn, ascending
    first_turn: int  # step index of the first kept turn (= turns dropped from the front)
    n_turns: int  # steps of the episode (kept + dropped)

    @property
    def dropped(self) -> int:
        return self.first_turn


class TemplateShape:
    """What a tokenizer's chat template puts around the turns (computed once per tokenizer):

    * ``system``: the text a template inserts before the first user turn when none is given (Qwen2.5's default
      system prompt; "" for ChatML as SmolLM2 uses it): stripped from continuation turns;
    * ``end``: the end-of-turn marker after an assistant reply (``<|im_end|>``, ``<|eot_id|>``), ``trail`` the text
      the template writes after it (``"\\n"`` for ChatML, "" for Llama 3).
    """

    def __init__(self, tokenizer, chat_template_kwargs: dict[str, Any] | None = None) -> None:
        self.tokenizer = tokenizer
        self.kwargs = dict(chat_template_kwargs or {})
        one = self.render([{"role": "user", "content": ""}], False)
        two = self.render([{"role": "user", "content": ""}] * 2, False)
        user = two[len(one):]
        self.system = one[: len(one) - len(user)] if user and one.endswith(user) else ""
        probe = "\x00probe\x00"
        opened = self.render([{"role": "user", "content": "q"}], True)
        closed = self.render([{"role": "user", "content": "q"}, {"role": "assistant", "content": probe}], False)
        if not closed.startswith(opened) or probe not in closed[len(opened):]:
            raise ValueError("the chat template does not render a conversation as the concatenation of its turns; "
                             "trajectory rows need one that does (ChatML, Qwen2/2.5, Llama 3, SmolLM2 templates do)")
        tail = closed[len(opened):].split(probe, 1)[1]
        self.end = tail.rstrip()
        self.trail = tail[len(self.end):]
        self.end_ids = self.encode(self.end)
        self.trail_ids = self.encode(self.trail)

    def render(self, messages: Messages, generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False,
                                                  **self.kwargs)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False)) if text else []

    def first_ids(self, messages: Messages) -> list[int]:
        """A user turn that opens a conversation (with the template's system prompt) + the generation prompt."""
        return self.encode(self.render(messages, True))

    def continuation_ids(self, messages: Messages) -> list[int]:
        """A user turn that follows an assistant turn (no system prompt) + the generation prompt."""
        text = self.render(messages, True)
        if self.system and text.startswith(self.system):
            text = text[len(self.system):]
        return self.encode(text)


class TrajectoryTokens:
    """Builds one episode's row turn by turn (see the module docstring)::

        ctx = TrajectoryTokens(shape, budget=4096, reply_cap=256)
        prompt_ids = ctx.open(messages_t)      # the context reply t is generated from
        ctx.close(reply_token_ids, logprobs)   # what the policy generated
        row = ctx.row()

    ``first_ids`` (default ``shape.first_ids``) turns a step's messages into a first turn: the agent loop passes its
    own, which keeps an over-long single prompt within ``rollout.prompt_length``.
    """

    def __init__(self, shape: TemplateShape, budget: int, reply_cap: int,
                 first_ids: Callable[[Messages], list[int]] | None = None) -> None:
        if reply_cap < 1 or budget <= reply_cap:
            raise ValueError(f"a trajectory row needs budget > reply_cap >= 1, got budget={budget}, "
                             f"reply_cap={reply_cap}")
        self.shape = shape
        self.budget = int(budget)
        self.reply_cap = int(reply_cap)
        self._first = first_ids or shape.first_ids
        self.turns: list[_Turn] = []
        self.first_turn = 0
        self._head: list[int] = []  # U_first as a first turn

    def _context(self, upto: int) -> list[int]:
        """Tokens from the first kept turn through U_upto (the prompt reply ``upto`` is generated from)."""
        ids = list(self._head)
        for i in range(self.first_turn, upto):
            t = self.turns[i]
            ids += t.act_ids + t.close_ids
            ids += self.turns[i + 1].cont_ids
        return ids

    def open(self, messages: Messages) -> list[int]:
        """Add step t's user turn; return the context its reply is generated from. Drops the oldest turns first
        when the context plus ``reply_cap`` would exceed ``budget``."""
        if self.turns and not self.turns[-1].act_ids:
            raise RuntimeError("open() twice without close(): every user turn needs its reply first")
        t = len(self.turns)
        self.turns.append(_Turn(messages=list(messages), cont_ids=self.shape.continuation_ids(messages)))
        if t == 0:
            self._head = self._first(messages)
        while True:
            ids = self._context(t)
            if len(ids) + self.reply_cap <= self.budget or self.first_turn == t:
                return ids
            self.first_turn += 1
            self._head = self._first(self.turns[self.first_turn].messages)

    def close(self, token_ids: Sequence[int], logprobs: Sequence[float] | None = None) -> None:
        """Record the reply to the last opened turn: ``token_ids`` as generated (an empty reply becomes the
        end-of-turn marker, as if the policy had stopped at once)."""
        turn = self.turns[-1]
        ids = [int(x) for x in token_ids] or list(self.shape.end_ids)
        lp = [float(x) for x in logprobs] if logprobs is not None else []
        turn.logprobs = (lp + [0.0] * len(ids))[: len(ids)]
        turn.act_ids = ids
        ended = self.shape.end_ids and ids[-len(self.shape.end_ids):] == self.shape.end_ids
        turn.close_ids = (list(self.shape.trail_ids) if ended
                          else list(self.shape.end_ids) + list(self.shape.trail_ids))

    def row(self) -> TrajectoryRow:
        """The row of the played episode (every opened turn must have been closed)."""
        if not self.turns or not self.turns[-1].act_ids:
            raise RuntimeError("row() needs at least one turn, each with its reply")
        resp: list[int] = []
        mask: list[int] = []
        lps: list[float] = []
        ends: list[int] = []
        last = len(self.turns) - 1
        for i in range(self.first_turn, last + 1):
            t = self.turns[i]
            if i > self.first_turn:
                resp += t.cont_ids
                mask += [0] * len(t.cont_ids)
                lps += [0.0] * len(t.cont_ids)
            resp += t.act_ids
            mask += [1] * len(t.act_ids)
            lps += t.logprobs
            ends.append(len(resp) - 1)
            if i < last:
                resp += t.close_ids
                mask += [0] * len(t.close_ids)
                lps += [0.0] * len(t.close_ids)
        return TrajectoryRow(prompt_ids=list(self._head), response_ids=resp, response_mask=mask,
                             response_logprobs=lps, turn_ends=ends, first_turn=self.first_turn,
                             n_turns=len(self.turns))


def place_turn_rewards(width: int, turn_ends: Sequence[int], rewards: Sequence[float]) -> list[float]:
    """Token-level rewards of one trajectory row: ``rewards[i]`` at ``turn_ends[i]``, 0 elsewhere."""
    if len(turn_ends) != len(rewards):
        raise ValueError(f"{len(turn_ends)} action turns but {len(rewards)} rewards")
    out = [0.0] * int(width)
    for pos, r in zip(turn_ends, rewards):
        if not 0 <= pos < width:
            raise ValueError(f"turn end {pos} outside a response of {width} tokens")
        out[pos] = float(r)
    return out
