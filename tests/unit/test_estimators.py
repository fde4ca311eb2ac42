"""The registered estimators called the way verl calls them, with per-row metadata handed over."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from verl import DataProto
from verl.trainer.ppo.core_algos import get_adv_estimator_fn
from verl.trainer.ppo.ray_trainer import compute_advantage

import threespo_verl.plugin  # noqa: F401  (registers the estimators)
from threespo_verl.verl_glue import estimators
from threespo_verl.verl_glue.config import ThreeSPOAlgoConfig
from threespo_verl.verl_glue.row_meta import REQUIRED, MissingRowMetadataError, required_fields, row_metadata


def _algo_cfg(*overrides):
    with initialize_config_module(config_module="threespo_verl.config", version_base=None):
        return compose(config_name="threespo_trainer", overrides=list(overrides)).algorithm


def _batch(rewards, lengths, width=6):
    """Token-level rewards with each row's reward on its last valid token, as verl's reward step does."""
    n = len(rewards)
    mask = torch.zeros(n, width, dtype=torch.int64)
    scores = torch.zeros(n, width)
    for i, (r, L) in enumerate(zip(rewards, lengths)):
        mask[i, :L] = 1
        scores[i, L - 1] = r
    return scores, mask


META_3SPO = {
    "task_id": np.array(["t1", "t1", "t1", "t1", "t2", "t1"], dtype=object),
    "parent_node_id": np.array(["n0", "n0", "n0", "n7", "m0", "n0"], dtype=object),
    "is_padding": np.array([False, False, False, False, False, True]),
    "round": np.array([1, 1, 1, 1, 1, 1]),
    "env_task_id": np.array(["t1", "t1", "t1", "t1", "t2", "t1"], dtype=object),
    "state_key": np.array(["k", "k", "k", "k", "k", "k"], dtype=object),
}


def test_3spo_through_verl_compute_advantage():
    rewards = [1.0, 0.0, 0.5, 0.3, 0.2, 9.0]
    scores, mask = _batch(rewards, [3, 5, 2, 4, 6, 1])
    data = DataProto.from_dict(tensors={"token_level_rewards": scores, "response_mask": mask},
                               non_tensors={"uid": META_3SPO["task_id"], **META_3SPO})
    cfg = _algo_cfg("algorithm=3spo", "algorithm.threespo.adv_eps=0.0")
    with row_metadata(data.non_tensor_batch):
        out = compute_advantage(data, adv_estimator="3spo", config=cfg)
    adv = out.batch["advantages"]
    # node n0: rewards (1, 0, 0.5) -> mean 0.5, unbiased std 0.5 -> (1, -1, 0); n7, m0 singletons; pad row 0
    expected = [1.0, -1.0, 0.0, 0.0, 0.0, 0.0]
    for i, e in enumerate(expected):
        assert torch.allclose(adv[i][mask[i].bool()], torch.tensor(e)), i
        assert torch.all(adv[i][~mask[i].bool()] == 0)
    assert torch.equal(out.batch["returns"], adv)


def test_3spo_mean_norm_and_merged_states():
    scores, mask = _batch([1.0, 0.0, 0.5, 0.3, 0.2, 9.0], [1] * 6)
    fn = get_adv_estimator_fn("3spo")
    with row_metadata(META_3SPO):
        adv, _ = fn(token_level_rewards=scores, response_mask=mask,
                    config=_algo_cfg("algorithm.threespo.step_adv_norm=mean"))
        assert adv[:, 0].tolist() == pytest.approx([0.5, -0.5, 0.0, 0.0, 0.0, 0.0])
        # merging pools n0 and n7 (same task, same parent state key): mean of (1, 0, .5, .3) = 0.45
        adv, _ = fn(token_level_rewards=scores, response_mask=mask,
                    config=_algo_cfg("algorithm.threespo.step_adv_norm=mean",
                                     "algorithm.threespo.merge_identical_states=true"))
        assert adv[:, 0].tolist() == pytest.approx([0.55, -0.45, 0.05, -0.15, 0.0, 0.0])


def test_gigpo_through_verl_with_dataclass_config():
    from verl.utils.config import omega_conf_to_dataclass

    meta = {
        "task_id": np.array(["T1"] * 5 + ["T2"], dtype=object),
        "traj_id": np.array(["a", "a", "b", "b", "c", "d"], dtype=object),
        "step_index": np.array([0, 1, 0, 1, 0, 0]),
        "state_key": np.array(["s0", "s1", "s0", "s2", "s0", "s0"], dtype=object),
        "is_padding": np.zeros(6, dtype=bool),
    }
    scores, mask = _batch([0.0, 1.0, 0.0, 0.0, 0.0, 1.0], [2, 3, 1, 2, 4, 2])
    cfg = omega_conf_to_dataclass(_algo_cfg("algorithm=gigpo", "algorithm.gigpo.mode=mean_norm",
                                            "algorithm.gigpo.gamma=0.5", "algorithm.gigpo.step_advantage_w=1.0"))
    data = DataProto.from_dict(tensors={"token_level_rewards": scores, "response_mask": mask},
                               non_tensors={"uid": meta["task_id"], **meta})
    with row_metadata(data.non_tensor_batch):
        out = compute_advantage(data, adv_estimator="gigpo", config=cfg)
    first = out.batch["advantages"][:, 0]
    # episode (mean_norm): a=2/3, b=c=-1/3; step: (T1,s0) returns (0.5, 0, 0) -> 1/3, -1/6, -1/6
    assert first.tolist() == pytest.approx([2 / 3 + 1 / 3, 2 / 3, -1 / 3 - 1 / 6, -1 / 3, -1 / 3 - 1 / 6, 0.0],
                                           abs=1e-6)


def test_missing_metadata_names_the_fields():
    scores, mask = _batch([1.0, 0.0], [1, 1])
    fn = get_adv_estimator_fn("3spo")
    with pytest.raises(MissingRowMetadataError, match=r"needs per-row metadata \['task_id', 'parent_node_id', "
                                                      r"'is_padding'\].*trainer_mode=threespo"):
        fn(token_level_rewards=scores, response_mask=mask, config=None)
    with row_metadata({"task_id": np.array(["a", "a"]), "is_padding": np.array([False, False])}):
        with pytest.raises(MissingRowMetadataError, match=r"missing per-row metadata fields \['parent_node_id'\]"):
            fn(token_level_rewards=scores, response_mask=mask, config=None)
    with row_metadata({"task_id": np.array(["a"]), "traj_id": np.array(["x"]), "step_index": np.array([0]),
                       "state_key": np.array(["k"]), "is_padding": np.array([False])}):
        with pytest.raises(MissingRowMetadataError, match="has 1 rows but the batch has 2"):
            get_adv_estimator_fn("gigpo")(token_level_rewards=scores, response_mask=mask, config=None)


def test_missing_merge_fields_are_named():
    scores, mask = _batch([1.0, 0.0], [1, 1])
    meta = {"task_id": np.array(["a", "a"]), "parent_node_id": np.array(["n", "n"]), "is_padding": np.zeros(2, bool)}
    fn = get_adv_estimator_fn("3spo")
    with row_metadata(meta):
        fn(token_level_rewards=scores, response_mask=mask, config=None)  # enough without merging
        with pytest.raises(MissingRowMetadataError, match=r"fields \['env_task_id', 'state_key'\].*trainer_mode=threespo"):
            fn(token_level_rewards=scores, response_mask=mask,
               config={"threespo": {"merge_identical_states": True}})


def test_contract_tables():
    assert required_fields("3spo") == ("task_id", "parent_node_id", "is_padding")
    assert set(required_fields("3spo", merge_identical_states=True)) == {"task_id", "parent_node_id", "is_padding",
                                                                          "env_task_id", "state_key"}
    assert set(REQUIRED["gigpo"]) == {"task_id", "traj_id", "step_index", "state_key", "is_padding"}
    with pytest.raises(KeyError):
        required_fields("ppo")


def test_metadata_context_is_scoped():
    scores, mask = _batch([1.0, 0.0], [1, 1])
    fn = get_adv_estimator_fn("3spo")
    with row_metadata({k: v[:2] for k, v in META_3SPO.items()}):
        with row_metadata({"task_id": np.array(["a", "a"])}):
            with pytest.raises(MissingRowMetadataError):
                fn(token_level_rewards=scores, response_mask=mask)
        fn(token_level_rewards=scores, response_mask=mask)  # the outer metadata is back
    with pytest.raises(MissingRowMetadataError, match="none was handed over"):
        fn(token_level_rewards=scores, response_mask=mask)


@pytest.mark.parametrize("kind", ["none", "dict", "dataclass", "dictconfig"])
def test_every_config_form_gives_the_same_result(kind):
    scores, mask = _batch([1.0, 0.0, 0.5, 0.3, 0.2, 9.0], [2] * 6)
    if kind == "none":
        cfg = None  # every section and key at its dataclass default (mean_std, adv_eps 1e-6)
    elif kind == "dict":
        cfg = {"threespo": {"step_adv_norm": "mean_std"}}
    elif kind == "dataclass":
        cfg = ThreeSPOAlgoConfig()
    else:
        cfg = _algo_cfg("algorithm=3spo")
    with row_metadata(META_3SPO):
        adv, ret = get_adv_estimator_fn("3spo")(token_level_rewards=scores, response_mask=mask, config=cfg)
    assert adv.dtype == scores.dtype and adv.shape == scores.shape
    assert adv[:, 0].tolist() == pytest.approx([1.0, -1.0, 0.0, 0.0, 0.0, 0.0], abs=1e-5)


def test_invalid_config_values_are_rejected_with_their_key():
    scores, mask = _batch([1.0, 0.0], [1, 1])
    meta = {"task_id": np.array(["a", "a"]), "parent_node_id": np.array(["n", "n"]), "is_padding": np.zeros(2, bool),
            "traj_id": np.array([0, 1]), "step_index": np.array([0, 0]), "state_key": np.array(["k", "k"])}
    with row_metadata(meta):
        with pytest.raises(ValueError, match="algorithm.threespo.step_adv_norm"):
            get_adv_estimator_fn("3spo")(token_level_rewards=scores, response_mask=mask,
                                         config={"threespo": {"step_adv_norm": "zscore"}})
        with pytest.raises(ValueError, match="algorithm.gigpo.mode"):
            get_adv_estimator_fn("gigpo")(token_level_rewards=scores, response_mask=mask,
                                          config=_algo_cfg("algorithm=gigpo", "algorithm.gigpo.mode=zscore"))


def test_3spo_groups_are_scoped_by_task():
    # node ids restart per task: n0 of t1 and n0 of t2 are two groups
    scores, mask = _batch([1.0, 0.0, 0.4, 0.2], [1] * 4)
    meta = {"task_id": np.array(["t1", "t1", "t2", "t2"], dtype=object),
            "parent_node_id": np.array([0, 0, 0, 0]), "is_padding": np.zeros(4, dtype=bool)}
    with row_metadata(meta):
        adv, _ = get_adv_estimator_fn("3spo")(token_level_rewards=scores, response_mask=mask,
                                              config={"threespo": {"step_adv_norm": "mean"}})
    assert adv[:, 0].tolist() == pytest.approx([0.5, -0.5, 0.1, -0.1])


def test_matches_verl_grpo_on_groups_of_two_or_more():
    """With one group per uid, 3SPO mean_std is GRPO's outcome normalisation (same unbiased std, same eps)."""
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    rng = np.random.default_rng(0)
    n = 200
    uid = np.array([f"u{i}" for i in rng.integers(0, 30, n)], dtype=object)
    while True:  # verl would give a singleton its raw score (mean 0, std 1): keep every group >= 2 rows
        counts = {u: int((uid == u).sum()) for u in set(uid)}
        lone = [u for u, c in counts.items() if c == 1]
        if not lone:
            break
        uid[uid == lone[0]] = uid[0] if uid[0] != lone[0] else uid[1]
    scores, mask = _batch(rng.random(n).tolist(), rng.integers(1, 7, n).tolist())
    grpo, _ = compute_grpo_outcome_advantage(scores, mask, index=uid)
    meta = {"task_id": np.array(["t"] * n), "parent_node_id": uid, "is_padding": np.zeros(n, dtype=bool)}
    with row_metadata(meta):
        ours, _ = get_adv_estimator_fn("3spo")(token_level_rewards=scores, response_mask=mask, index=uid)
    assert torch.allclose(ours, grpo, atol=1e-5)


