"""Turn-level GAE (``turn_gae``) on a hand-worked batch, its invariants, and the registered estimator as verl calls it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from verl import DataProto
from verl.trainer.ppo.core_algos import compute_gae_advantage_return
from verl.trainer.ppo.ray_trainer import compute_advantage

import threespo_verl.plugin  # noqa: F401  (registers the estimators)
from threespo_verl.algos.turn_gae import turn_gae_advantage_return, turn_index
from threespo_verl.verl_glue.row_meta import MissingRowMetadataError, row_metadata

GAMMA, LAM = 0.9, 0.8  # gamma * lambda = 0.72
X = 7.0  # values at tokens other than a turn's first action token: never read

# Two episodes in one batch (response length 10; A = action token, o = observation token, . = padding):
#
#   token        0    1    2    3    4    5    6    7    8    9
#   row 0 mask   A    A    o    o    A    A    A    o    A    A      turns: 0-1, 4-6, 8-9
#         r      0   0.0   0    0    0    0  -0.1   0    0   1.0    r_0 = 0, r_1 = -0.1 (invalid), r_2 = 1 (won)
#         V     0.5   X    X    X   0.4   X    X    X   0.8   X     V_0 = 0.5, V_1 = 0.4, V_2 = 0.8
#   row 1 mask   A    A    A    o    o    A    .    .    .    .      turns: 0-2, 5
#         r      0    0   0.5   0    0   0.0   0    0    0    0      r_0 = 0.5 (progress), r_1 = 0 (lost)
#         V     0.2   X    X    X    X   0.6   0    0    0    0      V_0 = 0.2, V_1 = 0.6
#
# Row 0, backwards (V_3 = 0, A_3 = 0):
#   delta_2 = 1.0 + 0.9 * 0 - 0.8          =  0.2        A_2 = 0.2
#   delta_1 = -0.1 + 0.9 * 0.8 - 0.4       =  0.22       A_1 = 0.22 + 0.72 * 0.2   =  0.364
#   delta_0 = 0 + 0.9 * 0.4 - 0.5          = -0.14       A_0 = -0.14 + 0.72 * 0.364 =  0.12208
#   returns G_t = A_t + V_t: G_0 = 0.62208, G_1 = 0.764, G_2 = 1.0
# Row 1:
#   delta_1 = 0 + 0 - 0.6                  = -0.6        A_1 = -0.6
#   delta_0 = 0.5 + 0.9 * 0.6 - 0.2        =  0.84       A_0 = 0.84 + 0.72 * (-0.6) =  0.408
#   returns: G_0 = 0.608, G_1 = 0.0
MASK = torch.tensor([[1, 1, 0, 0, 1, 1, 1, 0, 1, 1],
                     [1, 1, 1, 0, 0, 1, 0, 0, 0, 0]])
REWARDS = torch.tensor([[0, 0.0, 0, 0, 0, 0, -0.1, 0, 0, 1.0],
                        [0, 0, 0.5, 0, 0, 0.0, 0, 0, 0, 0]])
VALUES = torch.tensor([[0.5, X, X, X, 0.4, X, X, X, 0.8, X],
                       [0.2, X, X, X, X, 0.6, 0, 0, 0, 0]])
ADV = torch.tensor([[0.12208, 0.12208, 0, 0, 0.364, 0.364, 0.364, 0, 0.2, 0.2],
                    [0.408, 0.408, 0.408, 0, 0, -0.6, 0, 0, 0, 0]])
RET = torch.tensor([[0.62208, 0.62208, 0, 0, 0.764, 0.764, 0.764, 0, 1.0, 1.0],
                    [0.608, 0.608, 0.608, 0, 0, 0.0, 0, 0, 0, 0]])


def test_hand_computed_two_episodes():
    adv, ret = turn_gae_advantage_return(REWARDS, VALUES, MASK, gamma=GAMMA, lam=LAM)
    torch.testing.assert_close(adv, ADV, atol=1e-6, rtol=0)
    torch.testing.assert_close(ret, RET, atol=1e-6, rtol=0)


def test_turns_are_the_runs_of_the_mask():
    turn, first, n = turn_index(MASK)
    assert n.tolist() == [3, 2]
    assert first.nonzero().tolist() == [[0, 0], [0, 4], [0, 8], [1, 0], [1, 5]]
    assert turn.tolist() == [[0, 0, 0, 0, 1, 1, 1, 0, 2, 2], [0, 0, 0, 0, 0, 1, 0, 0, 0, 0]]


def test_rewards_on_observation_tokens_and_other_values_are_ignored():
    r, v = REWARDS.clone(), VALUES.clone()
    r[0, 2], r[1, 3], r[1, 8] = 5.0, -3.0, 2.0  # observation and padding tokens (verl's gae drops them too)
    v[0, 1], v[0, 9], v[1, 2] = -100.0, 100.0, 42.0  # action tokens after a turn's first
    adv, ret = turn_gae_advantage_return(r, v, MASK, gamma=GAMMA, lam=LAM)
    torch.testing.assert_close(adv, ADV, atol=1e-6, rtol=0)
    torch.testing.assert_close(ret, RET, atol=1e-6, rtol=0)


def test_a_turns_reward_is_the_sum_over_its_action_tokens():
    # a per-token penalty (KL in the reward) on turn 1 of row 0: r_1 = -0.1 - 0.05 - 0.05 = -0.2
    r = REWARDS.clone()
    r[0, 4], r[0, 5] = -0.05, -0.05
    adv, _ = turn_gae_advantage_return(r, VALUES, MASK, gamma=GAMMA, lam=LAM)
    # A_1 drops by 0.1, A_0 by 0.72 * 0.1; A_2 and row 1 unchanged
    expected = ADV.clone()
    expected[0, [4, 5, 6]] -= 0.1
    expected[0, [0, 1]] -= 0.072
    torch.testing.assert_close(adv, expected, atol=1e-6, rtol=0)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="gamma and lambda in"):
        turn_gae_advantage_return(REWARDS, VALUES, MASK, gamma=1.5, lam=LAM)
    with pytest.raises(ValueError, match="same"):
        turn_gae_advantage_return(REWARDS, VALUES[:, :5], MASK, gamma=GAMMA, lam=LAM)


def _row(draw, n_turns: int, gap: int = 2):
    """(mask, rewards, values) of one row of ``n_turns`` action turns with observation gaps between them."""
    mask, rewards, values = [], [], []
    for t in range(n_turns):
        if t:
            mask += [0] * gap
            rewards += [0.0] * gap
            values += [draw(st.floats(-1, 1))] * gap
        n = draw(st.integers(1, 4))
        mask += [1] * n
        rewards += [0.0] * (n - 1) + [draw(st.floats(-1, 1))]
        values += [draw(st.floats(-1, 1)) for _ in range(n)]
    return mask, rewards, values


@st.composite
def batches(draw):
    """A batch of 1-4 rows of 1-6 turns each (different lengths), right-padded; gamma and lambda in [0, 1]."""
    rows = [_row(draw, draw(st.integers(1, 6))) for _ in range(draw(st.integers(1, 4)))]
    width = max(len(m) for m, _, _ in rows) + draw(st.integers(0, 3))
    pad = lambda xs: xs + [0] * (width - len(xs))  # noqa: E731
    mask = torch.tensor([pad(m) for m, _, _ in rows])
    rewards = torch.tensor([pad(r) for _, r, _ in rows], dtype=torch.float64)
    values = torch.tensor([pad(v) for _, _, v in rows], dtype=torch.float64)
    return mask, rewards, values, draw(st.floats(0, 1)), draw(st.floats(0, 1))


@settings(max_examples=200, deadline=None)
@given(batches(), st.data())
def test_a_reward_on_turn_t_moves_turn_k_by_gamma_lambda_to_the_distance(batch, data):
    """Adding d to the reward of turn t of one row changes the advantage of every action token of its turn k <= t by
    exactly (gamma lambda)^(t - k) d (so never by more than (gamma lambda)^(t-k) |d|), leaves turns k > t and every
    other row unchanged, and moves the returns by the same amounts (the values are unchanged)."""
    mask, rewards, values, gamma, lam = batch
    adv, ret = turn_gae_advantage_return(rewards, values, mask, gamma=gamma, lam=lam)
    turn, _first, n_turns = turn_index(mask)
    i = data.draw(st.integers(0, mask.shape[0] - 1))
    t = data.draw(st.integers(0, int(n_turns[i]) - 1))
    d = data.draw(st.floats(-2, 2))
    bumped = rewards.clone()
    last = int(((turn[i] == t) & mask[i].bool()).nonzero().max())  # the turn's closing token
    bumped[i, last] += d
    adv2, ret2 = turn_gae_advantage_return(bumped, values, mask, gamma=gamma, lam=lam)
    expected = torch.zeros_like(adv)
    on = mask[i].bool()
    k = turn[i][on]
    expected[i, on] = torch.where(k <= t, (gamma * lam) ** (t - k).double() * d, torch.zeros_like(k, dtype=adv.dtype))
    torch.testing.assert_close(adv2 - adv, expected, atol=1e-9, rtol=0)
    torch.testing.assert_close(ret2 - ret, expected, atol=1e-9, rtol=0)


@settings(max_examples=100, deadline=None)
@given(batches())
def test_masked_tokens_are_zero_and_a_turn_shares_one_value(batch):
    mask, rewards, values, gamma, lam = batch
    adv, ret = turn_gae_advantage_return(rewards, values, mask, gamma=gamma, lam=lam)
    assert torch.all(adv[mask == 0] == 0) and torch.all(ret[mask == 0] == 0)
    turn, first, _n = turn_index(mask)
    for i in range(mask.shape[0]):
        for t in turn[i][mask[i].bool()].unique():
            on = mask[i].bool() & (turn[i] == t)
            assert torch.all(adv[i, on] == adv[i, on][0]) and torch.all(ret[i, on] == ret[i, on][0])
            s = int((on & first[i]).nonzero())
            assert torch.isclose(ret[i, s] - adv[i, s], values[i, s])  # G_t - A_t = V read at s_t


@settings(max_examples=100, deadline=None)
@given(batches())
def test_one_token_turns_equal_verls_token_level_gae(batch):
    """With one action token per turn verl's ``gae`` (which skips masked tokens) discounts once per turn as well: the
    two agree (verl's returns are unwhitened; its advantages are whitened, ours before the glue whitens them)."""
    mask, rewards, values, gamma, lam = batch
    _turn, first, _n = turn_index(mask)
    assume(int(first.sum()) >= 2)  # verl's gae whitens its advantages, which needs two tokens
    mask = first.long()  # keep only each turn's first token as its action
    rewards = rewards.clone()
    ends = mask.bool()
    rewards[~ends] = 0.0
    rewards[ends] = torch.randn(int(ends.sum()), dtype=rewards.dtype)
    ours, our_ret = turn_gae_advantage_return(rewards, values, mask, gamma=gamma, lam=lam)
    _verl_adv, verl_ret = compute_gae_advantage_return(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(our_ret[ends], verl_ret[ends], atol=1e-9, rtol=0)
    torch.testing.assert_close(ours[ends], (verl_ret - values)[ends], atol=1e-9, rtol=0)


# ---- the registered estimator, called by verl's compute_advantage ------------------------------------------------

def _algo_cfg(*overrides):
    with initialize_config_module(config_module="threespo_verl.config", version_base=None):
        return compose(config_name="threespo_trainer", overrides=list(overrides)).algorithm


def _data(mask=MASK):
    return DataProto.from_dict(tensors={"token_level_rewards": REWARDS, "response_mask": mask, "values": VALUES},
                               non_tensors={"uid": np.array(["a", "b"], dtype=object)})


def _meta(values=VALUES, action_mask=MASK):
    return {"values": values.numpy(), "action_mask": action_mask.numpy(), "task_id": np.array(["a", "b"])}


def test_registered_turn_gae_through_verl_compute_advantage():
    cfg = _algo_cfg("algorithm=spa_ppo", f"algorithm.gamma={GAMMA}", f"algorithm.lam={LAM}")
    assert cfg.adv_estimator == "turn_gae"
    with row_metadata(_meta()):
        out = compute_advantage(_data(), adv_estimator=cfg.adv_estimator, config=cfg)
    on = MASK.bool()
    # returns: the hand-computed G_t on every action token, 0 elsewhere
    torch.testing.assert_close(out.batch["returns"], RET, atol=1e-6, rtol=0)
    # advantages: the hand-computed A_t whitened over the batch's action tokens (as verl's gae), 0 elsewhere
    flat = ADV[on].double()
    want = (flat - flat.mean()) / torch.sqrt(flat.var() + 1e-8)
    torch.testing.assert_close(out.batch["advantages"][on].double(), want, atol=1e-5, rtol=0)
    assert torch.all(out.batch["advantages"][~on] == 0)


def test_turns_come_from_the_rollouts_mask_when_verl_masks_a_token():
    # rollout correction's rejection sampling may drop a token inside a turn from response_mask: the turns stay those
    # of the rollout's mask (action_mask), the dropped token gets 0
    cfg = _algo_cfg("algorithm=spa_ppo", f"algorithm.gamma={GAMMA}", f"algorithm.lam={LAM}")
    masked = MASK.clone()
    masked[0, 5] = 0
    with row_metadata(_meta()):
        out = compute_advantage(_data(masked), adv_estimator="turn_gae", config=cfg)
    want = RET.clone()
    want[0, 5] = 0.0
    torch.testing.assert_close(out.batch["returns"], want, atol=1e-6, rtol=0)


def test_registered_turn_gae_names_what_is_missing():
    cfg = _algo_cfg("algorithm=ppo")
    with pytest.raises(MissingRowMetadataError, match="values"):
        compute_advantage(_data(), adv_estimator="turn_gae", config=cfg)
    with row_metadata(_meta(values=VALUES[:, :6])), pytest.raises(MissingRowMetadataError, match="padded as verl"):
        compute_advantage(_data(), adv_estimator="turn_gae", config=cfg)
