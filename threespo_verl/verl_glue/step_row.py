"""``StepRow``: the one typed contract of a row's ``extra_fields``, between the agent loop (which writes them into
every ``AgentLoopOutput``) and the trainer (which reads them back out of TransferQueue).

The agent loop builds each output's fields as a ``StepRow`` (an unknown or missing field is a ``TypeError`` where the
row is built, not a ``KeyError`` later inside a Ray worker) and hands verl ``row.to_extra_fields()``; the trainer reads
them back with ``StepRow.from_extra_fields`` (which refuses a dict with unknown or missing keys). ``EXTRA_KEYS`` (the
keys of every output, identical across outputs as DESIGN §5 asks) is the field list below.

Three kinds of row, by ``mode``:

* ``"node"``: one sampled reply of a 3SPO node expansion (a *marker* row, ``pruned`` true, when the node was pruned);
* ``"episode"``: one step of a played episode (GRPO, GiGPO, SPA, validation);
* ``"trajectory"``: a whole episode as one row (``algorithm=ppo | spa_ppo``), with its ``turn_*`` fields.

The row metadata the estimators read (``row_meta``) is taken from these fields by the trainer (``tree_id`` ->
``task_id``, ``task_id`` -> ``env_task_id``; ``is_padding`` from verl's row tag).
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepRow:
    """The ``extra_fields`` of one agent-loop output (field order = ``EXTRA_KEYS``). Values are stored as given."""

    mode: str  # "node" | "episode" | "trajectory"
    task_id: str  # the environment's task id
    task_type: str
    traj_id: str  # trajectory the row belongs to ("<node>/<branch>" for a node row, "<uid>/<session>" otherwise)
    step_index: int  # step of the row within its trajectory (0-based; a trajectory row: its last step)
    node_id: int  # tree node the row's action creates (-1: assigned by the tree), step + 1 in an episode
    parent_node_id: int  # tree node the action was sampled from: 3SPO's advantage group
    state_key: str  # the state the action was taken in
    round: int  # expansion round (-1 outside 3SPO)
    branch: int  # distinct child of the expansion (replies of the same action share it)
    reply: int  # sampled reply of the expansion
    n_children: int
    n_branches: int  # replies sampled at the node, n(s)
    n_score: int
    score: float  # S(s) of the node's state
    n_total: int
    step_reward: float  # the row's reward (3SPO: Eq.2 total; SPA: alpha_p c_t + beta g'_t - penalty)
    r_novel: float
    r_score_diff: float
    r_success: float
    r_penalty: float
    r_progress: float
    r_grounding: float
    valid_action: bool
    parse_reason: str
    merged: int  # replies that chose this action
    action: Any  # the parsed action (None when it did not parse)
    action_text: str
    child_state_key: str
    child_obs: str
    done: bool
    won: bool
    timeout: bool
    env_failed: bool = False  # the env step failed twice (``envs/pool.py``): a terminal, failed step, counted
    env_score: float
    replayed_steps: int
    parent_obs: str
    tree_id: str  # 3SPO's tree, verl's uid of an episode group
    prompt_truncated: int = 0  # history turns dropped to fit rollout.prompt_length (set by the loop's output)
    pruned: bool  # a node's marker row: no reply, never trained
    min_global_steps: Any = None  # the weight versions verl's rollout served the reply with
    max_global_steps: Any = None
    reward_extra_info: dict  # what verl's reward metrics and validation read (won, score, ...)
    # trajectory rows (algorithm=ppo | spa_ppo); these defaults on every other row
    turn_ends: list = dataclasses.field(default_factory=list)  # closing token of each action turn
    turn_rewards: list = dataclasses.field(default_factory=list)  # each turn's reward
    turns_dropped: int = 0  # oldest turns dropped to fit the row's token budget
    turn_states: list = dataclasses.field(default_factory=list)  # state keys along the episode
    invalid_steps: int = 0

    def to_extra_fields(self) -> dict[str, Any]:
        """The ``extra_fields`` dict of an ``AgentLoopOutput`` (every key of ``EXTRA_KEYS``; values not copied)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_extra_fields(cls, extra: dict[str, Any]) -> StepRow:
        """The row of an output's ``extra_fields``; a ``TypeError`` naming the keys when any is unknown or missing
        (every output carries every key, defaults included)."""
        keys = set(extra)
        missing, unknown = [k for k in EXTRA_KEYS if k not in keys], sorted(keys - _KEYS)
        if missing or unknown:
            raise TypeError(f"extra_fields do not match StepRow: missing {missing}, unknown {unknown}")
        return cls(**extra)


#: the extra_fields keys of every output (identical across outputs, as DESIGN §5 asks)
EXTRA_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(StepRow))
_KEYS = frozenset(EXTRA_KEYS)
#: the trajectory-row fields and what node and episode rows carry in them
TRAJECTORY_FIELDS = ("turn_ends", "turn_rewards", "turns_dropped", "turn_states", "invalid_steps")
TRAJECTORY_DEFAULTS: dict[str, Any] = {
    f.name: f.default_factory() if f.default is dataclasses.MISSING else f.default
    for f in dataclasses.fields(StepRow) if f.name in TRAJECTORY_FIELDS}


def step_rows(extras: list[dict[str, Any]]) -> list[StepRow]:
    """``StepRow.from_extra_fields`` of each row (e.g. of ``verl_compat.extra_fields(batch)``)."""
    return [StepRow.from_extra_fields(e) for e in extras]