def test_gigpo_through_verl_with_dictconfig_and_padding():
    meta = {
        "task_id": np.array(["T1"] * 5 + ["T2", "T1"], dtype=object),
        "traj_id": np.array(["a", "a", "b", "b", "c", "d", "a"], dtype=object),
        "step_index": np.array([0, 1, 0, 1, 0, 0, 1]),
        "state_key": np.array(["s0", "s1", "s0", "s2", "s0", "s0", "s1"], dtype=object),
        "is_padding": np.array([False] * 6 + [True]),
    }
    scores, mask = _batch([0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 7.0], [2, 3, 1, 2, 4, 2, 1])
    data = DataProto.from_dict(tensors={"token_level_rewards": scores, "response_mask": mask},
                               non_tensors={"uid": meta["task_id"], **meta})
    cfg = _algo_cfg("algorithm=gigpo", "algorithm.gigpo.mode=mean_norm", "algorithm.gigpo.gamma=0.5",
                    "algorithm.gigpo.step_advantage_w=0.5")
    with row_metadata(data.non_tensor_batch):
        out = compute_advantage(data, adv_estimator=cfg.adv_estimator, config=cfg)
    first = out.batch["advantages"][:, 0]
    # episode: T1 returns a=1, b=0, c=0 -> 2/3, -1/3, -1/3; T2 singleton. step (T1,s0): G=(.5,0,0) -> 1/3,-1/6,-1/6
    assert first.tolist() == pytest.approx([2 / 3 + 0.5 / 3, 2 / 3, -1 / 3 - 0.5 / 6, -1 / 3, -1 / 3 - 0.5 / 6,
                                            0.0, 0.0], abs=1e-6)
    assert torch.all(out.batch["advantages"][mask == 0] == 0)


