"""``algorithm.threespo.reward_stats: update`` (DESIGN §2.2): Eq.2 re-scored from the statistics committed at update
time. Hand-computed fixture: the reply whose child lies on the path that later succeeded outscores its sibling."""

import math

import numpy as np
import pytest

from threespo_verl.rollout.expand import ScoreParams, rescore_rows
from threespo_verl.store.state_store import StateStore
from threespo_verl.verl_glue.config import ThreeSPOConfig


def _row(parent, child, *, won=False, done=False, valid=True):
    return {"task_id": "T", "state_key": parent, "child_state_key": child, "won": won, "done": done,
            "valid_action": valid}


def _store_with(params, trajectories):
    store = StateStore()
    for path, ok in trajectories:
        store.record_trajectory(params.store_keys("T", path), ok)
    store.commit()
    return store


def test_rescore_credits_the_child_on_the_successful_path():
    params = ScoreParams()
    # after the round: root -> a -> b won, root -> c failed. t = 1 + 2 = 3
    store = _store_with(params, [(["root", "a", "b"], True), (["root", "c"], False)])

    def lookup(keys):
        n_total, n_success = store.lookup(keys)
        return n_total, n_success, store.t

    r = rescore_rows([_row("root", "a"), _row("root", "c"), _row("root", "root", valid=False),
                      _row("a", "b", won=True, done=True)], params, lookup)
    lam = 50.0 * math.log(3)
    s_root, s_a, s_c = math.exp(-lam * 0.5 / (1 + 1e-6)), math.exp(-lam / (1 + 1e-6)), 1.0
    w_root = 0.5 * math.exp(-0.1 * 2)  # N_total(root) = 2 now
    w_a = 0.5 * math.exp(-0.1 * 1)
    expected = [w_root + (0.5 - w_root) * (s_root - s_a),
                w_root + (0.5 - w_root) * (s_root - s_c),
                -0.1,  # invalid: no state change, the penalty
                w_a + (0.5 - w_a) * (s_a - math.exp(-lam / (1 + 1e-6))) + 0.5]
    np.testing.assert_allclose(r.total, expected, rtol=1e-9, atol=1e-12)
    assert r.total[0] > r.total[1]  # the step towards the success outscores its sibling


def test_rescore_with_no_statistics_equals_the_fresh_round_reward():
    params = ScoreParams()
    store = StateStore()

    def lookup(keys):
        n_total, n_success = store.lookup(keys)
        return n_total, n_success, store.t

    r = rescore_rows([_row("root", "a"), _row("root", "c")], params, lookup)
    np.testing.assert_allclose(r.total, [0.5, 0.5])  # novelty only: w = 0.5 at an unvisited state
    assert rescore_rows([], params, lookup).total.shape == (0,)


def test_reward_stats_is_validated():
    assert ThreeSPOConfig().reward_stats == "update" and ThreeSPOConfig().update_mode == "post_step"
    with pytest.raises(ValueError, match="reward_stats"):
        ThreeSPOConfig(reward_stats="later")
