"""One node expansion (3SPO, DESIGN §2.2-2.3) and one full episode (GRPO/GiGPO trajectory mode).

Both are plain ``async`` functions over three injected parts, so the same code runs inside verl's agent loop, in the
exploration benchmark and in the tests:

* ``sample(messages, n, choices) -> list[Sample]``: n replies of the policy to one chat prompt; ``choices`` are the
  admissible actions of the state (a policy may constrain its decoding to them, see ``env.constrain_actions``, or
  ignore them). The agent loop backs it with ``server_manager.generate``; the benchmark with a scripted policy.
  ``Sample.payload`` carries whatever the caller needs back (token ids, log-probs) untouched.
* an ``EnvCache`` (``envs/restore.py``) that puts environments into a node's state; every env call is awaited
  (``envs/pool.py``: in this process or in env worker processes), and the children of an expansion step
  concurrently;
* a ``Scorer`` returning (N_total, N_success) per state key and t from the state store's *last commit*.

Expansion of node s_t (3SPO)::

    S_t = S(s_t)  (Eq.1, committed snapshot)         n = min(ceil(G_max * S_t), max_branches)   (Eq.3)
    n = 0 -> pruned: nothing sampled, nothing emitted
    else  -> n replies; replies with the same action text share one child (one env step, one reward), but every
             reply stays its own row (``Expansion.replies``: its own tokens and log-probs), so an action's weight in
             the update is its sampling frequency and the group baseline is the mean over all n replies (DESIGN §2.4);
             R per child by Eq.2 with S(s_t+1) from the snapshot. The score difference uses the untruncated score
             (``score_diff``) and the store is read per (task, state) (``state_scope``), DESIGN §2.1-2.2.

A malformed reply is an invalid action (``action=None``): the environment counts the step, nothing changes, and Eq.2
subtracts the penalty. Nothing here raises on model output. An environment step that fails twice (``EnvFailure``:
the engine raised or its worker died, see ``envs/pool.py``) ends its branch or episode as a failed step
(``Branch.env_failed``: terminal, not won, the state unchanged, no invalid-action penalty for a parsed action), so
the reply keeps its row and is counted.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import numpy as np

from threespo_verl.algos.threespo import (StepReward, branching, state_score, step_reward,
                                          untruncated_state_score)
from threespo_verl.envs.actions import DEFAULT_PARSER, ActionParser
from threespo_verl.envs.base import Observation, Task, TextEnv
from threespo_verl.envs.prompts import render_prompt
from threespo_verl.envs.pool import AsyncEnv, EnvFailure, as_async
from threespo_verl.envs.restore import EnvCache
from threespo_verl.store.state_store import STATE_SCOPES, scoped_keys

#: ``algorithm.threespo.score_diff``: the score Eq.2's difference term uses (DESIGN §2.2)
SCORE_DIFFS = ("untruncated", "literal")
#: ``env.outcome``: the outcome reward of every algorithm (DESIGN §2.8): task success 0/1, or the env's own score
OUTCOMES = ("won", "score")

#: characters of an invalid reply kept as its "action" in the prompt history
INVALID_ACTION_SHOWN = 80


@dataclasses.dataclass
class Sample:
    """One reply of the policy. ``payload`` is opaque here (the agent loop keeps token ids and log-probs in it)."""

    text: str
    payload: Any = None


SampleFn = Callable[[list[dict[str, str]], int, tuple[str, ...]], Awaitable[list[Sample]]]


class Scorer(Protocol):
    async def lookup(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray, int]:
        """(N_total, N_success) per key from the last commit, and t."""


class LocalScorer:
    """A ``Scorer`` over an in-process ``StateStore`` (benchmarks, tests)."""

    def __init__(self, store) -> None:
        self.store = store

    async def lookup(self, keys):
        n_total, n_success = self.store.lookup(list(keys))
        return n_total, n_success, self.store.t


class ActorScorer:
    """A ``Scorer`` over the state store's Ray actor (``store/actor.py``): one round trip per expansion."""

    def __init__(self, handle) -> None:
        self.handle = handle

    async def lookup(self, keys):
        (n_total, n_success), t = await self.handle.lookup_with_t.remote(list(keys))
        return n_total, n_success, t


