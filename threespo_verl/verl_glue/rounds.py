"""3SPO's expansion rounds (``algorithm.name=3spo``): the replay buffer that waits for one round's groups, the node
requests, feeding an expansion's rows back into its tree, and the trainer's round loop (``RoundsMixin``).

Each *round* sends one node-expansion request per tree through verl's ``AgentLoopManagerTQ``, waits for exactly those
groups in the replay buffer (``RoundReplayBuffer.collect``: a pruned node's group holds one marker row, cleared),
feeds the children back into the trees, records the trajectories the trees ended (once each, under the store keys of
``state_scope``) and commits the state store (scores of the next round see this round's trajectories, never earlier).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid
from collections import defaultdict
from typing import Any

import numpy as np
import transfer_queue as tq
from tensordict import TensorDict
from transfer_queue import KVBatchMeta
from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer
from verl.utils import tensordict_utils as tu

from threespo_verl.envs.base import Task
from threespo_verl.rollout.release import PendingGroup, wait_rounds
from threespo_verl.rollout.tree import ChildOutcome, TaskTree, Trajectory, store_records
from threespo_verl.store.state_store import key_hash
from threespo_verl.verl_glue.dataset import AGENT_NAME, REQUEST_KEY
from threespo_verl.verl_glue.step_row import StepRow, step_rows
from threespo_verl.verl_glue.train_metrics import new_round_metrics
from threespo_verl.verl_glue.verl_compat import (
    ROLLOUT_N_COLUMN,
    extra_fields,
    select_rows,
    split_row_key,
)

logger = logging.getLogger("threespo_verl.trainer")

#: a node whose expansion raised this many times is pruned (logged), so one broken task cannot stall training
MAX_NODE_FAILURES = 3


class RoundReplayBuffer(ReplayBuffer):
    """verl's sync ``ReplayBuffer`` with what 3SPO's rounds need on top:

    * ``collect(uids)``: wait until *all* of one round's groups are terminal and materialise them, including groups
      with no rows (pruned nodes); the base ``sample`` waits for a count of groups and refuses all-empty batches;
    * ``stage(batch)``: the next ``sample`` of the train partition returns this batch, so verl's ``_step_once`` runs
      on the round's rows unchanged.
    """

    def __init__(self, *args, poll_interval: float = 0.05, **kwargs) -> None:
        super().__init__(*args, poll_interval=poll_interval, **kwargs)
        self._staged: KVBatchMeta | None = None

    def collect(self, uids: list[str], partition_id: str = "train",
                timeout_s: float | None = None) -> tuple[KVBatchMeta, set[str]]:
        wanted = set(uids)
        t0 = time.time()
        while True:
            self._sync_metadata_from_transfer_queue()
            terminal = self.finished_keys[partition_id] | self.failure_keys[partition_id]
            if wanted <= terminal:
                break
            if timeout_s is not None and time.time() - t0 > timeout_s:
                raise TimeoutError(f"{len(wanted - terminal)} of {len(wanted)} node expansions did not finish in "
                                   f"{timeout_s:.0f} s")
            time.sleep(self.poll_interval)
        failed = wanted & self.failure_keys[partition_id]
        batch = self._materialize_batch(partition_id, list(uids), dict(self.partitions[partition_id]))
        return batch, failed

    def stage(self, batch: KVBatchMeta) -> None:
        self._staged = batch

    def sample(self, global_steps: int, partition_id: str, batch_size: int):
        if partition_id == "train" and self._staged is not None:
            batch, self._staged = self._staged, None
            return batch, {}
        return super().sample(global_steps, partition_id, batch_size)


def node_request(tree: TaskTree, node, round_: int, g_max: int) -> dict[str, Any]:
    """The ``threespo_request`` of one node expansion (what the agent loop needs to restore and expand it)."""
    return {
        "mode": "node", "task": dataclasses.asdict(tree.task), "tree_id": tree.tree_id, "node_id": node.node_id,
        "prefix": list(node.actions), "history": tree.history(node), "path_keys": list(tree.path_keys(node)),
        "round": round_, "max_branches": min(g_max, tree.remaining_budget),
    }


def node_children(es: list[StepRow]) -> list[StepRow]:
    """The distinct children of one expansion from its rows (one row per sampled reply; replies of the same action
    share ``branch``): the first row of each branch, in branch order."""
    first: dict[int, StepRow] = {}
    for e in es:
        first.setdefault(int(e.branch), e)
    return [first[b] for b in sorted(first)]


def apply_node_rows(tree: TaskTree, node, es: list[StepRow], m: dict[str, Any]) -> list[Trajectory]:
    """Feed one node's rows (their ``StepRow``, in output order) back into its tree, count them in ``m`` and
    return the trajectories the tree ended (to be recorded in the store exactly once). No rows means the agent loop
    pruned the node (n(s) = 0): its one marker row (``pruned``) carries the node's state."""
    if not es or es[0].pruned:
        traj = tree.prune(node.node_id, *((es[0].state_key, es[0].parent_obs) if es else ()))
        m["pruned"] += 1
        m["n_hist"].append(0)
        return [traj]
    e0 = es[0]
    children = node_children(es)
    ended = tree.expand(node.node_id, e0.state_key, e0.parent_obs, [
        ChildOutcome(action=e.action, action_text=e.action_text, state_key=e.child_state_key,
                     obs_text=e.child_obs, reward=float(e.step_reward), done=bool(e.done),
                     won=bool(e.won)) for e in children])
    m["expanded"] += 1
    m["n_hist"].append(int(e0.n_branches))
    m["env_steps"] += len(children)
    m["llm_calls"] += int(e0.n_branches)
    m["replayed"] += int(e0.replayed_steps)
    m["env_failures"] += sum(int(e.env_failed) for e in children)
    m["prompt_truncated"] += int(e0.prompt_truncated > 0)
    m["states"].add(e0.state_key)
    for e in es:  # per row (sampled reply): what the update trains on
        m["states"].add(e.child_state_key)
        for k in ("r_novel", "r_score_diff", "r_success", "r_penalty"):
            m[k].append(float(getattr(e, k)))
        m["reward"].append(float(e.step_reward))
        m["invalid"].append(0.0 if e.valid_action else 1.0)
    return ended


