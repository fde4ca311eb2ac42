"""SPA math (DESIGN §3) on hand-computed fixtures, and hypothesis invariants."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from threespo_verl.algos.spa import (
    DEFAULT_GUARD,
    GROUNDING_ENVS,
    WEBSHOP_SEARCH_PLACEHOLDER,
    grounding,
    guarded_grounding,
    leave_one_out_values,
    progress_loss,
    readout_positions,
    spa_advantage,
    spa_step_rewards,
)


# ---- readout positions ----------------------------------------------------------------------------------------
def test_readout_positions_hand_computed():
    #        0  1  2  3  4  5  6  7  8  9
    mask = [0, 0, 1, 1, 0, 0, 1, 0, 1, 1]
    assert readout_positions(mask).tolist() == [3, 6, 9]
    assert readout_positions([1, 1, 1]).tolist() == [2]
    assert readout_positions([0, 0]).tolist() == []
    assert readout_positions([]).tolist() == []
    with pytest.raises(ValueError, match="0 and 1"):
        readout_positions([0, 2, 1])
    with pytest.raises(ValueError, match="1-D"):
        readout_positions([[0, 1]])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(1, 5)), max_size=12), st.integers(0, 5))
def test_one_readout_per_assistant_span_at_its_last_token(turns, tail):
    """A serialized trajectory: (user tokens, assistant tokens) per turn; the readouts are exactly the last token of
    every assistant span, one per turn (a user turn of length 0 glues two assistant turns together: skip those)."""
    mask, ends = [], []
    for n_user, n_asst in turns:
        if n_user == 0 and mask and mask[-1] == 1:
            n_user = 1
        mask += [0] * n_user + [1] * n_asst
        ends.append(len(mask) - 1)
    mask += [0] * tail
    r = readout_positions(mask)
    assert r.tolist() == ends
    assert all(mask[i] == 1 and (i + 1 == len(mask) or mask[i + 1] == 0) for i in r)


# ---- loss and step reward ----------------------------------------------------------------------------------------
def test_progress_loss_hand_computed():
    assert progress_loss([0.2, 0.3, 0.1], 1.0) == pytest.approx(0.16)  # (1 - 0.6)^2
    assert progress_loss([0.5, 0.5], 1.0) == 0.0
    assert progress_loss([0.25, -0.5], 0.0) == pytest.approx(0.0625)  # (0 + 0.25)^2
    assert progress_loss([], 0.5) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="1-D"):
        progress_loss([[0.1]], 1.0)


def test_spa_step_rewards_hand_computed():
    assert spa_step_rewards([0.2, -0.1, 0.9], [1, 0, 1]).tolist() == pytest.approx([0.7, -0.1, 1.4])
    assert spa_step_rewards([0.2, -0.1], [1, 1], alpha_p=2.0, beta=0.25).tolist() == pytest.approx([0.65, 0.05])
    with pytest.raises(ValueError, match="shape"):
        spa_step_rewards([0.1, 0.2], [1])


# ---- grounding ---------------------------------------------------------------------------------------------------
def test_grounding_household_is_admissibility():
    adm = ("go to fridge 1", "open fridge 1", "look")
    assert grounding("household", "open fridge 1", "You open the fridge 1.", adm, True) == 1.0
    assert grounding("household", "Open  Fridge 1", "You open the fridge 1.", adm, True) == 1.0
    assert grounding("household", "open drawer 9", "Nothing happens.", adm, False) == 0.0
    assert grounding("household", None, "Nothing happens.", adm, False) == 0.0
    # the env's own validity flag wins: an env that refused the step gets no bonus
    assert grounding("household", "look", "x", adm, False) == 0.0


def test_grounding_alfworld_is_feedback():
    assert grounding("alfworld", "go to desk 1", "You arrive at desk 1.", (), True) == 1.0
    assert grounding("alfworld", "go to desk 1", " Nothing happens.\n", (), True) == 0.0
    assert grounding("alfworld", None, "Nothing happens.", (), False) == 0.0


def test_grounding_webshop_is_page_availability():
    search_page = (WEBSHOP_SEARCH_PLACEHOLDER,)
    results = ("click[back to search]", "click[next >]", "click[b0abc123]")
    assert grounding("webshop", "search[red dress]", "", search_page, True) == 1.0
    assert grounding("webshop", "search[  ]", "", search_page, True) == 0.0
    assert grounding("webshop", "search[red dress]", "", results, True) == 0.0  # no search box on this page
    assert grounding("webshop", "click[B0ABC123]", "", results, True) == 1.0  # clickables match case-insensitively
    assert grounding("webshop", "click[Next  >]", "", results, True) == 1.0
    assert grounding("webshop", "click[buy now]", "", results, True) == 0.0
    assert grounding("webshop", "buy it", "", results, True) == 0.0


def test_grounding_matches_the_webshop_env_constant_and_rejects_unknown_envs():
    from threespo_verl.envs.webshop.env import SEARCH_PLACEHOLDER

    assert WEBSHOP_SEARCH_PLACEHOLDER == SEARCH_PLACEHOLDER
    with pytest.raises(ValueError) as e:
        grounding("sokoban", "up", "", (), True)
    assert all(name in str(e.value) for name in GROUNDING_ENVS)


def test_grounding_agrees_with_household_validity():
    """On real household steps, g_t is exactly the env's own validity of the action."""
    from threespo_verl.envs import make

    env = make("household", max_steps=20)
    task = env.tasks("train")[3]
    obs, _info = env.reset(task)
    seen = set()
    for action in ["look", "open drawer 42", *env.oracle_actions(task)[:4], None]:
        adm = obs.admissible_actions
        if not adm:
            break
        nobs, _, terminated, truncated, info = env.step(action)
        g = grounding("household", action, nobs.text, adm, info["valid"])
        assert g == float(info["valid"])
        seen.add(g)
        obs = nobs
        if terminated or truncated:
            break
    assert seen == {0.0, 1.0}


