"""The per-row metadata contract between the trainer mode and the estimators.

verl's advantage registry calls an estimator with token-level rewards, the response mask, ``index`` (verl's uid) and
the algorithm config only. 3SPO groups rows by the node they were expanded from, GiGPO by task and anchor state: both
need more than that. The trainer mode therefore wraps verl's advantage step in ``row_metadata(...)``, handing over
one numpy array per field below, aligned with the batch rows::

    with row_metadata(data.non_tensor_batch):
        compute_advantage(data, ...)

Fields (one value per row; the agent loop writes them into each AgentLoopOutput's ``extra_fields``). Ids may be
strings or ints; they need only be unique within a task (every grouping is scoped by ``task_id``).

===================  ====================================================================================
``task_id``          one submission of a task (a 3SPO tree, verl's uid of an episode group): GRPO/GiGPO's
                     episode group; scopes every other grouping
``env_task_id``      the environment's stable task id (the same for every tree of a task): merge_identical_states
``traj_id``          trajectory (episode / root-to-leaf path) the row belongs to
``step_index``       step of the row within its trajectory (0-based; orders GiGPO's discounted returns)
``node_id``          tree node the row's action creates (3SPO), or ``traj_id/step`` in trajectory mode
``parent_node_id``   tree node the row's action was sampled from: 3SPO's advantage group (Eq.4)
``state_key``        canonical key of the state the action was taken in (the parent's state; GiGPO's anchor)
``round``            expansion round (3SPO) / training step that produced the row
``is_padding``       True for padding rows (verl adds them to divide the batch evenly; the name of verl's own row
                     tag): they join no group, get A = 0
``r_novel``          Eq.2 novelty term w*R_novel      ``r_score_diff``  Eq.2 term (0.5-w)(S(s_t)-S(s_t+1))
``r_success``        Eq.2 success term 0.5*1{won}     ``r_penalty``     invalid-action penalty (positive)
``valid_action``     the action parsed and was admissible
===================  ====================================================================================

Per-token fields (one ``(rows, response_length)`` array, padded with 0 as verl pads the batch's token tensors), for
``turn_gae`` on trajectory rows, whose value-based advantage verl's registry call does not supply:

===================  ====================================================================================
``values``           the critic's values (``values[i]``: the value of the prefix response token i is generated from)
``action_mask``      the response mask as the rollout wrote it; each run of 1s is one action turn
===================  ====================================================================================

Required per estimator (``REQUIRED``, ``required_fields``):

* ``3spo``:  task_id, parent_node_id, is_padding  (+ env_task_id, state_key with ``merge_identical_states``)
* ``gigpo``: task_id, traj_id, step_index, state_key, is_padding
* ``spa``:   task_id, traj_id, step_index, is_padding
* ``turn_gae``: values, action_mask

The reward components and ``valid_action`` are read by no estimator (the row's reward is already the sum of the
token-level rewards); they are part of the contract for the trainer's metrics (DESIGN §7).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping

import numpy as np

TASK_ID = "task_id"
ENV_TASK_ID = "env_task_id"
TRAJ_ID = "traj_id"
STEP_INDEX = "step_index"
NODE_ID = "node_id"
PARENT_NODE_ID = "parent_node_id"
STATE_KEY = "state_key"
ROUND = "round"
#: the same name as verl's padding tag (``verl_compat.PADDING_TAG``, checked in tests/unit/test_verl_compat.py)
IS_PADDING = "is_padding"
IS_PAD = IS_PADDING  # the former name of the constant
R_NOVEL = "r_novel"
R_SCORE_DIFF = "r_score_diff"
R_SUCCESS = "r_success"
R_PENALTY = "r_penalty"
VALID_ACTION = "valid_action"
VALUES = "values"
ACTION_MASK = "action_mask"

ALL_FIELDS = (TASK_ID, ENV_TASK_ID, TRAJ_ID, STEP_INDEX, NODE_ID, PARENT_NODE_ID, STATE_KEY, ROUND, IS_PADDING, R_NOVEL,
              R_SCORE_DIFF, R_SUCCESS, R_PENALTY, VALID_ACTION, VALUES, ACTION_MASK)

#: what each estimator reads. 3SPO's group (Eq.4) is (task_id, parent_node_id); GiGPO's trajectory is
#: (task_id, traj_id) and its anchor group (task_id, state_key). Ids need only be unique within a task.
REQUIRED = {
    "3spo": (TASK_ID, PARENT_NODE_ID, IS_PADDING),
    "gigpo": (TASK_ID, TRAJ_ID, STEP_INDEX, STATE_KEY, IS_PADDING),
    "spa": (TASK_ID, TRAJ_ID, STEP_INDEX, IS_PADDING),
    "turn_gae": (VALUES, ACTION_MASK),
}
#: what 3SPO additionally reads with ``algorithm.threespo.merge_identical_states=true``: groups (env_task_id,
#: state_key) over the update's rows, where state_key is the state the row's action was taken in (its parent's state)
MERGE_FIELDS = (ENV_TASK_ID, STATE_KEY)


def required_fields(estimator: str, merge_identical_states: bool = False) -> tuple[str, ...]:
    """The metadata fields ``estimator`` ("3spo" | "gigpo" | "spa" | "turn_gae") reads under the given options."""
    if estimator not in REQUIRED:
        raise KeyError(f"no row-metadata contract for estimator {estimator!r}; known: {sorted(REQUIRED)}")
    fields = REQUIRED[estimator]
    if estimator == "3spo" and merge_identical_states:
        fields = fields + tuple(f for f in MERGE_FIELDS if f not in fields)
    return fields


_CURRENT: contextvars.ContextVar[Mapping[str, np.ndarray] | None] = contextvars.ContextVar(
    "threespo_row_metadata", default=None
)


class MissingRowMetadataError(RuntimeError):
    """An estimator was called without the per-row metadata it needs (or with metadata not aligned to the batch)."""


@contextlib.contextmanager
def row_metadata(fields: Mapping[str, np.ndarray]) -> Iterator[None]:
    """Make ``fields`` (e.g. ``data.non_tensor_batch``, one array per field aligned with the batch rows) visible to
    the estimators called inside the block. Backed by a ContextVar: nested blocks restore the outer metadata, and
    other threads / asyncio tasks do not see it."""
    if not isinstance(fields, Mapping):
        raise TypeError(f"row_metadata expects a mapping field -> per-row array, got {type(fields).__name__}")
    token = _CURRENT.set(fields)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def require_row_metadata(estimator: str, fields: tuple[str, ...], n_rows: int) -> dict[str, np.ndarray]:
    """The requested fields as numpy arrays of length ``n_rows``; a clear error if any is missing or misaligned."""
    current = _CURRENT.get()
    fix = ("the trainer hands these over: run with the threespo trainer mode (trainer.v1.trainer_mode=threespo), or "
           "wrap verl's compute_advantage in threespo_verl.verl_glue.row_meta.row_metadata(batch.non_tensor_batch)")
    if current is None:
        raise MissingRowMetadataError(
            f"advantage estimator {estimator!r} needs per-row metadata {list(fields)} but none was handed over; {fix}"
        )
    missing = [f for f in fields if f not in current]
    if missing:
        raise MissingRowMetadataError(
            f"advantage estimator {estimator!r} is missing per-row metadata fields {missing} "
            f"(has {sorted(current)}); {fix}"
        )
    out = {}
    for f in fields:
        arr = np.asarray(current[f])
        if arr.shape[:1] != (n_rows,):
            raise MissingRowMetadataError(
                f"advantage estimator {estimator!r}: per-row metadata field {f!r} has "
                f"{arr.shape[0] if arr.ndim else 0} rows but the batch has {n_rows}; hand over the metadata of this "
                f"batch, aligned with its rows (e.g. its own non_tensor_batch, after any reordering)"
            )
        out[f] = arr
    return out