@dataclasses.dataclass
class ScoreParams:
    """The Eq.1-3 constants the rollout needs (built from ``algorithm.threespo`` by ``from_config``)."""

    alpha: float = 50.0
    xi: float = 10.0
    zeta: float = 0.1
    eps: float = 1e-6
    omega_k: float = 0.1
    invalid_action_penalty: float = 0.1
    g_max: int = 8
    score_diff: str = "untruncated"
    state_scope: str = "task"

    def __post_init__(self) -> None:
        if self.score_diff not in SCORE_DIFFS:
            raise ValueError(f"algorithm.threespo.score_diff={self.score_diff!r}; valid: {SCORE_DIFFS}")
        if self.state_scope not in STATE_SCOPES:
            raise ValueError(f"algorithm.threespo.state_scope={self.state_scope!r}; valid: {STATE_SCOPES}")

    @classmethod
    def from_config(cls, cfg: Any, invalid_action_penalty: float | None = None) -> "ScoreParams":
        """From ``algorithm.threespo``; the penalty is ``env.invalid_action_penalty`` (one key for every
        algorithm), passed separately."""
        get = cfg.get if hasattr(cfg, "get") else (lambda k, d=None: getattr(cfg, k, d))
        values = {f.name: type(f.default)(get(f.name, f.default)) for f in dataclasses.fields(cls)
                  if f.name != "invalid_action_penalty" and get(f.name, None) is not None}
        if invalid_action_penalty is not None:
            values["invalid_action_penalty"] = float(invalid_action_penalty)
        return cls(**values)

    def score(self, n_total, n_success, t) -> np.ndarray:
        """S(s) of Eq.1 (truncated): what branching and pruning use."""
        return state_score(n_total, n_success, t, alpha=self.alpha, xi=self.xi, zeta=self.zeta, eps=self.eps)

    def diff_score(self, n_total, n_success, t) -> np.ndarray:
        """The score in Eq.2's difference term: untruncated exp(-lambda SR) by default, S(s) with ``literal``."""
        if self.score_diff == "literal":
            return self.score(n_total, n_success, t)
        return untruncated_state_score(n_total, n_success, t, alpha=self.alpha, eps=self.eps)

    def store_keys(self, task_id: str, keys) -> list[str]:
        """The state store's keys for canonical state keys seen in task ``task_id`` (``state_scope``)."""
        return scoped_keys(task_id, keys, self.state_scope)


@dataclasses.dataclass
class Branch:
    """One distinct child of an expansion (or one step of an episode)."""

    sample: Sample
    action: str | None
    action_text: str  # what the prompt history shows for this step
    valid: bool  # parsed and executed by the environment
    parse_reason: str
    merged: int  # how many replies chose this action (1 = no duplicate): its rows in ``Expansion.replies``
    state_key: str  # key of the state after the step
    obs_text: str
    done: bool
    won: bool
    timeout: bool
    env_reward: float  # the environment's own score after the step (WebShop purchase score, ALFWorld won)
    reward: float = 0.0  # 3SPO Eq.2 total; trajectory mode: the outcome on the last step
    r_novel: float = 0.0
    r_score_diff: float = 0.0
    r_success: float = 0.0
    r_penalty: float = 0.0
    env_failed: bool = False  # the env step failed twice (``EnvFailure``): a terminal, failed step


@dataclasses.dataclass(frozen=True)
class Reply:
    """One sampled reply of an expansion: one update row. ``branch`` indexes ``Expansion.branches`` (the distinct
    child whose env step and reward the reply shares with the other replies of the same action)."""

    sample: Sample
    branch: int


@dataclasses.dataclass
class Expansion:
    """Result of ``expand_node``: the node's state, the branching decision, the distinct children (one env step
    each) and every sampled reply (one row each, in sampling order)."""

    state_key: str
    obs_text: str
    score: float  # S(s_t)
    n_total: int  # N_total(s_t)
    n_branches: int  # n(s) actually sampled (0 = pruned)
    n_score: int  # ceil(G_max * S(s_t)) before the budget cap
    branches: list[Branch]
    replayed_steps: int  # env steps spent restoring the node
    replies: list[Reply] = dataclasses.field(default_factory=list)
    score_diff_t: float = 1.0  # the parent's score in Eq.2's difference term (``ScoreParams.diff_score``)

    @property
    def pruned(self) -> bool:
        return self.n_branches == 0


def shown_action(action: str | None, reply: str) -> str:
    """The history text of a step: the parsed action, or the start of a malformed reply."""
    if action is not None:
        return action
    text = " ".join(str(reply).split())
    return text[:INVALID_ACTION_SHOWN] if text else "(no action)"


async def _step(env: AsyncEnv, action: str | None):
    """``env.step(action)``, or ``(None, reason)`` when it failed twice (``EnvFailure``)."""
    try:
        return await env.step(action), None
    except EnvFailure as exc:
        return None, str(exc)