# ---- guarded grounding -------------------------------------------------------------------------------------------
def test_guarded_grounding_state_change():
    g = [1, 1, 0, 1, 1]
    changed = [True, False, False, True, False]
    assert guarded_grounding(g, changed, mode="state_change").tolist() == [1, 0, 0, 1, 0]
    with pytest.raises(ValueError, match="state_changed"):
        guarded_grounding(g, mode="state_change")
    with pytest.raises(ValueError, match="2 state_changed"):
        guarded_grounding(g, [True, False])


def test_guarded_grounding_normalized_is_the_default():
    g = [1, 1, 0, 1, 1]
    changed = [True, False, False, True, False]
    # paid on a state change, divided by the episode's length T = 5
    assert guarded_grounding(g, changed, mode="normalized").tolist() == pytest.approx([0.2, 0, 0, 0.2, 0])
    assert DEFAULT_GUARD == "normalized"
    assert guarded_grounding(g, changed).tolist() == guarded_grounding(g, changed, mode="normalized").tolist()
    assert guarded_grounding([], []).tolist() == []
    with pytest.raises(ValueError, match="state_changed"):
        guarded_grounding(g, mode="normalized")


def test_guarded_grounding_cap():
    g = [1, 0, 1, 1, 0, 1]
    assert guarded_grounding(g, mode="cap", cap=2).tolist() == [1, 0, 1, 0, 0, 0]
    assert guarded_grounding(g, mode="cap", cap=0).tolist() == [0] * 6
    assert guarded_grounding(g, mode="cap", cap=10).tolist() == g
    with pytest.raises(ValueError, match="cap"):
        guarded_grounding(g, mode="cap")
    with pytest.raises(ValueError, match="mode"):
        guarded_grounding(g, [True] * 6, mode="bonus")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans()), max_size=30), st.integers(0, 10))
