"""verl advantage estimators ``3spo``, ``gigpo``, ``spa`` and ``turn_gae`` (thin glue; the math is in
threespo_verl/algos).

All are registered through ``verl.trainer.ppo.core_algos.register_adv_est`` and are called by verl's advantage step
with ``token_level_rewards``, ``response_mask``, ``index`` and ``config`` (verl's v1 trainer passes the raw
``config.algorithm`` DictConfig; the dataclass, a dict or None work too). The row's reward is
``token_level_rewards.sum(-1)``, as in verl's GRPO (the trainer places each step's reward at its last valid token;
an in-reward KL penalty, if enabled, is part of it); the grouping comes
from the per-row metadata (``row_meta``). Each row's scalar advantage is broadcast over its response tokens.
``turn_gae`` (trajectory rows) is the exception: per-turn advantages and returns from the critic's values, which
verl hands only to its own ``gae``, so they come through the row metadata too.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
import verl.utils.torch_functional as verl_F
from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY, register_adv_est

from threespo_verl.algos.gigpo import gigpo_advantage
from threespo_verl.algos.spa import spa_advantage
from threespo_verl.algos.threespo import group_step_advantage, merge_group_ids, step_group_ids
from threespo_verl.algos.turn_gae import turn_gae_advantage_return
from threespo_verl.verl_glue import row_meta as rm

REGISTERED_ESTIMATORS = ("3spo", "gigpo", "spa", "turn_gae")


def _section(config: Any, name: str, cls: type) -> Any:
    """``config.<name>`` as an instance of the dataclass ``cls`` (validated by its ``__post_init__``).

    ``config`` is whatever verl hands over: the ``ThreeSPOAlgoConfig`` dataclass, the raw ``config.algorithm``
    DictConfig (v1 trainer), a dict, or None. A missing section or key (or an explicit null) takes the default.
    """
    node = None
    if config is not None:
        node = config.get(name, None) if hasattr(config, "get") else getattr(config, name, None)
    if isinstance(node, cls):
        return node
    values = {}
    for field in dataclasses.fields(cls):
        if field.name.startswith("_") or node is None:
            continue
        value = node.get(field.name, None) if hasattr(node, "get") else getattr(node, field.name, None)
        if value is not None:
            values[field.name] = value
    return cls(**values)


def _row_rewards(token_level_rewards: torch.Tensor) -> np.ndarray:
    """R per row = the sum of its token-level rewards (the step reward sits on the last response token), as GRPO."""
    return token_level_rewards.detach().sum(-1).to("cpu", torch.float64).numpy()


def _broadcast(adv_rows: np.ndarray, token_level_rewards: torch.Tensor,
               response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns): the row's scalar on every response token, 0 elsewhere. Like verl's GRPO, returns is
    the same tensor as advantages (no critic reads it)."""
    adv = torch.as_tensor(adv_rows, dtype=token_level_rewards.dtype, device=response_mask.device).unsqueeze(-1)
    adv = adv * response_mask
    return adv, adv


def _valid_rows(meta: dict[str, np.ndarray]) -> np.ndarray:
    return ~np.asarray(meta[rm.IS_PADDING], dtype=bool)