def _branch(sample: Sample, parsed, count: int, obs: Observation, result, error: str | None) -> Branch:
    """The child of one distinct reply from its env step ``result`` (or the ``error`` of a failed step)."""
    action_text = shown_action(parsed.action, sample.text)
    if error is not None:
        return Branch(sample=sample, action=parsed.action, action_text=action_text, valid=parsed.action is not None,
                      parse_reason=parsed.reason, merged=count, state_key=obs.state_key,
                      obs_text=f"(the environment failed: {error})", done=True, won=False, timeout=False,
                      env_reward=0.0, env_failed=True)
    cobs, env_r, terminated, truncated, info = result
    return Branch(sample=sample, action=parsed.action, action_text=action_text, valid=bool(info["valid"]),
                  parse_reason=parsed.reason, merged=count, state_key=cobs.state_key, obs_text=cobs.text,
                  done=bool(terminated or truncated), won=bool(info["won"]), timeout=bool(truncated),
                  env_reward=float(env_r))


def _merge_key(action: str | None, reply: str) -> str:
    # valid actions merge by their normalised text; malformed replies by their own text
    return f"a:{action}" if action is not None else f"r:{' '.join(str(reply).split())}"


async def expand_node(task: Task, prefix: Sequence[str | None], history: Sequence[tuple[str, str]],
                      cache: EnvCache, sample: SampleFn, scorer: Scorer, params: ScoreParams, *,
                      max_branches: int | None = None, history_length: int = 2, few_shot: bool = False,
                      reasoning: bool = True, parser: ActionParser = DEFAULT_PARSER,
                      render: Callable[..., list[dict[str, str]]] | None = None) -> Expansion:
    """Expand the node reached by ``prefix`` (see module docstring). ``history`` are the (observation, action)
    pairs that led to it, for the prompt. Environments end parked in ``cache`` at the children's nodes."""
    replayed_before = cache.stats["replayed_steps"]
    env = await cache.acquire(task, prefix, take=True)  # a node is expanded once: take its parked environment
    obs: Observation = env.observation
    n_t, s_t, t = await scorer.lookup(params.store_keys(task.task_id, [obs.state_key]))
    score_t = float(params.score(n_t, s_t, t)[0])
    diff_t = float(params.diff_score(n_t, s_t, t)[0])
    n_score = int(branching([score_t], params.g_max)[0])
    n = n_score if max_branches is None else min(n_score, int(max_branches))
    replayed = cache.stats["replayed_steps"] - replayed_before
    if n <= 0:
        cache.release(task, prefix, env)
        return Expansion(obs.state_key, obs.text, score_t, int(n_t[0]), 0, n_score, [], replayed)
    messages = (render or render_prompt)(task.env_name, obs, history, history_length=history_length,
                                         few_shot=few_shot, reasoning=reasoning)
    replies = await sample(messages, n, obs.admissible_actions)
    # identical actions share one child (the first reply of each distinct action steps the env); every reply is a row
    distinct: dict[str, tuple[Sample, Any, int]] = {}
    reply_rows: list[Reply] = []
    for rep in replies:
        parsed = parser.parse(rep.text)
        k = _merge_key(parsed.action, rep.text)
        first = distinct.get(k)
        distinct[k] = (first[0], first[1], first[2] + 1) if first else (rep, parsed, 1)
        reply_rows.append(Reply(rep, list(distinct).index(k)))
    branches: list[Branch] = []
    envs = [env, *await cache.siblings(task, prefix, env, len(distinct) - 1)]
    actions = [parsed.action for _rep, parsed, _count in distinct.values()]
    stepped = await asyncio.gather(*[_step(benv, action) for benv, action in zip(envs, actions)])
    for benv, (rep, parsed, count), (result, error) in zip(envs, distinct.values(), stepped):
        branches.append(_branch(rep, parsed, count, obs, result, error))
        if branches[-1].done:
            benv.close()
        else:
            cache.release(task, (*prefix, parsed.action), benv)
    replayed = cache.stats["replayed_steps"] - replayed_before
    # Eq.2 for every child, with S(s_t+1) from the same committed snapshot
    c_total, c_success, t1 = await scorer.lookup(params.store_keys(task.task_id, [b.state_key for b in branches]))
    score_t1 = params.diff_score(c_total, c_success, t1)
    r = step_reward(np.full(len(branches), diff_t), score_t1, np.full(len(branches), int(n_t[0])),
                    novel=[b.state_key != obs.state_key for b in branches], won=[b.won for b in branches],
                    terminal=[b.done for b in branches], invalid=[not b.valid for b in branches],
                    omega_k=params.omega_k, invalid_action_penalty=params.invalid_action_penalty)
    for i, b in enumerate(branches):
        b.reward, b.r_novel, b.r_score_diff = float(r.total[i]), float(r.novelty[i]), float(r.score_diff[i])
        b.r_success, b.r_penalty = float(r.success[i]), float(r.penalty[i])
    return Expansion(obs.state_key, obs.text, score_t, int(n_t[0]), n, n_score, branches, replayed, reply_rows,
                     diff_t)


