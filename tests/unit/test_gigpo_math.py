"""GiGPO on a hand-worked example: episode groups per task, anchor-state groups on discounted returns."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from threespo_verl.algos.gigpo import discounted_returns, episode_advantage, gigpo_advantage, step_advantage

# Two tasks; trajectory ids restart per task (A/0 and B/0 are different trajectories); state s0 appears in both
# tasks (two different anchor groups).            gamma = 0.5
#
#   row task traj step key  r     G_t    return
#    0   A    0    0   s0   0    0.5     1      A/0: s0 -> s1 -> won
#    1   A    0    1   s1   1    1
#    2   A    1    0   s0   0    0.25    1      A/1: s0 -> s2 -> s1 -> won
#    3   A    1    1   s2   0    0.5
#    4   A    1    2   s1   1    1
#    5   A    2    0   s0   0    0       0      A/2: s0 -> s1 -> failed
#    6   A    2    1   s1   0    0
#    7   B    0    0   s0   0    0       0      B/0: s0 -> s3 -> failed
#    8   B    0    1   s3   0    0
#    9   B    1    0   s0   1    1       1      B/1: s0 -> won
TASK = ["A"] * 7 + ["B"] * 3
TRAJ = [0, 0, 1, 1, 1, 2, 2, 0, 0, 1]
STEP = [0, 1, 0, 1, 2, 0, 1, 0, 1, 0]
KEY = ["s0", "s1", "s0", "s2", "s1", "s0", "s1", "s0", "s3", "s0"]
R = [0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
GAMMA = 0.5
ARGS = (R, TASK, TRAJ, STEP, KEY)

R3, R2 = math.sqrt(3), math.sqrt(2)
# episode groups: A returns (1, 1, 0): mean 2/3, unbiased std 1/sqrt(3); B returns (0, 1): mean 1/2, std 1/sqrt(2)
EPISODE_MEAN = [1 / 3] * 5 + [-2 / 3] * 2 + [-1 / 2] * 2 + [1 / 2]
EPISODE_STD = [1 / R3] * 5 + [-2 / R3] * 2 + [-1 / R2] * 2 + [1 / R2]
# anchor groups: (A,s0) rows 0,2,5 G=(.5,.25,0): mean .25, std .25 | (A,s1) rows 1,4,6 G=(1,1,0): mean 2/3, std 1/sqrt3
#                (A,s2) row 3 and (B,s3) row 8 singletons | (B,s0) rows 7,9 G=(0,1): mean .5, std 1/sqrt2
STEP_MEAN = [0.25, 1 / 3, 0.0, 0.0, 1 / 3, -0.25, -2 / 3, -0.5, 0.0, 0.5]
STEP_STD = [1.0, 1 / R3, 0.0, 0.0, 1 / R3, -1.0, -2 / R3, -1 / R2, 0.0, 1 / R2]


def test_discounted_returns_hand_computed():
    traj = [f"{t}/{j}" for t, j in zip(TASK, TRAJ)]
    g = discounted_returns(R, traj, STEP, GAMMA)
    assert g.tolist() == pytest.approx([0.5, 1.0, 0.25, 0.5, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    # rows given out of order give the same values
    perm = [9, 3, 1, 4, 0, 8, 2, 6, 5, 7]
    g2 = discounted_returns(np.array(R)[perm], np.array(traj)[perm], np.array(STEP)[perm], GAMMA)
    assert g2.tolist() == pytest.approx(g[perm].tolist())
    # gamma = 1: undiscounted reward-to-go; gamma = 0: the step's own reward
    assert discounted_returns(R, traj, STEP, 1.0)[[0, 2, 5]].tolist() == [1.0, 1.0, 0.0]
    assert discounted_returns(R, traj, STEP, 0.0).tolist() == R


def test_discounted_returns_long_trajectory_and_bad_input():
    # one trajectory of 2000 steps with reward 1 at the end: G_t = gamma^(T-1-t), no overflow / underflow trouble
    n = 2000
    r = np.zeros(n)
    r[-1] = 1.0
    g = discounted_returns(r, np.zeros(n, dtype=int), np.arange(n), 0.99)
    assert g[-1] == 1.0 and g[0] == pytest.approx(0.99 ** (n - 1)) and np.all(np.diff(g) > 0)
    with pytest.raises(ValueError, match="same step_index"):
        discounted_returns([1.0, 2.0], ["a", "a"], [3, 3], 0.9)
    with pytest.raises(ValueError, match="gamma"):
        discounted_returns([1.0], ["a"], [0], 1.5)


@pytest.mark.parametrize("mode,expected", [("mean_norm", EPISODE_MEAN), ("mean_std_norm", EPISODE_STD)])
def test_episode_advantage_counts_each_trajectory_once(mode, expected):
    # A/1 has three rows but is one trajectory: the mean of task A is 2/3, not the row-weighted 5/7
    a = episode_advantage(R, TASK, TRAJ, mode=mode, eps=0.0)
    assert a.tolist() == pytest.approx(expected)


@pytest.mark.parametrize("mode,expected", [("mean_norm", STEP_MEAN), ("mean_std_norm", STEP_STD)])
def test_step_advantage_groups_by_task_and_anchor_state(mode, expected):
    a = step_advantage(*ARGS, GAMMA, mode=mode, eps=0.0)
    assert a.tolist() == pytest.approx(expected)


@pytest.mark.parametrize("mode,ep,stp", [("mean_norm", EPISODE_MEAN, STEP_MEAN),
                                         ("mean_std_norm", EPISODE_STD, STEP_STD)])
def test_combined_with_weight(mode, ep, stp):
    w = 0.7
    total = gigpo_advantage(*ARGS, gamma=GAMMA, step_advantage_w=w, mode=mode, eps=0.0)
    assert total.tolist() == pytest.approx([e + w * s for e, s in zip(ep, stp)])


def test_singleton_task_and_singleton_anchor_give_zero():
    a = gigpo_advantage([5.0, 1.0, 0.0], ["T", "U", "U"], [0, 0, 1], [0, 0, 0], ["k", "k", "j"], mode="mean_norm")
    # task T has one trajectory and one row; in task U the anchors k and j are singletons: only A_E is left
    assert a.tolist() == pytest.approx([0.0, 0.5, -0.5])


def test_padding_rows_get_zero_and_change_nothing():
    valid = [True] * 10 + [False, False]
    padded = gigpo_advantage(R + [50.0, -3.0], TASK + ["A", "B"], TRAJ + [0, 1], STEP + [2, 1], KEY + ["s0", "s0"],
                             gamma=GAMMA, valid=valid, mode="mean_std_norm")
    base = gigpo_advantage(*ARGS, gamma=GAMMA, mode="mean_std_norm")
    assert padded[-2:].tolist() == [0.0, 0.0] and padded[:-2].tolist() == pytest.approx(base.tolist())


def test_bad_mode():
    with pytest.raises(ValueError, match="mean_std_norm"):
        gigpo_advantage(*ARGS, mode="zscore")


# ---- properties --------------------------------------------------------------------------------------------------
def _episodes(spec):
    """Rows from [(task, length, keys, rewards)]: one trajectory per entry, trajectory ids restarting per task."""
    task, traj, step, key, r = [], [], [], [], []
    per_task: dict[int, int] = {}
    for t, length, keys, rewards in spec:
        j = per_task.get(t, 0)
        per_task[t] = j + 1
        for s in range(length):
            task.append(f"T{t}")
            traj.append(j)
            step.append(s)
            key.append(f"s{keys[s % len(keys)]}")
            r.append(rewards[s % len(rewards)])
    return np.array(r), np.array(task), np.array(traj), np.array(step), np.array(key)


episodes = st.lists(
    st.tuples(st.integers(0, 2), st.integers(1, 4), st.lists(st.integers(0, 3), min_size=1, max_size=4),
              st.lists(st.floats(-1, 1), min_size=1, max_size=4)),
    min_size=1, max_size=10,
)


@settings(max_examples=80, deadline=None)
@given(episodes)
def test_mean_norm_sums_to_zero_per_group(spec):
    r, task, traj, step, key = _episodes(spec)
    a_e = episode_advantage(r, task, traj, mode="mean_norm")
    # one value per trajectory, summing to 0 within each task
    for t in np.unique(task):
        per_traj = {j: a_e[(task == t) & (traj == j)] for j in np.unique(traj[task == t])}
        assert all(np.all(v == v[0]) for v in per_traj.values())
        assert abs(sum(v[0] for v in per_traj.values())) < 1e-9
    a_s = step_advantage(r, task, traj, step, key, 0.9, mode="mean_norm")
    for t in np.unique(task):
        for k in np.unique(key[task == t]):
            m = (task == t) & (key == k)
            assert abs(a_s[m].sum()) < 1e-9
            if m.sum() == 1:
                assert a_s[m][0] == 0.0


@settings(max_examples=80, deadline=None)
@given(episodes, st.lists(st.tuples(st.floats(-100, 100), st.integers(0, 2), st.integers(0, 5),
                                    st.integers(0, 9), st.integers(0, 3)), min_size=1, max_size=4),
       st.sampled_from(["mean_norm", "mean_std_norm"]))
def test_padding_rows_never_join_anything(spec, pads, mode):
    r, task, traj, step, key = _episodes(spec)
    base = gigpo_advantage(r, task, traj, step, key, gamma=0.9, mode=mode)
    # padding rows may claim any task, trajectory, step (even a real row's) and anchor state
    pr = np.array([p[0] for p in pads])
    pt = np.array([f"T{p[1]}" for p in pads])
    pj, ps = np.array([p[2] for p in pads]), np.array([p[3] for p in pads])
    pk = np.array([f"s{p[4]}" for p in pads])
    valid = np.r_[np.ones(r.size, dtype=bool), np.zeros(len(pads), dtype=bool)]
    padded = gigpo_advantage(np.r_[r, pr], np.r_[task, pt], np.r_[traj, pj], np.r_[step, ps], np.r_[key, pk],
                             gamma=0.9, valid=valid, mode=mode)
    assert np.all(padded[r.size:] == 0.0)
    assert np.array_equal(padded[:r.size], base)