class RoundsMixin:
    """The trainer's 3SPO exploration: expansion rounds until an update's groups are released (mixed into
    ``ThreeSPOTrainer``; reads its ``config``, ``tcfg``, ``params``, ``frontiers``, ``task_queue``, ``store``,
    ``ledger``)."""

    def explore(self) -> tuple[KVBatchMeta, dict[str, float]]:
        """Run expansion rounds until the groups released for an update (``update_mode``, ``rollout/release.py``)
        hold at least ``min_update_rows`` rows, or the run's env-step budget is spent (then every pending group is
        released: the run ends); return the update's rows and the rounds' metrics.

        After each round: its groups (rows of nodes with >= 2 children) enter the ledger with their old log-probs
        computed now, by the actor that sampled them (``_round_old_log_probs``); finished trees are retired; the
        ledger releases what the mode allows. A round in which every request was a root pruned by Eq.1's
        truncation (the task is skipped, ``explore/skipped_truncated_roots``) does not count towards
        ``max_rounds_per_update``."""
        min_rows = max(1, self.tcfg.min_update_rows)
        max_rounds = self.tcfg.max_rounds_per_update or 10 * self.frontiers.budget
        acc: dict[str, list] = defaultdict(list)
        released: list[PendingGroup] = []
        rounds = idle_rounds = 0
        batch_trees: set[str] | None = None
        flush = False
        while True:
            self._refill()
            if batch_trees is None:
                batch_trees = {t.tree_id for t in self.frontiers.trees.values()}
            update, rm_ = self.run_round(self.frontiers.requests())
            for tree_id, node_id, keys, tags in rm_.pop("groups"):
                self.ledger.add(tree_id, node_id, self.round - 1, keys, tags)
            for k, v in rm_.items():
                acc[k].append(v)
            self._round_old_log_probs(update, acc)
            rounds += 1
            if rm_["skipped_roots"] and rm_["expanded"] == 0 and rm_["pruned"] == rm_["skipped_roots"]:
                idle_rounds += 1  # only truncated roots: the statistics gave these tasks nothing left to explore
            self._retire(acc)
            live = {t.tree_id for t in self.frontiers.trees.values()}
            batch_done = not (batch_trees & live)
            flush = self._env_budget_spent(acc)
            out = self.ledger.release(self._open_nodes, self.round - 1, batch_done=batch_done, flush=flush)
            released.extend(out)
            acc["row_wait_rounds"].append(wait_rounds(out, self.round - 1))
            n_rows = sum(len(g.keys) for g in released)
            # at the end of a run every pending group goes; an update needs at least one row, so an empty ledger
            # keeps exploring (rare: a round with no group and nothing waiting)
            if n_rows >= (1 if flush else min_rows) and (flush or out or self.ledger.mode != "post_trajectory"):
                break
            if batch_done and self.ledger.mode == "post_trajectory":
                batch_trees = None  # the batch's trees are done but gave too few rows: take the next batch
            if rounds - idle_rounds >= max_rounds:
                raise RuntimeError(f"3SPO: {rounds - idle_rounds} expansion rounds released only {n_rows} update rows "
                                   f"(< min_update_rows={min_rows}); every group was a singleton, pruned or still "
                                   f"open. Lower algorithm.threespo.min_update_rows or check the policy's replies")
            if idle_rounds > 4 * max_rounds:
                raise RuntimeError(f"3SPO: {idle_rounds} rounds in a row found only truncated roots (Eq.1: N_fail >= "
                                   f"xi and SR <= zeta at every task's root); the training tasks give nothing left to "
                                   f"explore. Use more tasks, or raise algorithm.threespo.xi")
        batch = KVBatchMeta(partition_id="train", keys=[k for g in released for k in g.keys],
                            tags=[t for g in released for t in g.tags])
        metrics = self._explore_metrics(acc, rounds, len(batch))
        metrics["explore/released_groups"] = len(released)
        metrics["explore/pending_groups"] = len(self.ledger)
        metrics["explore/pending_rows"] = self.ledger.rows
        self.final_update = flush
        return batch, metrics

    def _open_nodes(self, tree_id: str) -> set[int] | None:
        """The open nodes of the tree ``tree_id`` if it is still in flight (None: done, every group closed)."""
        tree = self.frontiers.by_tree_id(tree_id)
        return None if tree is None else tree.open_nodes()

    def _refill(self) -> None:
        """Fill the frontiers up to ``data.train_batch_size`` trees with tasks from verl's dataloader."""
        want = int(self.config.data.train_batch_size)
        guard = 0
        while len(self.frontiers) < want:
            if not self.task_queue:
                chunk = self._fetch_one_gen_batch()
                self.task_queue.extend(Task(**json.loads(r)["task"]) for r in chunk[REQUEST_KEY])
            task = self.task_queue.pop(0)
            if task.task_id in self.frontiers.trees:
                self.task_queue.append(task)  # already being explored: serve it after its tree is done
                guard += 1
                if guard > 4 * want + len(self.task_queue):
                    break  # fewer distinct tasks than slots
                continue
            self.frontiers.add([task])

    def _requests_td(self, reqs: list[tuple[TaskTree, Any]]) -> tuple[TensorDict, list[str]]:
        uids, rows = [], []
        for tree, node in reqs:
            uid = uuid.uuid4().hex  # no "_": verl splits keys on it (verl_compat.ROW_KEY_FORMAT)
            uids.append(uid)
            rows.append(json.dumps(node_request(tree, node, self.round, self.params.g_max)))
        n = len(reqs)
        raw_prompt = np.empty(n, dtype=object)  # verl counts prompts by this column; the loop builds its own
        for i, (tree, _node) in enumerate(reqs):
            raw_prompt[i] = [{"role": "user", "content": tree.task_id}]
        batch = {
            "uid": np.array(uids, dtype=object),
            "index": np.arange(n, dtype=np.int64),
            "raw_prompt": raw_prompt,
            "data_source": np.array([f"{t.task.env_name}/{t.task.task_type}" for t, _ in reqs], dtype=object),
            "agent_name": np.array([AGENT_NAME] * n, dtype=object),
            REQUEST_KEY: np.array(rows, dtype=object),
            ROLLOUT_N_COLUMN: np.array([1] * n, dtype=object),
        }
        td = tu.get_tensordict(batch)
        tu.assign_non_tensor_data(td, "global_steps", self.global_steps)
        return td, uids

    def run_round(self, reqs: list[tuple[TaskTree, Any]]) -> tuple[KVBatchMeta, dict[str, Any]]:
        """Expand one node per request through verl's agent loop; update the trees and commit the store. Returns
        the update rows (groups of >= 2 children; singleton rows are cleared from TransferQueue) and raw metrics."""
        import ray

        td, uids = self._requests_td(reqs)
        self._submit_batch_to_rollout(td)
        batch, failed = self.replay_buffer.collect(uids)
        extras = step_rows(extra_fields(batch))
        by_uid: dict[str, list[tuple[int, int]]] = defaultdict(list)  # uid -> [(output index, row position)]
        for pos, key in enumerate(batch.keys):
            uid, _session, idx = split_row_key(key)
            by_uid[uid].append((int(idx), pos))
        keep = [False] * len(batch)
        m = new_round_metrics()
        records: list[tuple[list[str], bool]] = []  # (store keys, won) of every trajectory this round ended
        groups: list[tuple[str, int, list[int]]] = []
        for (tree, node), uid in zip(reqs, uids):
            rows = [pos for _, pos in sorted(by_uid.get(uid, []))]
            if uid in failed and not rows:
                self.node_failures[(tree.tree_id, node.node_id)] += 1
                m["failed"] += 1
                if self.node_failures[(tree.tree_id, node.node_id)] >= MAX_NODE_FAILURES:
                    logger.warning("3SPO: expanding node %s of %s failed %d times; pruning it", node.node_id,
                                   tree.task_id, MAX_NODE_FAILURES)
                    ended = [tree.prune(node.node_id)]
                    records.extend((self.params.store_keys(tree.task_id, t.path_keys), t.success) for t in ended)
                    m["ended"].extend(t.success for t in ended)
                    m["pruned_after_failures"] = m.get("pruned_after_failures", 0) + 1
                continue
            es = [extras[p] for p in rows]
            ended = apply_node_rows(tree, node, es, m)
            records.extend((self.params.store_keys(tree.task_id, keys), won)
                           for keys, won in store_records(ended, tree.path_keys(node)))
            m["ended"].extend(t.success for t in ended)
            if node.node_id == 0 and (not es or es[0].pruned):
                m["skipped_roots"] += 1  # Eq.1 truncated this task's root: skipped, counted, never an error
            if len(node_children(es)) >= 2:
                for p in rows:
                    keep[p] = True
                groups.append((tree.tree_id, node.node_id, rows))
            elif rows and not es[0].pruned:
                m["singleton"] += 1
        update, dropped = select_rows(batch, keep)
        if dropped:
            tq.kv_clear(keys=dropped, partition_id=batch.partition_id)
        m["groups"] = [(tree_id, node_id, [batch.keys[p] for p in rows], [batch.tags[p] for p in rows])
                       for tree_id, node_id, rows in groups]
        # every ended trajectory is recorded here, once: the tree applied each expansion exactly once; the failed
        # children of one expansion count once on the states above them (tree.store_records, DESIGN §2.6)
        if records:
            ray.get(self.store.record_trajectories.remote([k for k, _ in records], [w for _, w in records]))
        ray.get(self.store.commit.remote())
        self.round += 1
        hashes = key_hash(sorted(m.pop("states"))).tolist()
        m["new_states"] = sum(1 for h in hashes if h not in self.unique_states)
        self.unique_states.update(hashes)
        m["state_hashes"] = hashes
        return update, m

    def _retire(self, acc: dict[str, list]) -> list[TaskTree]:
        done = self.frontiers.retire()
        for tree in done:
            acc["tree_solved"].append((tree.task.task_type, float(tree.solved)))
            acc["tree_trajectories"].append(len(tree.trajectories))
            acc["tree_env_steps"].append(tree.env_steps)
            acc["tree_states"].append(len(tree.state_keys()))
            for traj in tree.trajectories:
                acc["traj_len"].append(traj.length)
                acc["traj_end"].append(traj.end)
            self.counters["trees_finished"] += 1
            self.counters["trees_solved"] += int(tree.solved)
        return done