def test_grounding_bonus_cannot_be_farmed(steps, cap):
    """However many grounded no-op steps an episode repeats, the guarded bonus stays bounded: by the number of
    state-changing steps, by 1 (normalized: the fraction of paid steps), or by cap."""
    g = np.array([float(a) for a, _ in steps])
    changed = np.array([b for _, b in steps], dtype=bool)
    sc = guarded_grounding(g, changed, mode="state_change")
    assert sc.sum() <= changed.sum() and np.all(sc <= g)
    norm = guarded_grounding(g, changed, mode="normalized")
    assert norm.sum() <= 1.0 + 1e-12 and np.allclose(norm * max(len(steps), 1), sc)  # at most beta per episode
    capped = guarded_grounding(g, mode="cap", cap=cap)
    assert capped.sum() == min(g.sum(), cap) and np.all(capped <= g)
    # repeating the episode's steps twice more adds nothing to a cap that was already reached
    if g.sum() >= cap:
        assert guarded_grounding(np.r_[g, g, g], mode="cap", cap=cap).sum() == cap


# ---- the guard's guarantee: first-step ordering (DESIGN §3, guarded_grounding's docstring) ---------------------------
def _first_step_advantages(episodes, mode=DEFAULT_GUARD, cap=None, alpha_p=1.0, beta=0.5):
    """episodes: [(R, c, g, changed)] of one task -> (A_0 of the successes, A_0 of the failures)."""
    r, task, traj, step = [], [], [], []
    for j, (_R, c, g, changed) in enumerate(episodes):
        gg = guarded_grounding(g, changed, mode=mode, cap=cap)
        r += spa_step_rewards(c, gg, alpha_p=alpha_p, beta=beta).tolist()
        task += ["T"] * len(g)
        traj += [j] * len(g)
        step += list(range(len(g)))
    a = spa_advantage(r, task, traj, step)
    a0 = a[np.array(step) == 0]  # one row per episode, in episode order
    won = np.array([R == 1 for R, *_ in episodes])
    return a0[won], a0[~won]


@st.composite
def _groups(draw, successes_shorter=True, max_err=0.0):
    """One task's episodes: outcome R in {0, 1}, lengths (every success shorter than every failure, or any),
    random grounding and state-change flags, and progress values c_t of any sign whose sum is R + e, |e| <= max_err
    (max_err = 0: the sums are exactly R)."""
    n_s, n_f = draw(st.integers(1, 4)), draw(st.integers(1, 6))
    if successes_shorter:
        ls = draw(st.lists(st.integers(1, 30), min_size=n_s, max_size=n_s))
        lf = draw(st.lists(st.integers(max(ls) + 1, 60), min_size=n_f, max_size=n_f))
    else:
        ls = draw(st.lists(st.integers(1, 60), min_size=n_s, max_size=n_s))
        lf = draw(st.lists(st.integers(1, 60), min_size=n_f, max_size=n_f))
    episodes = []
    for R, n in [(1, n) for n in ls] + [(0, n) for n in lf]:
        flags = st.lists(st.booleans(), min_size=n, max_size=n)
        g, changed = np.array(draw(flags), dtype=float), np.array(draw(flags))
        c = np.array(draw(st.lists(st.floats(-2, 2), min_size=n, max_size=n)))
        err = draw(st.floats(-max_err, max_err)) if max_err else 0.0
        c += (R + err - c.sum()) / n
        episodes.append((R, c, g, changed))
    return episodes


@settings(max_examples=200, deadline=None)
@given(_groups())
def test_default_guard_every_shorter_success_outranks_every_failure_at_step_0(episodes):
    """DESIGN §3: with the default guard, in any group where the successes are shorter than the failures, every
    success's first-step advantage exceeds every failure's (sum_t c_t = R, alpha_p = 1, beta = 0.5)."""
    a_s, a_f = _first_step_advantages(episodes)
    assert a_s.min() > a_f.max()


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_normalized_guard_ordering_holds_for_any_lengths_weights_and_estimator_error(data):
    """The docstring's domain in full: any lengths, any alpha_p and beta with alpha_p (1 - 2 delta) > beta, and
    progress sums within delta of R."""
    delta = data.draw(st.floats(0.0, 0.45))
    alpha_p = data.draw(st.floats(0.1, 3.0))
    beta = data.draw(st.floats(0.0, 0.99)) * alpha_p * (1 - 2 * delta)
    episodes = data.draw(_groups(successes_shorter=data.draw(st.booleans()), max_err=delta))
    a_s, a_f = _first_step_advantages(episodes, "normalized", alpha_p=alpha_p, beta=beta)
    assert a_s.min() > a_f.max()


