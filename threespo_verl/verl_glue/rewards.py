"""Rewards and row metadata for verl's advantage step: each row's reward is ``extra_fields["step_reward"]`` at its
last response token (verl copies the last output's ``reward_score`` onto the other outputs of a session), a
trajectory row's turn rewards at the closing token of each action turn; the per-row metadata reaches the
``3spo``/``gigpo``/``spa`` estimators through ``row_meta.row_metadata``, and ``turn_gae`` gets the critic's values and
the turns' mask the same way; padding rows (``is_padding``) join no group."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
import transfer_queue as tq
from tensordict import TensorDict
from transfer_queue import KVBatchMeta
from verl.workers.utils.padding import response_to_nested

from threespo_verl.rollout.expand import rescore_rows
from threespo_verl.rollout.trajectory import place_turn_rewards
from threespo_verl.verl_glue import row_meta as rm
from threespo_verl.verl_glue.step_row import StepRow
from threespo_verl.verl_glue.verl_compat import is_padding

#: fault injection for tests/e2e/test_learning.py only, which proves that the learning test fails when the learning
#: signal breaks: ``flip_advantage`` negates every advantage, ``reward_off_by_one`` puts each step reward one token
#: past the response (where the response mask drops it). Never set in a real run (the trainer warns loudly).
MUTATION_ENV = "THREESPO_TEST_MUTATION"
MUTATIONS = ("flip_advantage", "reward_off_by_one")


def episode_returns_on_final_rows(extras: list[StepRow], padding: list[bool]) -> list[float]:
    """Per row: the episode's return (sum of its rows' step rewards) on the episode's final row (highest step index
    of its ``traj_id``), 0 on its other rows and on padding rows."""
    total: dict[str, float] = defaultdict(float)
    final: dict[str, tuple[int, int]] = {}
    for i, (e, pad) in enumerate(zip(extras, padding)):
        if pad:
            continue
        total[e.traj_id] += float(e.step_reward)
        if e.traj_id not in final or final[e.traj_id][0] < int(e.step_index):
            final[e.traj_id] = (int(e.step_index), i)
    out = [0.0] * len(extras)
    for traj, (_step, i) in final.items():
        out[i] = total[traj]
    return out


class RewardsMixin:
    """Rewards into TransferQueue and row metadata for the estimators (mixed into ``ThreeSPOTrainer``)."""

    def _row_rewards_to_tq(self, batch: KVBatchMeta, extras: list[StepRow]) -> None:
        """rm_scores of every row := its own step reward at the last response token (padding rows keep 0); a
        trajectory row (``algorithm=ppo | spa_ppo``) gets ``turn_rewards[i]`` at ``turn_ends[i]``, the closing token
        of each action turn, and 0 on every other token (observation tokens included). verl's GRPO reads only each
        session's final row: for it that row carries the episode's return (the sum of its step rewards: the outcome
        minus the invalid-action penalties, DESIGN §2.8) and the session's other rows 0."""
        rewards = [float(e.step_reward) for e in extras]
        if self.algo == "3spo" and self.tcfg.reward_stats == "update":
            rewards = self._rescored(batch, extras, rewards)
        if str(self.config.algorithm.adv_estimator) == "grpo":
            rewards = episode_returns_on_final_rows(extras, [is_padding(t) for t in batch.tags])
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["response_mask"])
        mask = data["response_mask"]
        lens = mask.offsets().diff().tolist()
        width = max(lens) if lens else 1
        scores = torch.zeros(len(batch), width, dtype=torch.float32)
        for i, (tag, e, n, r) in enumerate(zip(batch.tags, extras, lens, rewards)):
            if not is_padding(tag) and n > 0 and e.mode == "trajectory":
                shift = int(self.mutation == "reward_off_by_one")
                ends = [(p + shift, r) for p, r in zip(e.turn_ends, e.turn_rewards) if p + shift < n]
                scores[i, :n] = torch.tensor(place_turn_rewards(n, [p for p, _ in ends], [r for _, r in ends]))
            elif not is_padding(tag) and n > 0:
                pos = n if self.mutation == "reward_off_by_one" else n - 1
                if pos < width:
                    scores[i, pos] = r
        out = TensorDict({"rm_scores": response_to_nested(scores, mask)}, batch_size=len(batch))
        tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=out)

    def _rescored(self, batch: KVBatchMeta, extras: list[StepRow], rewards: list[float]) -> list[float]:
        """``reward_stats: update``: Eq.2 of every node row from the statistics committed now (``rescore_rows``); the
        round-time rewards stay in the rows' extra fields (explore/reward/*), the re-scored means go to
        ``explore/reward/update_*``."""
        import ray

        idx = [i for i, (t, e) in enumerate(zip(batch.tags, extras))
               if not is_padding(t) and e.mode == "node" and not e.pruned]

        def lookup(keys):
            (n_total, n_success), t = ray.get(self.store.lookup_with_t.remote(list(keys)))
            return n_total, n_success, t

        r = rescore_rows([extras[i].to_extra_fields() for i in idx], self.params, lookup)
        out = list(rewards)
        for j, i in enumerate(idx):
            out[i] = float(r.total[j])
        if idx:
            self._rescore_metrics = {"explore/reward/update_reward_mean": float(np.mean(r.total)),
                                     "explore/reward/update_r_score_diff_mean": float(np.mean(r.score_diff)),
                                     "explore/reward/update_r_novel_mean": float(np.mean(r.novelty))}
        return out

    def row_metadata(self, batch: KVBatchMeta, extras: list[StepRow]) -> dict[str, np.ndarray]:
        """The per-row metadata of ``row_meta`` for this batch, aligned with ``batch.keys``; with
        ``adv_estimator=turn_gae`` also its per-token fields (``turn_gae_metadata``)."""
        pad = np.array([is_padding(t) for t in batch.tags])
        tokens = self.turn_gae_metadata(batch) if str(self.config.algorithm.adv_estimator) == "turn_gae" else {}
        return {
            # trees scope 3SPO's node ids; episode rows are scoped by verl's uid (one submission of a task)
            rm.TASK_ID: np.array([e.tree_id for e in extras], dtype=object),
            rm.ENV_TASK_ID: np.array([e.task_id for e in extras], dtype=object),
            rm.TRAJ_ID: np.array([e.traj_id for e in extras], dtype=object),
            rm.STEP_INDEX: np.array([int(e.step_index) for e in extras], dtype=np.int64),
            rm.NODE_ID: np.array([int(e.node_id) for e in extras], dtype=np.int64),
            rm.PARENT_NODE_ID: np.array([int(e.parent_node_id) for e in extras], dtype=np.int64),
            rm.STATE_KEY: np.array([e.state_key for e in extras], dtype=object),
            rm.ROUND: np.array([int(e.round) for e in extras], dtype=np.int64),
            rm.IS_PADDING: pad,
            **tokens,
        }

    def turn_gae_metadata(self, batch: KVBatchMeta) -> dict[str, np.ndarray]:
        """``values`` (the critic's, written by verl's ``_compute_values``) and ``action_mask`` (the response mask
        as the rollout wrote it) of every row, padded to the batch's longest response as verl's advantage step pads
        its tensors (``to_padded_tensor``, zeros), so that they line up with the token-level rewards ``turn_gae``
        receives."""
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id,
                               select_fields=["values", "response_mask"]).to_padded_tensor()
        return {rm.VALUES: data["values"].detach().to("cpu", torch.float32).numpy(),
                rm.ACTION_MASK: data["response_mask"].detach().to("cpu", torch.int64).numpy()}

    def _flip_advantages(self, batch: KVBatchMeta) -> None:
        """The ``flip_advantage`` mutation: negate every advantage in TransferQueue."""
        adv = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["advantages"])
        flipped = TensorDict({"advantages": -adv["advantages"]}, batch_size=len(batch))
        tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=flipped)
