"""GiGPO on a hand-worked example: episode groups per task, anchor-state groups on discounted returns."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from threespo_verl.algos.gigpo import discounted_returns, episode_advantage, gigpo_advantage, step_advantage

# Task T1: trajectory a = [s0 -r0-> s1 -r1->] wins (rewards 0, 1); trajectory b = [s0 -> s2] fails (0, 0);
# trajectory c = [s0] fails in one step (reward 0).  Task T2: one trajectory d (singleton everything).
TASK = ["T1", "T1", "T1", "T1", "T1", "T2"]
TRAJ = ["a", "a", "b", "b", "c", "d"]
STEP = [0, 1, 0, 1, 0, 0]
KEY = ["s0", "s1", "s0", "s2", "s0", "s0"]
R = [0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
GAMMA = 0.5


def test_discounted_returns_hand_computed():
    g = discounted_returns(R, TRAJ, STEP, GAMMA)
    assert g.tolist() == pytest.approx([0.5, 1.0, 0.0, 0.0, 0.0, 1.0])
    # rows given out of order give the same values
    perm = [5, 3, 1, 4, 0, 2]
    g2 = discounted_returns(np.array(R)[perm], np.array(TRAJ)[perm], np.array(STEP)[perm], GAMMA)
    assert g2.tolist() == pytest.approx(g[perm].tolist())


def test_episode_advantage_counts_each_trajectory_once():
    # T1 returns: a=1, b=0, c=0 -> mean 1/3; mean_norm: a=2/3, b=c=-1/3 (not weighted by trajectory length)
    a = episode_advantage(R, TASK, TRAJ, mode="mean_norm")
    assert a.tolist() == pytest.approx([2 / 3, 2 / 3, -1 / 3, -1 / 3, -1 / 3, 0.0])
    # mean_std_norm: unbiased std of (1, 0, 0) = sqrt(1/3)
    s = np.sqrt(1 / 3)
    a = episode_advantage(R, TASK, TRAJ, mode="mean_std_norm", eps=0.0)
    assert a.tolist() == pytest.approx([2 / 3 / s, 2 / 3 / s, -1 / 3 / s, -1 / 3 / s, -1 / 3 / s, 0.0])


def test_step_advantage_groups_by_task_and_anchor_state():
    # anchor (T1, s0): rows 0, 2, 4 with returns 0.5, 0, 0 -> mean 1/6; s1, s2 singletons; (T2, s0) singleton
    a = step_advantage(R, TASK, TRAJ, STEP, KEY, GAMMA, mode="mean_norm")
    assert a.tolist() == pytest.approx([1 / 3, 0.0, -1 / 6, 0.0, -1 / 6, 0.0])


def test_combined_with_weight():
    w = 0.7
    total = gigpo_advantage(R, TASK, TRAJ, STEP, KEY, gamma=GAMMA, step_advantage_w=w, mode="mean_norm")
    ep = episode_advantage(R, TASK, TRAJ, mode="mean_norm")
    st_ = step_advantage(R, TASK, TRAJ, STEP, KEY, GAMMA, mode="mean_norm")
    assert total.tolist() == pytest.approx((ep + w * st_).tolist())
    assert total[5] == 0.0  # singleton task and singleton anchor


def test_padding_rows_get_zero_and_change_nothing():
    valid = [True] * 6 + [False]
    pad = dict(step_rewards=R + [50.0], task_ids=TASK + ["T1"], traj_ids=TRAJ + ["a"], step_index=STEP + [2],
               state_keys=KEY + ["s0"])
    padded = gigpo_advantage(**pad, gamma=GAMMA, valid=valid, mode="mean_norm")
    base = gigpo_advantage(R, TASK, TRAJ, STEP, KEY, gamma=GAMMA, mode="mean_norm")
    assert padded[-1] == 0.0 and padded[:-1].tolist() == pytest.approx(base.tolist())


def test_bad_mode():
    with pytest.raises(ValueError, match="mean_std_norm"):
        gigpo_advantage(R, TASK, TRAJ, STEP, KEY, mode="zscore")


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(1, 4), st.floats(0, 1)), min_size=1, max_size=12))
def test_episode_mean_norm_sums_to_zero_over_trajectories(trajs):
    task, traj, step, r = [], [], [], []
    for j, (t, length, ret) in enumerate(trajs):
        for s in range(length):
            task.append(f"T{t}")
            traj.append(f"j{j}")
            step.append(s)
            r.append(ret if s == length - 1 else 0.0)
    a = episode_advantage(r, task, traj, mode="mean_norm")
    first = {}
    for i, j in enumerate(traj):
        first.setdefault(j, i)
    for t in set(task):
        rows = [first[j] for j in first if task[first[j]] == t]
        assert abs(sum(a[i] for i in rows)) < 1e-9
