"""Test doubles: a fixed stochastic *scripted* policy (not a model) and a stand-in for verl's LLM client, for
benchmarks, tests and smoke runs (``spa collect --scripted``). Nothing here is used by training with a model.

``ScriptedPolicy`` reads what a model would read, the rendered prompt, and answers in the model's format
(``<action>...</action>``): it picks one of the admissible actions listed in the prompt at random, preferring actions
that mention words of the task goal, rarely "look"/"inventory"/"examine", and sometimes (``p_malformed``) replies
with a malformed answer. Its randomness comes from an explicit seed, so two runs with the same seeds see the same
replies.

``ScriptedLLMClient`` wraps the policy behind the interface of verl's ``LLMServerClient.generate`` (token ids in,
``TokenOutput`` out), so verl's real agent-loop workers, TransferQueue, replay buffer and advantage step can run
without a model. It is a test double for the *model only*, and is named as such everywhere it is used.
"""

from __future__ import annotations

import random
import re
from typing import Any

from threespo_verl.io_utils import stable_seed
from threespo_verl.rollout.expand import Sample

__all__ = ["ScriptedLLMClient", "ScriptedPolicy", "household_plans", "parse_prompt", "scripted_sampler", "seeded_rng"]

_ACTIONS_RE = re.compile(r"Your admissible actions of the current situation are: \[(.*?)\]\.\n", re.S)
_GOAL_RE = re.compile(r"Your task is to: (.*?)\n")
_LOW_VALUE = ("look", "inventory", "examine")
_STOP = {"a", "an", "the", "in/on", "in", "on", "put", "two", "under", "at", "with", "from", "to", "go", "i", "and",
         "need", "look"}


def parse_prompt(text: str) -> tuple[str, list[str]]:
    """(goal, admissible actions) from a prompt rendered by ``envs/prompts.py`` (the goal of its head line: the
    history may quote observations that repeat it, followed by other text)."""
    goals = _GOAL_RE.findall(text)
    m = _ACTIONS_RE.findall(text)
    actions: list[str] = []
    if m:
        body = m[-1]
        sep = ",\n" if ",\n" in body else ", "
        actions = [a.strip() for a in body.split(sep) if a.strip()]
    return (goals[0] if goals else ""), actions


class ScriptedPolicy:
    """See the module docstring. ``goal_weight``: weight of an action sharing a word with the goal (others 1).

    ``plans`` (optional) maps a goal text to the actions of a known solution (e.g. the household oracle's): its
    actions get ``plan_weight`` whenever they are admissible (its moves ``plan_move_weight``), so the policy solves tasks
    some of the time instead of almost never: outcomes then differ between episodes, as a model's do.
    """

    def __init__(self, goal_weight: float = 4.0, low_value_weight: float = 0.2, p_malformed: float = 0.05,
                 plans: dict[str, list[str]] | None = None, plan_weight: float = 8.0,
                 plan_move_weight: float | None = None) -> None:
        self.goal_weight = goal_weight
        self.low_value_weight = low_value_weight
        self.p_malformed = p_malformed
        self.plans = {g: set(p) for g, p in (plans or {}).items()}
        self.plan_weight = plan_weight
        self.plan_move_weight = goal_weight if plan_move_weight is None else plan_move_weight

    def reply(self, prompt_text: str, rng: random.Random) -> str:
        goal, actions = parse_prompt(prompt_text)
        if not actions or rng.random() < self.p_malformed:
            return "I am not sure what to do here."
        words = {w.strip(".,") for w in goal.lower().split() if not w.strip(".,").isdigit()} - _STOP
        plan = self.plans.get(goal, ())
        weights = []
        for a in actions:
            if a in plan:
                # moving is always possible; the plan's other actions only where they belong, so they weigh more
                weights.append(self.plan_move_weight if a.startswith("go to ") else self.plan_weight)
            elif a.split()[0] in _LOW_VALUE:
                weights.append(self.low_value_weight)
            elif words & set(a.lower().split()):
                weights.append(self.goal_weight)
            else:
                weights.append(1.0)
        return f"<action>{rng.choices(actions, weights=weights)[0]}</action>"


def household_plans(tasks) -> dict[str, list[str]]:
    """Goal text -> the household oracle's solution, for ``ScriptedPolicy(plans=...)``."""
    from threespo_verl.envs.household import HouseholdEnv

    env = HouseholdEnv()
    return {env.reset(t)[0].goal: env.oracle_actions(t) for t in tasks}


def seeded_rng(*parts: Any) -> random.Random:
    """A ``random.Random`` seeded from the text of ``parts`` (stable across processes and runs)."""
    return random.Random(stable_seed(*parts))


def scripted_sampler(policy: ScriptedPolicy, seed: int):
    """A ``SampleFn`` for ``expand_node``/``play_episode``: n independent replies; the k-th call of the sampler
    with a given prompt draws from ``seeded_rng(seed, prompt, k, i)``."""
    calls: dict[str, int] = {}

    async def sample(messages, n, choices=()):
        text = "\n".join(m["content"] for m in messages)
        k = calls.get(text, 0)
        calls[text] = k + 1
        return [Sample(policy.reply(text, seeded_rng(seed, text, k, i))) for i in range(n)]

    return sample


class ScriptedLLMClient:
    """Test double of verl's ``LLMServerClient`` backed by ``ScriptedPolicy`` (see the module docstring).

    ``generate`` decodes the prompt ids with the model's tokenizer, lets the policy answer, and returns the answer's
    token ids (ending with eos) in a ``TokenOutput``. With ``sampling_params["seed"]`` the reply depends only on
    (seed, prompt); otherwise on (client seed, prompt, how often this prompt was asked). ``version`` plays the role
    of the weights' global step. ``calls`` counts generate calls (in the process that holds this object).
    """

    def __init__(self, tokenizer_path: str, seed: int = 0, policy: ScriptedPolicy | None = None,
                 version: int = 0) -> None:
        self.tokenizer_path = str(tokenizer_path)
        self.seed = seed
        self.policy = policy or ScriptedPolicy()
        self.version = version
        self.calls = 0
        self._tokenizer = None
        self._asked: dict[str, int] = {}

    def __getstate__(self):  # ship to Ray workers without the loaded tokenizer
        d = dict(self.__dict__)
        d["_tokenizer"] = None
        return d

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_path)
        return self._tokenizer

    async def generate(self, request_id, *, prompt_ids: list[int], sampling_params: dict[str, Any], **kwargs):
        from verl.workers.rollout.replica import TokenOutput

        self.calls += 1
        text = self.tokenizer.decode(prompt_ids, skip_special_tokens=True)
        if sampling_params.get("seed") is not None:
            rng = seeded_rng(self.seed, sampling_params["seed"], text)
        else:
            k = self._asked.get(text, 0)
            self._asked[text] = k + 1
            rng = seeded_rng(self.seed, text, k)
        reply = self.policy.reply(text, rng)
        ids = self.tokenizer.encode(reply, add_special_tokens=False) + [self.tokenizer.eos_token_id]
        max_tokens = sampling_params.get("max_tokens")
        if max_tokens:
            ids = ids[: int(max_tokens)]
        logprobs = [-0.5] * len(ids) if sampling_params.get("logprobs") else None
        return TokenOutput(token_ids=ids, log_probs=logprobs, stop_reason="completed",
                           extra_fields={"global_steps": self.version, "min_global_steps": self.version,
                                         "max_global_steps": self.version})
