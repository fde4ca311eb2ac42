"""The per-row metadata contract between the trainer mode and the estimators.

verl's advantage registry calls an estimator with token-level rewards, the response mask, ``index`` (verl's uid) and
the algorithm config only. 3SPO groups rows by the node they were expanded from, GiGPO by task and anchor state: both
need more than that. The trainer mode therefore wraps verl's advantage step in ``row_metadata(...)``, handing over
one numpy array per field below, aligned with the batch rows::

    with row_metadata(data.non_tensor_batch):
        compute_advantage(data, ...)

Fields (one value per row; the agent loop writes them into each AgentLoopOutput's ``extra_fields``):

===================  ====================================================================================
``task_id``          stable task id (the group of GRPO/GiGPO episodes; scopes 3SPO's merged groups)
``traj_id``          trajectory (episode / root-to-leaf path) the row belongs to
``step_index``       step of the row within its trajectory (0-based)
``node_id``          tree node the row's action creates (3SPO), or ``traj_id/step`` in trajectory mode
``parent_node_id``   tree node the row's action was sampled from: 3SPO's advantage group (Eq.4)
``state_key``        canonical key of the state the action was taken in (GiGPO's anchor state)
``round``            expansion round (3SPO) / training step that produced the row
``is_pad``           True for padding rows (added to divide the batch evenly): they join no group, get A = 0
``r_novel``          Eq.2 novelty term               ``r_score_diff``  Eq.2 score-difference term
``r_success``        Eq.2 success term               ``r_penalty``     invalid-action penalty
``valid_action``     the action parsed and was admissible
===================  ====================================================================================
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping

import numpy as np

TASK_ID = "task_id"
TRAJ_ID = "traj_id"
STEP_INDEX = "step_index"
NODE_ID = "node_id"
PARENT_NODE_ID = "parent_node_id"
STATE_KEY = "state_key"
ROUND = "round"
IS_PAD = "is_pad"
R_NOVEL = "r_novel"
R_SCORE_DIFF = "r_score_diff"
R_SUCCESS = "r_success"
R_PENALTY = "r_penalty"
VALID_ACTION = "valid_action"

ALL_FIELDS = (TASK_ID, TRAJ_ID, STEP_INDEX, NODE_ID, PARENT_NODE_ID, STATE_KEY, ROUND, IS_PAD, R_NOVEL,
              R_SCORE_DIFF, R_SUCCESS, R_PENALTY, VALID_ACTION)

#: what each estimator reads (``merge_identical_states`` additionally needs ``round`` and ``state_key``)
REQUIRED = {
    "3spo": (TASK_ID, PARENT_NODE_ID, IS_PAD),
    "3spo_merged": (TASK_ID, PARENT_NODE_ID, IS_PAD, ROUND, STATE_KEY),
    "gigpo": (TASK_ID, TRAJ_ID, STEP_INDEX, STATE_KEY, IS_PAD),
}

_CURRENT: contextvars.ContextVar[Mapping[str, np.ndarray] | None] = contextvars.ContextVar(
    "threespo_row_metadata", default=None
)


class MissingRowMetadataError(RuntimeError):
    pass


@contextlib.contextmanager
def row_metadata(fields: Mapping[str, np.ndarray]) -> Iterator[None]:
    """Make ``fields`` (e.g. ``data.non_tensor_batch``) visible to the estimators called inside the block."""
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
                f"per-row metadata field {f!r} has {arr.shape[0] if arr.ndim else 0} rows but the batch has "
                f"{n_rows}; the metadata must be aligned with the batch rows"
            )
        out[f] = arr
    return out