def test_register_estimators_is_idempotent():
    from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY

    estimators.register_estimators()
    estimators.register_estimators()
    assert ADV_ESTIMATOR_REGISTRY["3spo"] is estimators.compute_3spo_step_advantage
    assert ADV_ESTIMATOR_REGISTRY["gigpo"] is estimators.compute_gigpo_advantage
    assert ADV_ESTIMATOR_REGISTRY["turn_gae"] is estimators.compute_turn_gae_advantage
    assert estimators.REGISTERED_ESTIMATORS == ("3spo", "gigpo", "spa", "turn_gae")


def test_spa_through_the_registry_hand_computed():
    # task a: trajectory x r = (1, 2), y r = (3,); task b: one trajectory (no baseline); one padding row
    scores, mask = _batch([1.0, 2.0, 3.0, 5.0, 9.0], [1] * 5)
    meta = {"task_id": np.array(["a", "a", "a", "b", "a"], dtype=object),
            "traj_id": np.array(["x", "x", "y", "z", "y"], dtype=object),
            "step_index": np.array([0, 1, 0, 0, 1]), "is_padding": np.array([False, False, False, False, True])}
    with row_metadata(meta):
        adv, _ = get_adv_estimator_fn("spa")(token_level_rewards=scores, response_mask=mask, config=None)
    # G: x0 = 3, x1 = 2, y0 = 3; step 0 of a: mean(3, 3) = 3 -> 0, 0; step 1 of a: only x -> 0; b alone -> 0
    assert adv[:, 0].tolist() == pytest.approx([0.0, 0.0, 0.0, 0.0, 0.0])
    scores, _ = _batch([1.0, 2.0, 0.0, 5.0, 9.0], [1] * 5)
    with row_metadata(meta):
        adv, _ = get_adv_estimator_fn("spa")(token_level_rewards=scores, response_mask=mask, config=None)
    # G: x0 = 3, y0 = 0 -> mean 1.5: +1.5, -1.5
    assert adv[:, 0].tolist() == pytest.approx([1.5, 0.0, -1.5, 0.0, 0.0])
