"""GiGPO (Group-in-Group Policy Optimization, arXiv 2505.10978): episode advantage + anchor-state step advantage.

Rows are environment steps. Each row belongs to a task group (the rollout.n episodes of one task), a trajectory,
has a step index and the canonical key of the state the action was taken in (its *anchor state*).

Episode level (one value per trajectory, each trajectory counted once, broadcast to its steps)::

    R(tau)  = sum_t r_t                                 the trajectory's return
    A_E     = norm_{task group}( R(tau) )

Step level (rows of one task that acted from the same anchor state form a group)::

    G_t     = sum_{k >= 0} gamma^k r_{t+k}              discounted return from step t
    A_S     = norm_{(task, anchor state)}( G_t )

    A       = A_E + w * A_S

norm is ``mean_std_norm`` ((x - mean) / (std + eps), unbiased std as verl's GRPO and 3SPO's Eq.4) or ``mean_norm``
(x - mean); singleton groups give 0 (as verl-agent's step-level normalisation does: its singleton mean is the row's
own value; verl's GRPO would pass a singleton's score through) and padding rows never join a
group, a trajectory or a return (threespo_verl.algos.grouping). A trajectory is keyed by (task_id, traj_id) and an
anchor group by (task_id, state_key): the same state key in two tasks is two groups.
"""

from __future__ import annotations

import numpy as np

from threespo_verl.algos.grouping import combine_ids, group_normalize

MODES = {"mean_std_norm": "mean_std", "mean_norm": "mean"}


def discounted_returns(step_rewards, traj_ids, step_index, gamma: float) -> np.ndarray:
    """G_t = sum_{k>=0} gamma^k r_{t+k} within each trajectory.

    Rows may come in any order; a trajectory's steps are ordered by ``step_index`` (consecutive rows of one
    trajectory are consecutive steps, gaps in the numbering are not discounted). Computed by the reverse recursion
    G_t = r_t + gamma * G_{t+1}, vectorised over trajectories: one numpy pass per step position (H passes for
    trajectories of at most H steps, O(rows) work in all), exact, no gamma^-t factors to overflow.
    """
    r = np.asarray(step_rewards, dtype=np.float64)
    n = r.shape[0]
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    if n == 0:
        return r.copy()
    traj, _ = combine_ids(traj_ids)
    step = np.asarray(step_index, dtype=np.int64)
    if step.shape != (n,) or traj.shape != (n,):
        raise ValueError(f"{n} rewards but {traj.shape[0]} trajectory ids and {step.shape[0]} step indices")
    order = np.lexsort((step, traj))  # trajectory by trajectory, steps ascending
    traj_o, step_o = traj[order], step[order]
    same_next = traj_o[1:] == traj_o[:-1]
    if np.any(same_next & (step_o[1:] == step_o[:-1])):
        raise ValueError("a trajectory has two rows with the same step_index")
    # steps to the end of its trajectory for each (sorted) row: 0 for the last step
    first = np.r_[True, ~same_next]
    last = np.r_[~same_next, True]
    to_end = np.flatnonzero(last)[np.cumsum(first) - 1] - np.arange(n)
    g = r[order].copy()
    by_to_end = np.argsort(to_end, kind="stable")
    bounds = np.searchsorted(to_end[by_to_end], np.arange(1, int(to_end.max()) + 2))
    for k in range(1, int(to_end.max()) + 1):  # G_t = r_t + gamma G_{t+1}, all rows k steps from their end at once
        rows = by_to_end[bounds[k - 1]:bounds[k]]
        g[rows] += gamma * g[rows + 1]
    out = np.empty(n)
    out[order] = g
    return out


def episode_advantage(step_rewards, task_ids, traj_ids, mode: str = "mean_std_norm",
                      eps: float = 1e-6) -> np.ndarray:
    """A_E per row: the trajectory's return R(tau) = sum_t r_t normalised among the trajectories of its task
    (each trajectory counted once, whatever its length), broadcast to the trajectory's rows. A trajectory is
    identified by (task_id, traj_id), so trajectory ids only need to be unique within a task."""
    norm = _norm(mode)
    r = np.asarray(step_rewards, dtype=np.float64)
    if r.shape[0] == 0:
        return r.copy()
    traj, n_traj = combine_ids(task_ids, traj_ids)
    returns = np.bincount(traj, weights=r, minlength=n_traj)
    task, _ = combine_ids(task_ids)
    traj_task = np.zeros(n_traj, dtype=np.int64)
    traj_task[traj] = task  # every row of a trajectory has the same task (part of its key)
    adv_traj = group_normalize(returns, traj_task, norm=norm, eps=eps)
    return adv_traj[traj]


def step_advantage(step_rewards, task_ids, traj_ids, step_index, state_keys, gamma: float,
                   mode: str = "mean_std_norm", eps: float = 1e-6) -> np.ndarray:
    """A_S per row: the discounted return G_t normalised within its anchor-state group, i.e. the rows of one task
    whose action was taken in the same state (same ``state_key``), across and within trajectories."""
    norm = _norm(mode)
    returns = discounted_returns(step_rewards, combine_ids(task_ids, traj_ids)[0], step_index, gamma)
    return group_normalize(returns, combine_ids(task_ids, state_keys)[0], norm=norm, eps=eps)


def gigpo_advantage(step_rewards, task_ids, traj_ids, step_index, state_keys, gamma: float = 0.95,
                    step_advantage_w: float = 1.0, valid=None, mode: str = "mean_std_norm",
                    eps: float = 1e-6) -> np.ndarray:
    """A = A_E + w * A_S (see module docstring). Padding rows (valid=False) get 0 and take no part in anything:
    not in a group, not in a trajectory's return, not in a discounted return."""
    r = np.asarray(step_rewards, dtype=np.float64)
    out = np.zeros_like(r)
    keep = np.ones(r.shape[0], dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    if not keep.any():
        return out
    r, task, traj, step, key = (np.asarray(x)[keep] for x in (r, task_ids, traj_ids, step_index, state_keys))
    # dense codes once: task, trajectory = (task, traj_id), anchor = (task, state_key)
    task, _ = combine_ids(task)
    traj, _ = combine_ids(task, traj)
    anchor, _ = combine_ids(task, key)
    norm = _norm(mode)
    a_e = episode_advantage(r, task, traj, mode=mode, eps=eps)
    a_s = group_normalize(discounted_returns(r, traj, step, gamma), anchor, norm=norm, eps=eps)
    out[keep] = a_e + step_advantage_w * a_s
    return out


def _norm(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"GiGPO mode must be one of {tuple(MODES)}, got {mode!r}")
    return MODES[mode]
