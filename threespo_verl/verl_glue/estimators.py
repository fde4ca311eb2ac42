"""verl advantage estimators ``3spo`` and ``gigpo`` (thin glue; the math is in threespo_verl/algos).

Both are registered through ``verl.trainer.ppo.core_algos.register_adv_est`` and are called by verl's advantage step
with ``token_level_rewards``, ``response_mask``, ``index`` and ``config`` (verl's v1 trainer passes the raw
``config.algorithm`` DictConfig; the dataclass, a dict or None work too). The row's reward is
``token_level_rewards.sum(-1)`` (the trainer places each step's reward at its last valid token); the grouping comes
from the per-row metadata (``row_meta``). Each row's scalar advantage is broadcast over its response tokens.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY, register_adv_est

from threespo_verl.algos.gigpo import gigpo_advantage
from threespo_verl.algos.threespo import group_step_advantage, merge_group_ids
from threespo_verl.verl_glue import row_meta as rm

REGISTERED_ESTIMATORS = ("3spo", "gigpo")


def _section(config: Any, name: str, defaults: Any) -> dict[str, Any]:
    """``config.<name>`` as a plain dict over the dataclass's fields, missing keys taking the defaults."""
    node = None
    if config is not None:
        node = config.get(name, None) if hasattr(config, "get") else getattr(config, name, None)
    out = {}
    for field in defaults.__dataclass_fields__:
        if field.startswith("_"):
            continue
        value = None
        if node is not None:
            value = node.get(field, None) if hasattr(node, "get") else getattr(node, field, None)
        out[field] = getattr(defaults, field) if value is None else value
    return out


def _broadcast(adv_rows: np.ndarray, response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    adv = torch.as_tensor(adv_rows, dtype=torch.float32, device=response_mask.device).unsqueeze(-1)
    adv = adv * response_mask.to(torch.float32)
    return adv, adv.clone()


def _pad_mask(meta: dict[str, np.ndarray]) -> np.ndarray:
    return ~np.asarray(meta[rm.IS_PAD], dtype=bool)


def compute_3spo_step_advantage(token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index=None,
                                config: Any = None, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """3SPO step advantage (Eq.4): each row's step reward R normalised among the children of its parent node.

    Groups are ``parent_node_id`` (or, with ``algorithm.threespo.merge_identical_states``, parents sharing a state
    key within one task and round); singleton groups and padding rows get 0.
    """
    from threespo_verl.verl_glue.config import ThreeSPOConfig  # lazy: verl imports this module while importing itself

    cfg = _section(config, "threespo", ThreeSPOConfig())
    n = token_level_rewards.shape[0]
    need = rm.REQUIRED["3spo_merged" if cfg["merge_identical_states"] else "3spo"]
    meta = rm.require_row_metadata("3spo", need, n)
    rewards = (token_level_rewards * response_mask).sum(-1).detach().cpu().double().numpy()
    groups = meta[rm.PARENT_NODE_ID]
    if cfg["merge_identical_states"]:
        groups = merge_group_ids(meta[rm.TASK_ID], meta[rm.ROUND], meta[rm.STATE_KEY])
    adv = group_step_advantage(rewards, groups, valid=_pad_mask(meta), norm=cfg["step_adv_norm"],
                               eps=cfg["adv_eps"])
    return _broadcast(adv, response_mask)


def compute_gigpo_advantage(token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index=None,
                            config: Any = None, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """GiGPO: A = A_episode(task group) + w * A_step(task, anchor state) on discounted step returns."""
    from threespo_verl.verl_glue.config import GiGPOConfig

    cfg = _section(config, "gigpo", GiGPOConfig())
    n = token_level_rewards.shape[0]
    meta = rm.require_row_metadata("gigpo", rm.REQUIRED["gigpo"], n)
    rewards = (token_level_rewards * response_mask).sum(-1).detach().cpu().double().numpy()
    adv = gigpo_advantage(rewards, meta[rm.TASK_ID], meta[rm.TRAJ_ID], meta[rm.STEP_INDEX], meta[rm.STATE_KEY],
                          gamma=float(cfg["gamma"]), step_advantage_w=float(cfg["step_advantage_w"]),
                          valid=_pad_mask(meta), mode=cfg["mode"], eps=float(cfg["eps"]))
    return _broadcast(adv, response_mask)


_FUNCTIONS = {"3spo": compute_3spo_step_advantage, "gigpo": compute_gigpo_advantage}


def register_estimators() -> None:
    """Register both estimators with verl (idempotent: re-registering the same function is a no-op)."""
    for name, fn in _FUNCTIONS.items():
        if ADV_ESTIMATOR_REGISTRY.get(name) is not fn:
            register_adv_est(name)(fn)
