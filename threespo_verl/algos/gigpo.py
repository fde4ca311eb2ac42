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

norm is ``mean_std_norm`` ((x - mean) / (std + eps)) or ``mean_norm`` (x - mean); singleton groups give 0 and
padding rows never join a group (threespo_verl.algos.grouping).
"""

from __future__ import annotations

import numpy as np

from threespo_verl.algos.grouping import group_index, group_normalize

MODES = {"mean_std_norm": "mean_std", "mean_norm": "mean"}


def discounted_returns(step_rewards, traj_ids, step_index, gamma: float) -> np.ndarray:
    """G_t = sum_{k>=0} gamma^k r_{t+k} within each trajectory (rows in any order; steps ordered by step_index)."""
    r = np.asarray(step_rewards, dtype=np.float64)
    n = r.shape[0]
    if n == 0:
        return r.copy()
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    traj, _ = group_index(traj_ids)
    step = np.asarray(step_index, dtype=np.int64)
    # rows of each trajectory from its last step to its first: a reverse scan G_t = r_t + gamma * G_{t+1}
    order = np.lexsort((-step, traj))
    r_o, traj_o = r[order], traj[order]
    g = np.empty(n)
    start = np.r_[True, traj_o[1:] != traj_o[:-1]]
    acc = 0.0
    for i in range(n):  # one pass, O(rows); float recursion avoids gamma^t under/overflow of closed forms
        acc = r_o[i] + (0.0 if start[i] else gamma * acc)
        g[i] = acc
    out = np.empty(n)
    out[order] = g
    return out


def episode_advantage(step_rewards, task_ids, traj_ids, mode: str = "mean_std_norm",
                      eps: float = 1e-6) -> np.ndarray:
    """A_E per row: the trajectory's return normalised among the trajectories of its task (each counted once)."""
    norm = _norm(mode)
    r = np.asarray(step_rewards, dtype=np.float64)
    traj, n_traj = group_index(traj_ids)
    if n_traj == 0:
        return np.zeros_like(r)
    returns = np.bincount(traj, weights=r, minlength=n_traj)
    # the task of each trajectory (taken from its first row)
    _, first_row = np.unique(traj, return_index=True)
    traj_task = np.asarray(task_ids)[first_row]
    adv_traj = group_normalize(returns, traj_task, norm=norm, eps=eps)
    return adv_traj[traj]


def step_advantage(step_rewards, task_ids, traj_ids, step_index, state_keys, gamma: float,
                   mode: str = "mean_std_norm", eps: float = 1e-6) -> np.ndarray:
    """A_S per row: the discounted return G_t normalised within its (task, anchor state) group."""
    norm = _norm(mode)
    returns = discounted_returns(step_rewards, traj_ids, step_index, gamma)
    anchors = np.array([f"{t}\x1f{k}" for t, k in zip(task_ids, state_keys)], dtype=object)
    return group_normalize(returns, anchors, norm=norm, eps=eps)


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
    sub = [np.asarray(x)[keep] for x in (r, task_ids, traj_ids, step_index, state_keys)]
    a_e = episode_advantage(sub[0], sub[1], sub[2], mode=mode, eps=eps)
    a_s = step_advantage(*sub, gamma, mode=mode, eps=eps)
    out[keep] = a_e + step_advantage_w * a_s
    return out


def _norm(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"GiGPO mode must be one of {tuple(MODES)}, got {mode!r}")
    return MODES[mode]