@settings(max_examples=100, deadline=None)
@given(_groups(), st.integers(0, 1))
def test_cap_guard_keeps_the_ordering_only_while_beta_times_cap_is_below_alpha_p(episodes, cap):
    a_s, a_f = _first_step_advantages(episodes, "cap", cap=cap)  # beta * cap <= 0.5 < alpha_p = 1
    assert a_s.min() > a_f.max()


def test_state_change_and_a_cap_of_5_break_the_ordering():
    """Counterexamples at the default weights: one 2-step success (both steps grounded and changing the state)
    against one 10-step failure that navigates on every step."""
    success = (1, np.array([0.5, 0.5]), np.ones(2), np.ones(2, dtype=bool))
    failure = (0, np.zeros(10), np.ones(10), np.ones(10, dtype=bool))
    for mode, cap in (("state_change", None), ("cap", 5)):
        a_s, a_f = _first_step_advantages([success, failure], mode, cap=cap)
        assert a_s.max() < a_f.min(), mode  # G_0: 1 + 0.5 x 2 = 2 < 0.5 x 10 = 5 (state_change), 2.5 (cap 5)
    a_s, a_f = _first_step_advantages([success, failure])
    assert a_s.min() > a_f.max()  # normalized: 1 + 0.5 = 1.5 > 0.5


# ---- advantage ---------------------------------------------------------------------------------------------------
#   row task traj step  r      G_t (reward-to-go)
#    0   A    0    0   0.5    0.5+0.2+1 = 1.7
#    1   A    0    1   0.2    1.2
#    2   A    0    2   1.0    1.0
#    3   A    1    0   0.0    0.0+0.5 = 0.5
#    4   A    1    1   0.5    0.5
#    5   A    2    0   1.0    1.0            (A/2 has a single step)
#    6   B    0    0   0.3    0.3+0.4 = 0.7
#    7   B    0    1   0.4    0.4
# groups (task, step): (A,0) rows 0,3,5 G=(1.7,0.5,1.0) mean 3.2/3 | (A,1) rows 1,4 G=(1.2,0.5) mean 0.85
#                      (A,2) row 2 alone -> 0 | (B,0) row 6 alone -> 0 | (B,1) row 7 alone -> 0
TASK = ["A", "A", "A", "A", "A", "A", "B", "B"]
TRAJ = [0, 0, 0, 1, 1, 2, 0, 0]
STEP = [0, 1, 2, 0, 1, 0, 0, 1]
R = [0.5, 0.2, 1.0, 0.0, 0.5, 1.0, 0.3, 0.4]
M0 = 3.2 / 3
EXPECTED = [1.7 - M0, 1.2 - 0.85, 0.0, 0.5 - M0, 0.5 - 0.85, 1.0 - M0, 0.0, 0.0]


def test_spa_advantage_hand_computed():
    assert spa_advantage(R, TASK, TRAJ, STEP).tolist() == pytest.approx(EXPECTED)


def test_spa_advantage_any_row_order():
    perm = [7, 2, 5, 0, 6, 3, 1, 4]
    a = spa_advantage(*(np.array(x, dtype=object)[perm] for x in (R, TASK, TRAJ, STEP)))
    assert a.tolist() == pytest.approx(np.array(EXPECTED)[perm].tolist())


def test_spa_advantage_trajectory_ids_restart_per_task():
    # B/0 and A/0 share traj id 0 but are different trajectories: B's reward-to-go never includes A's rewards
    a = spa_advantage([1.0, 0.0, 5.0, 0.0], ["A", "A", "B", "B"], [0, 1, 0, 1], [0, 0, 0, 0])
    assert a.tolist() == pytest.approx([0.5, -0.5, 2.5, -2.5])


def test_spa_advantage_padding_rows():
    pad_r, pad_task, pad_traj, pad_step = [9.0, -4.0, 7.0], [None, "A", None], [0, 0, None], [0, 1, 0]
    valid = [True] * 8 + [True, False, True]  # row 9 is masked, rows 8 and 10 have task None
    a = spa_advantage(R + pad_r, TASK + pad_task, TRAJ + pad_traj, STEP + pad_step, valid=valid)
    assert a[:8].tolist() == pytest.approx(EXPECTED) and a[8:].tolist() == [0.0, 0.0, 0.0]
    assert spa_advantage([1.0], [None], [0], [0]).tolist() == [0.0]
    assert spa_advantage([], [], [], []).tolist() == []
    with pytest.raises(ValueError, match="same step_index"):
        spa_advantage([1.0, 2.0], ["A", "A"], [0, 0], [1, 1])