def rescore_rows(rows: Sequence[dict[str, Any]], params: ScoreParams, lookup) -> StepReward:
    """Eq.2 for already expanded replies, with the statistics ``lookup`` returns now (``reward_stats: update``).

    Each row is a node row's extra fields (``task_id``, ``state_key`` of the parent, ``child_state_key``,
    ``valid_action``, ``won``, ``done``). ``lookup(store_keys) -> (N_total, N_success, t)`` reads the committed
    statistics; every Eq.2 term is recomputed from them (the scores of s_t and s_t+1 and N_total(s_t) in w), so a
    reply whose child lies on a path that succeeded after the round (S_u ~ 0) is credited against its siblings.
    Returns the ``StepReward`` arrays over ``rows``.
    """
    if not rows:
        z = np.zeros(0)
        return StepReward(z, z, z, z, z)
    parents = [k for r in rows for k in params.store_keys(r["task_id"], [r["state_key"]])]
    children = [k for r in rows for k in params.store_keys(r["task_id"], [r["child_state_key"]])]
    n_total, n_success, t = lookup(parents + children)
    n_total, n_success = np.asarray(n_total), np.asarray(n_success)
    m = len(rows)
    score = params.diff_score(n_total, n_success, t)
    return step_reward(score[:m], score[m:], n_total[:m],
                       novel=[r["child_state_key"] != r["state_key"] for r in rows],
                       won=[bool(r["won"]) for r in rows], terminal=[bool(r["done"]) for r in rows],
                       invalid=[not r["valid_action"] for r in rows], omega_k=params.omega_k,
                       invalid_action_penalty=params.invalid_action_penalty)


@dataclasses.dataclass
class EpisodeStep:
    """One step of a full episode: the state it was taken in (GiGPO's anchor) and the branch it produced."""

    state_key: str  # state the action was taken in
    obs_text: str
    branch: Branch


def outcome_reward(branch: Branch, outcome: str = "won") -> float:
    """The outcome R of a finished episode (``env.outcome``, DESIGN §2.8): 1{won} (``won``, every algorithm's
    default, as the published GiGPO/3SPO protocol trains on success) or the environment's own final score in [0, 1]
    (``score``: WebShop's purchase score; ALFWorld's and household's equal ``won``)."""
    if outcome == "won":
        return float(branch.won)
    if outcome == "score":
        return float(branch.env_reward)
    raise ValueError(f"env.outcome={outcome!r}; valid: {OUTCOMES}")


async def play_episode(task: Task, env: TextEnv | AsyncEnv, sample: SampleFn, *, history_length: int = 2,
                       few_shot: bool = False, reasoning: bool = True, parser: ActionParser = DEFAULT_PARSER,
                       render: Callable[..., list[dict[str, str]]] | None = None, outcome: str = "won",
                       invalid_action_penalty: float = 0.0) -> list[EpisodeStep]:
    """Play ``task`` to the end (won, lost, ``env.max_steps`` or a failed env step) with one reply per step
    (trajectory mode). ``env`` is a ``TextEnv`` (stepped in this process) or an ``AsyncEnv``.

    Step rewards (DESIGN §2.8, the same objective as 3SPO's): the outcome R (``outcome_reward``) on the last step,
    minus ``invalid_action_penalty`` on every step whose action was invalid (``r_penalty``), 0 otherwise."""
    if outcome not in OUTCOMES:
        raise ValueError(f"env.outcome={outcome!r}; valid: {OUTCOMES}")
    env = as_async(env)
    obs, _info = await env.reset(task)
    history: list[tuple[str, str]] = []
    steps: list[EpisodeStep] = []
    done = False
    while not done:
        messages = (render or render_prompt)(task.env_name, obs, history, history_length=history_length,
                                             few_shot=few_shot, reasoning=reasoning)
        rep = (await sample(messages, 1, obs.admissible_actions))[0]
        parsed = parser.parse(rep.text)
        b = _branch(rep, parsed, 1, obs, *await _step(env, parsed.action))
        done = b.done
        steps.append(EpisodeStep(obs.state_key, obs.text, b))
        history.append((obs.text, b.action_text))
        obs = env.observation
    for s in steps:
        b = s.branch
        b.r_penalty = 0.0 if b.valid else float(invalid_action_penalty)
        b.reward = -b.r_penalty
    last = steps[-1].branch
    last.r_success = outcome_reward(last, outcome)
    last.reward += last.r_success
    return steps
