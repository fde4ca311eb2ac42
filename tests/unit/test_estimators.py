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
from threespo_verl.verl_glue.row_meta import MissingRowMetadataError, row_metadata


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
    "is_pad": np.array([False, False, False, False, False, True]),
    "round": np.array([1, 1, 1, 1, 1, 1]),
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
        # merging pools n0 and n7 (same task, round, state key): mean of (1, 0, .5, .3) = 0.45
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
        "is_pad": np.zeros(6, dtype=bool),
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
                                                      r"'is_pad'\].*trainer_mode=threespo"):
        fn(token_level_rewards=scores, response_mask=mask, config=None)
    with row_metadata({"task_id": np.array(["a", "a"]), "is_pad": np.array([False, False])}):
        with pytest.raises(MissingRowMetadataError, match=r"missing per-row metadata fields \['parent_node_id'\]"):
            fn(token_level_rewards=scores, response_mask=mask, config=None)
    with row_metadata({"task_id": np.array(["a"]), "traj_id": np.array(["x"]), "step_index": np.array([0]),
                       "state_key": np.array(["k"]), "is_pad": np.array([False])}):
        with pytest.raises(MissingRowMetadataError, match="has 1 rows but the batch has 2"):
            get_adv_estimator_fn("gigpo")(token_level_rewards=scores, response_mask=mask, config=None)