def _rows(spec):
    """Rows from [(task, rewards)]: one trajectory per entry, ids restarting per task, steps 0..len-1."""
    r, task, traj, step = [], [], [], []
    per_task: dict[int, int] = {}
    for t, rewards in spec:
        j = per_task.get(t, 0)
        per_task[t] = j + 1
        for s, x in enumerate(rewards):
            r.append(x)
            task.append(f"T{t}")
            traj.append(j)
            step.append(s)
    return np.array(r), np.array(task, dtype=object), np.array(traj), np.array(step)


trajectories = st.lists(st.tuples(st.integers(0, 2), st.lists(st.floats(-1, 1), min_size=1, max_size=5)),
                        min_size=1, max_size=8)


@settings(max_examples=100, deadline=None)
@given(trajectories)
def test_spa_advantage_groups_sum_to_zero_and_singletons_are_zero(spec):
    r, task, traj, step = _rows(spec)
    a = spa_advantage(r, task, traj, step)
    for t in set(task):
        for s in set(step[task == t]):
            m = (task == t) & (step == s)
            assert abs(a[m].sum()) < 1e-9
            if m.sum() == 1:
                assert a[m][0] == 0.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1, 1), min_size=1, max_size=6), st.integers(1, 5))
def test_singleton_group_advantages_are_zero(rewards, n_tasks):
    """Every task played once: no step index has a baseline, every advantage is 0."""
    r = np.tile(rewards, n_tasks)
    task = np.repeat([f"T{i}" for i in range(n_tasks)], len(rewards)).astype(object)
    step = np.tile(np.arange(len(rewards)), n_tasks)
    assert np.all(spa_advantage(r, task, np.zeros(r.size, dtype=int), step) == 0.0)


@settings(max_examples=100, deadline=None)
@given(trajectories, st.lists(st.tuples(st.floats(-100, 100), st.integers(0, 2), st.integers(0, 3),
                                        st.integers(0, 5), st.booleans()), min_size=1, max_size=4))
def test_padding_never_joins_a_group(spec, pads):
    """Padding rows may claim any task, trajectory and step (even a real row's): they change nothing and get 0."""
    r, task, traj, step = _rows(spec)
    base = spa_advantage(r, task, traj, step)
    # a padding row is masked (valid=False) or has no task (None); both kinds mixed
    pr = np.array([p[0] for p in pads])
    pt = np.array([None if p[4] else f"T{p[1]}" for p in pads], dtype=object)
    pj, ps = np.array([p[2] for p in pads]), np.array([p[3] for p in pads])
    valid = np.r_[np.ones(r.size, dtype=bool), [bool(p[4]) for p in pads]]
    padded = spa_advantage(np.r_[r, pr], np.r_[task, pt], np.r_[traj, pj], np.r_[step, ps], valid=valid)
    assert np.all(padded[r.size:] == 0.0)
    assert np.allclose(padded[:r.size], base, atol=1e-12)


# ---- released-code ablation ----------------------------------------------------------------------------------------
def test_leave_one_out_values_hand_computed():
    # task A: R = (1, 0, 0.5); task B: R = (0.2) alone
    v = leave_one_out_values([1.0, 0.0, 0.5, 0.2], ["A", "A", "A", "B"], [2, 3, 1, 2])
    assert [x.tolist() for x in v] == [pytest.approx([0.75] * 2), pytest.approx([-0.75] * 3), pytest.approx([0.0]),
                                       pytest.approx([0.2] * 2)]  # 1-.25, 0-.75, .5-.5, singleton keeps R
    assert leave_one_out_values([], [], []) == []
    with pytest.raises(ValueError, match="one entry per trajectory"):
        leave_one_out_values([1.0], ["A", "B"], [1])