def compute_3spo_step_advantage(token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index=None,
                                config: Any = None, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """3SPO step advantage (Eq.4): each row's step reward R normalised among the children of its parent node::

        mean_std: A_i = (R_i - mean_g) / (std_g + adv_eps)        mean: A_i = R_i - mean_g

    Groups g are (task_id, parent_node_id) or, with ``algorithm.threespo.merge_identical_states``, (env_task_id,
    state_key): the replies sampled at every parent in the same state of the same task within the update.
    Singleton groups and padding rows get 0. ``index`` (verl's uid) is not used: the groups come from the row
    metadata (``row_meta``).
    """
    from threespo_verl.verl_glue.config import ThreeSPOConfig  # lazy: verl imports this module while importing itself

    cfg = _section(config, "threespo", ThreeSPOConfig)
    need = rm.required_fields("3spo", merge_identical_states=cfg.merge_identical_states)
    meta = rm.require_row_metadata("3spo", need, token_level_rewards.shape[0])
    if cfg.merge_identical_states:
        groups = merge_group_ids(meta[rm.ENV_TASK_ID], meta[rm.STATE_KEY])
    else:
        groups = step_group_ids(meta[rm.TASK_ID], meta[rm.PARENT_NODE_ID])
    adv = group_step_advantage(_row_rewards(token_level_rewards), groups, valid=_valid_rows(meta),
                               norm=cfg.step_adv_norm, eps=float(cfg.adv_eps))
    return _broadcast(adv, token_level_rewards, response_mask)


def compute_gigpo_advantage(token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index=None,
                            config: Any = None, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """GiGPO: ``A = A_E + w * A_S`` (threespo_verl.algos.gigpo): A_E normalises each trajectory's return among the
    trajectories of its task, A_S the discounted step return G_t among the rows of its (task, anchor state) group.
    Config ``algorithm.gigpo.{gamma, step_advantage_w, mode, eps}``; groups from the row metadata."""
    from threespo_verl.verl_glue.config import GiGPOConfig

    cfg = _section(config, "gigpo", GiGPOConfig)
    meta = rm.require_row_metadata("gigpo", rm.required_fields("gigpo"), token_level_rewards.shape[0])
    adv = gigpo_advantage(_row_rewards(token_level_rewards), meta[rm.TASK_ID], meta[rm.TRAJ_ID],
                          meta[rm.STEP_INDEX], meta[rm.STATE_KEY], gamma=float(cfg.gamma),
                          step_advantage_w=float(cfg.step_advantage_w), valid=_valid_rows(meta), mode=cfg.mode,
                          eps=float(cfg.eps))
    return _broadcast(adv, token_level_rewards, response_mask)


def compute_spa_advantage(token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index=None,
                          config: Any = None, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """SPA (DESIGN §3): ``A_t = G_t - mean_{task group, same t} G_t`` with ``G_t = sum_{k >= t} r_k`` the
    reward-to-go of the row's trajectory, r_k = alpha_p c_k + beta g_k (``threespo_verl.algos.spa``). Groups from the
    row metadata: the trajectories of one task submission (verl's uid) at the same step index."""
    meta = rm.require_row_metadata("spa", rm.required_fields("spa"), token_level_rewards.shape[0])
    adv = spa_advantage(_row_rewards(token_level_rewards), meta[rm.TASK_ID], meta[rm.TRAJ_ID], meta[rm.STEP_INDEX],
                        valid=_valid_rows(meta))
    return _broadcast(adv, token_level_rewards, response_mask)


def _algo_value(config: Any, key: str) -> float:
    """``config.<key>`` of verl's algorithm config (DictConfig, dataclass or dict); AlgoConfig's default if absent."""
    from verl.trainer.config.algorithm import AlgoConfig

    value = None
    if config is not None:
        value = config.get(key, None) if hasattr(config, "get") else getattr(config, key, None)
    return float(getattr(AlgoConfig, key) if value is None else value)


def compute_turn_gae_advantage(token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index=None,
                               config: Any = None, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn-level GAE (``threespo_verl.algos.turn_gae``) on trajectory rows: gamma = ``algorithm.gamma`` and lambda =
    ``algorithm.lam`` per turn (per environment step), A_t and the critic's target G_t = A_t + V(s_t) on every action
    token of turn t, V(s_t) read at the turn's first action token. The advantages are then whitened over the batch's
    action tokens, as verl's ``gae`` does; 0 on masked tokens.

    verl passes values to its built-in ``gae`` only, so the critic's values come from the row metadata (``values``,
    handed over by the trainer), with the turns: the runs of 1s of ``action_mask`` (the response mask the rollout
    wrote; ``response_mask`` may have lost tokens to verl's rollout-correction rejection, and it only masks the
    output)."""
    meta = rm.require_row_metadata("turn_gae", rm.required_fields("turn_gae"), token_level_rewards.shape[0])
    device, dtype = token_level_rewards.device, token_level_rewards.dtype
    values = torch.as_tensor(np.asarray(meta[rm.VALUES], dtype=np.float32), device=device).to(dtype)
    turns = torch.as_tensor(np.asarray(meta[rm.ACTION_MASK], dtype=np.int64), device=device)
    if values.shape != token_level_rewards.shape or turns.shape != token_level_rewards.shape:
        raise rm.MissingRowMetadataError(
            f"advantage estimator 'turn_gae': per-token metadata values {tuple(values.shape)} and action_mask "
            f"{tuple(turns.shape)} must match the batch's token-level rewards {tuple(token_level_rewards.shape)}; hand "
            "over the critic's values and the response mask of this batch, padded as verl pads it")
    adv, returns = turn_gae_advantage_return(token_level_rewards, values, turns, gamma=_algo_value(config, "gamma"),
                                             lam=_algo_value(config, "lam"))
    mask = response_mask.to(dtype)
    adv = verl_F.masked_whiten(adv, mask) * mask
    return adv, returns * mask


_FUNCTIONS = {"3spo": compute_3spo_step_advantage, "gigpo": compute_gigpo_advantage, "spa": compute_spa_advantage,
              "turn_gae": compute_turn_gae_advantage}
assert tuple(_FUNCTIONS) == REGISTERED_ESTIMATORS


def register_estimators() -> None:
    """Register the estimators with verl. Idempotent: the same module-level functions are registered each time, so
    verl's check (which raises only for a *different* function under the same name) never fires on a second call."""
    for name, fn in _FUNCTIONS.items():
        if ADV_ESTIMATOR_REGISTRY.get(name) is not fn:
            register_adv_est(name)(fn)
