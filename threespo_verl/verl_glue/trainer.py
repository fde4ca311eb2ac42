"""The v1 trainer mode ``threespo`` (``trainer.v1.trainer_mode=threespo``): verl's sync PPO trainer driving 3SPO's
expansion rounds, and GRPO/GiGPO's episodes, through the same agent loop, environments and metrics.

What it changes in ``PPOTrainerSync`` (every other stage, from old log-probs to the actor update and the weight sync,
is verl's own):

* ``step`` (``algorithm.name=3spo``): keeps one search tree per task in flight (``rollout/tree.py``: ranked
  best-first backtracking DFS, per-task env-step budget, trajectory cap), refilled from verl's dataloader as trees
  finish. Each *round* sends one node-expansion request per tree through verl's ``AgentLoopManagerTQ``, waits for
  exactly those groups in the replay buffer (``RoundReplayBuffer.collect``: a pruned node's group holds one marker
  row, cleared), feeds the children back into the trees, records the trajectories the trees ended (once each, under
  the store keys of ``state_scope``) and commits the state store (scores of the next round see this round's
  trajectories, never earlier). Every sampled reply is a row; a node whose replies all chose the same action (or
  n = 1) is followed but gives no update row (its group advantage would be 0). ``update_mode=post_step`` updates
  after every round that yields at least ``min_update_rows`` rows; ``post_trajectory`` keeps expanding until every
  tree of the batch is finished, then updates once. The collected rows then run through verl's ``_step_once``
  unchanged (the buffer hands them over as the "sample").
* GRPO / GiGPO: verl's own prompt flow, ``rollout.n`` episode sessions per task.
* PPO / SPA-PPO (``algorithm=ppo | spa_ppo``): the same flow, one *trajectory row* per episode (observation turns
  masked, ``rollout/trajectory.py``); each step's reward at the closing token of its action turn, so verl's critic
  (``_compute_values``, ``_update_critic``) and its ``gae`` estimator run unchanged; ``check_trajectory_config``
  checks the row's token budget up front.
* ``_compute_advantage``: each row's reward is ``extra_fields["step_reward"]`` at its last response token (verl
  copies the last output's ``reward_score`` onto the other outputs of a session); the per-row metadata reaches the
  ``3spo``/``gigpo`` estimators through ``row_meta.row_metadata``; padding rows (``is_padding``) join no group.
* ``_balance_batch`` / ``_get_required_batch_multiple`` / ``_update_actor`` / ``_update_critic``: mini-batches of
  at most ``algorithm.mini_batch_rows`` rows for every algorithm (DESIGN §2.8): an update of R rows takes
  K = ceil(R / mini_batch_rows) optimizer steps (x ``actor.ppo_epochs``), its rows split evenly into K mini-batches
  of whole micro-batches (``minibatch_plan``), the critic's the same K x b; ``actor/optimizer_steps`` and
  ``actor/optimizer_steps_per_env_step`` are logged.
* checkpoints: ``threespo_state.json`` (frontiers, task queue, round, counters) and ``state_store.npz`` are written
  into verl's ``global_step_N`` folder *before* verl writes its tracker file, and read back on resume; the metrics
  JSONL is cut back to the resumed step, so a killed run resumes exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import transfer_queue as tq
from omegaconf import open_dict
from tensordict import TensorDict
from transfer_queue import KVBatchMeta
from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils import tensordict_utils as tu
from verl.utils.checkpoint.checkpoint_manager import find_latest_ckpt_path
from verl.workers.utils.padding import response_to_nested

from threespo_verl.envs.base import Task
from threespo_verl.rollout.expand import ScoreParams, rescore_rows
from threespo_verl.rollout.trajectory import TRAJECTORY_ALGOS, place_turn_rewards
from threespo_verl.rollout.tree import ChildOutcome, Frontiers, TaskTree, Trajectory
from threespo_verl.store.state_store import key_hash
from threespo_verl.verl_glue import metrics_log
from threespo_verl.verl_glue import row_meta as rm
from threespo_verl.verl_glue.dataset import AGENT_NAME, REQUEST_KEY

logger = logging.getLogger("threespo_verl.trainer")

TRAINER_MODE = "threespo"
STATE_FILE = "threespo_state.json"
STORE_FILE = "state_store.npz"
METRICS_FILE = "metrics.jsonl"
#: a node whose expansion raised this many times is pruned (logged), so one broken task cannot stall training
MAX_NODE_FAILURES = 3
#: fault injection for tests/e2e/test_learning.py only, which proves that the learning test fails when the learning
#: signal breaks: ``flip_advantage`` negates every advantage, ``reward_off_by_one`` puts each step reward one token
#: past the response (where the response mask drops it). Never set in a real run (the trainer warns loudly).
MUTATION_ENV = "THREESPO_TEST_MUTATION"
MUTATIONS = ("flip_advantage", "reward_off_by_one")


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


def new_round_metrics() -> dict[str, Any]:
    return {"n_hist": [], "pruned": 0, "expanded": 0, "singleton": 0, "failed": 0, "env_steps": 0, "llm_calls": 0,
            "replayed": 0, "prompt_truncated": 0, "r_novel": [], "r_score_diff": [], "r_success": [], "r_penalty": [],
            "reward": [], "invalid": [], "states": set(), "ended": []}


def node_children(es: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The distinct children of one expansion from its rows (one row per sampled reply; replies of the same action
    share ``branch``): the first row of each branch, in branch order."""
    first: dict[int, dict[str, Any]] = {}
    for e in es:
        first.setdefault(int(e["branch"]), e)
    return [first[b] for b in sorted(first)]


def apply_node_rows(tree: TaskTree, node, es: list[dict[str, Any]], m: dict[str, Any]) -> list[Trajectory]:
    """Feed one node's rows (their ``extra_fields``, in output order) back into its tree, count them in ``m`` and
    return the trajectories the tree ended (to be recorded in the store exactly once). No rows means the agent loop
    pruned the node (n(s) = 0): its one marker row (``pruned``) carries the node's state."""
    if not es or es[0]["pruned"]:
        traj = tree.prune(node.node_id, *((es[0]["state_key"], es[0]["parent_obs"]) if es else ()))
        m["pruned"] += 1
        m["n_hist"].append(0)
        return [traj]
    e0 = es[0]
    children = node_children(es)
    ended = tree.expand(node.node_id, e0["state_key"], e0["parent_obs"], [
        ChildOutcome(action=e["action"], action_text=e["action_text"], state_key=e["child_state_key"],
                     obs_text=e["child_obs"], reward=float(e["step_reward"]), done=bool(e["done"]),
                     won=bool(e["won"])) for e in children])
    m["expanded"] += 1
    m["n_hist"].append(int(e0["n_branches"]))
    m["env_steps"] += len(children)
    m["llm_calls"] += int(e0["n_branches"])
    m["replayed"] += int(e0["replayed_steps"])
    m["prompt_truncated"] += int(e0["prompt_truncated"] > 0)
    m["states"].add(e0["state_key"])
    for e in es:  # per row (sampled reply): what the update trains on
        m["states"].add(e["child_state_key"])
        for k in ("r_novel", "r_score_diff", "r_success", "r_penalty"):
            m[k].append(float(e[k]))
        m["reward"].append(float(e["step_reward"]))
        m["invalid"].append(0.0 if e["valid_action"] else 1.0)
    return ended


def episode_returns_on_final_rows(extras: list[dict[str, Any]], padding: list[bool]) -> list[float]:
    """Per row: the episode's return (sum of its rows' step rewards) on the episode's final row (highest step index
    of its ``traj_id``), 0 on its other rows and on padding rows."""
    total: dict[str, float] = defaultdict(float)
    final: dict[str, tuple[int, int]] = {}
    for i, (e, pad) in enumerate(zip(extras, padding)):
        if pad:
            continue
        total[e["traj_id"]] += float(e["step_reward"])
        if e["traj_id"] not in final or final[e["traj_id"]][0] < int(e["step_index"]):
            final[e["traj_id"]] = (int(e["step_index"]), i)
    out = [0.0] * len(extras)
    for traj, (_step, i) in final.items():
        out[i] = total[traj]
    return out


def minibatch_plan(rows: int, rows_per_step: int, unit: int = 1) -> tuple[int, int]:
    """(K, b): an update of ``rows`` real rows takes K = ceil(rows / rows_per_step) optimizer steps over mini-batches
    of b rows, b = ceil(rows / K) rounded up to a multiple of ``unit`` (dp x micro-batch x rollout.n); the batch is
    padded to K x b rows (padding rows carry no loss). ``rows_per_step`` is ``algorithm.mini_batch_rows``; when
    ``unit`` exceeds it, b = unit (a mini-batch cannot be smaller than one micro-batch per rank).

    >>> minibatch_plan(600, 256), minibatch_plan(2, 256), minibatch_plan(256, 256), minibatch_plan(5, 256, 4)
    ((3, 200), (1, 2), (1, 256), (1, 8))
    """
    if rows_per_step < 1 or unit < 1:
        raise ValueError(f"mini_batch_rows and the batch unit must be >= 1, got {rows_per_step}, {unit}")
    rows = max(int(rows), 1)
    k = -(-rows // int(rows_per_step))
    b = -(-rows // k)
    b = -(-b // unit) * unit
    return k, b


def _concat(batches: list[KVBatchMeta], partition_id: str = "train") -> KVBatchMeta:
    keys = [k for b in batches for k in b.keys]
    tags = [t for b in batches for t in b.tags]
    return KVBatchMeta(partition_id=partition_id, keys=keys, tags=tags)


def _select(batch: KVBatchMeta, keep: list[bool]) -> tuple[KVBatchMeta, list[str]]:
    kept = KVBatchMeta(partition_id=batch.partition_id, keys=[k for k, m in zip(batch.keys, keep) if m],
                       tags=[t for t, m in zip(batch.tags, keep) if m])
    return kept, [k for k, m in zip(batch.keys, keep) if not m]


def _extra_fields(batch: KVBatchMeta) -> list[dict[str, Any]]:
    if not len(batch):
        return []
    data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["extra_fields"])
    return [getattr(e, "data", e) for e in data.pop("extra_fields").tolist()]


@register_trainer(TRAINER_MODE)
class ThreeSPOTrainer(PPOTrainerSync):
    """See the module docstring."""

    def __init__(self, config) -> None:
        super().__init__(config)
        # verl's base class reads trainer_mode != "sync" as "an async mode"; this trainer has sync semantics
        self.trainer_mode = "sync"
        self.algo = str(config.algorithm.get("name", "3spo"))
        self.tcfg = config.algorithm.threespo
        self.params = ScoreParams.from_config(self.tcfg, config.env.get("invalid_action_penalty", 0.1))
        self.env_cfg = config.env
        budget = self.tcfg.get("env_step_budget", None) or self.params.g_max * int(self.env_cfg.max_steps)
        self.frontiers = Frontiers(int(budget), int(self.tcfg.max_trajectories_per_task))
        self.task_queue: list[Task] = []
        self.round = 0
        self.counters: Counter = Counter()
        self.unique_states: set[int] = set()
        self.node_failures: Counter = Counter()
        self.mutation = os.environ.get(MUTATION_ENV) or None
        if self.mutation is not None:
            if self.mutation not in MUTATIONS:
                raise ValueError(f"{MUTATION_ENV}={self.mutation!r}; valid: {MUTATIONS} (tests only)")
            logger.warning("%s=%s: the learning signal is broken on purpose (a test of the learning test)",
                           MUTATION_ENV, self.mutation)
        self.mini_batch_rows = int(config.algorithm.mini_batch_rows)
        if self.mini_batch_rows < 1:
            raise ValueError(f"algorithm.mini_batch_rows must be >= 1, got {self.mini_batch_rows}")
        self._mb_plan: tuple[int, int] | None = None  # (optimizer steps, rows per mini-batch) of the current update
        self.metrics_path = os.path.join(config.trainer.default_local_dir, METRICS_FILE)
        self.store = None
        if self.algo == "3spo":
            if self.parameter_sync_step != 1:
                raise ValueError("algorithm=3spo updates once per expansion round; set "
                                 "trainer.v1.threespo.parameter_sync_step=1")
            from threespo_verl.store.actor import get_or_create_store

            self.store = get_or_create_store(self.tcfg.get("store_name", None) or "threespo_state_store")
            if (self.tcfg.get("merge_identical_states", False) and int(self.tcfg.get("min_update_rows", 1) or 1) <= 1
                    and self.tcfg.get("update_mode", "post_step") == "post_step"):
                logger.warning("algorithm.threespo.merge_identical_states=true has nothing to merge with one round per "
                               "update (one node per task); use update_mode=post_trajectory or min_update_rows > 1")
        self.progress_worker = None
        if self.algo in ("spa", "spa_ppo"):
            self.progress_worker = create_progress_worker(config.algorithm.get("spa", {}))
        if self.algo in TRAJECTORY_ALGOS:
            check_trajectory_config(config)

    # ---- verl hooks: replay buffer -------------------------------------------------------------------------------
    def _build_replay_buffer(self) -> ReplayBuffer:
        s = self.config.trainer.v1.sampler
        return RoundReplayBuffer(trainer_mode="sync", trainer_config={}, max_off_policy_threshold=None,
                                 max_off_policy_strategy=s.get("max_off_policy_strategy", "drop"),
                                 sampler_kwargs=s.get("sampler_kwargs", {}), refill_fn=self._add_prompts_to_generate,
                                 train_batch_size=self.config.data.train_batch_size,
                                 gen_batch_size=self.config.data.get("gen_batch_size", None)
                                 or self.config.data.train_batch_size)

    # ---- one training step ---------------------------------------------------------------------------------------
    def step(self, metrics: dict, timing_raw: dict) -> KVBatchMeta:
        if self.algo != "3spo":
            return super().step(metrics, timing_raw)
        from verl.utils.debug import marked_timer

        with marked_timer("explore", timing_raw, color="red"):
            batch, explore_metrics = self.explore()
        metrics.update(explore_metrics)
        self.replay_buffer.stage(batch)
        self.local_trigger_step = 0
        return self._step_once(metrics, timing_raw, sample_batch_size=0)

    def explore(self) -> tuple[KVBatchMeta, dict[str, float]]:
        """Run expansion rounds until the update condition holds (``update_mode``, ``min_update_rows``); return the
        update rows (every group of >= 2 children) and the rounds' metrics."""
        min_rows = int(self.tcfg.get("min_update_rows", 1) or 1)
        post_trajectory = self.tcfg.get("update_mode", "post_step") == "post_trajectory"
        max_rounds = int(self.tcfg.get("max_rounds_per_update", 0) or 0) or 10 * self.frontiers.budget
        kept: list[KVBatchMeta] = []
        acc: dict[str, list] = defaultdict(list)
        n_rows, rounds = 0, 0
        batch_trees: set[str] | None = None
        while True:
            self._refill()
            if batch_trees is None:
                batch_trees = {t.tree_id for t in self.frontiers.trees.values()}
            reqs = self.frontiers.requests()
            update, rm_ = self.run_round(reqs)
            for k, v in rm_.items():
                acc[k].append(v)
            kept.append(update)
            n_rows += len(update)
            rounds += 1
            self._retire(acc)
            if post_trajectory:
                live = {t.tree_id for t in self.frontiers.trees.values()}
                done = not (batch_trees & live)
            else:
                done = True
            if done and n_rows >= min_rows:
                break
            if done and post_trajectory:
                batch_trees = None  # the batch's trees are done but gave too few rows: take the next batch
            if rounds >= max_rounds:
                raise RuntimeError(f"3SPO: {rounds} expansion rounds produced only {n_rows} update rows (< "
                                   f"min_update_rows={min_rows}); every group was a singleton or pruned. Lower "
                                   f"algorithm.threespo.min_update_rows or check the policy's replies")
        batch = _concat(kept)
        metrics = self._explore_metrics(acc, rounds, n_rows)
        return batch, metrics

    # ---- rounds --------------------------------------------------------------------------------------------------
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
            uid = uuid.uuid4().hex  # no "_": verl splits keys on it
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
            "__rollout_n__": np.array([1] * n, dtype=object),
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
        extras = _extra_fields(batch)
        by_uid: dict[str, list[tuple[int, int]]] = defaultdict(list)  # uid -> [(output index, row position)]
        for pos, key in enumerate(batch.keys):
            uid, _session, idx = key.rsplit("_", 2)
            by_uid[uid].append((int(idx), pos))
        keep = [False] * len(batch)
        m = new_round_metrics()
        ended: list[Trajectory] = []
        for (tree, node), uid in zip(reqs, uids):
            rows = [pos for _, pos in sorted(by_uid.get(uid, []))]
            if uid in failed and not rows:
                self.node_failures[(tree.tree_id, node.node_id)] += 1
                m["failed"] += 1
                if self.node_failures[(tree.tree_id, node.node_id)] >= MAX_NODE_FAILURES:
                    logger.warning("3SPO: expanding node %s of %s failed %d times; pruning it", node.node_id,
                                   tree.task_id, MAX_NODE_FAILURES)
                    ended.append(tree.prune(node.node_id))
                    m["pruned_after_failures"] = m.get("pruned_after_failures", 0) + 1
                continue
            es = [extras[p] for p in rows]
            ended.extend(apply_node_rows(tree, node, es, m))
            if len(node_children(es)) >= 2:
                for p in rows:
                    keep[p] = True
            elif rows and not es[0]["pruned"]:
                m["singleton"] += 1
        update, dropped = _select(batch, keep)
        if dropped:
            tq.kv_clear(keys=dropped, partition_id=batch.partition_id)
        # every ended trajectory is recorded here, once: the tree applied each expansion exactly once
        if ended:
            ray.get(self.store.record_trajectories.remote(
                [self.params.store_keys(t.task_id, t.path_keys) for t in ended], [t.success for t in ended]))
        m["ended"] = [t.success for t in ended]
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

    def _explore_metrics(self, acc: dict[str, list], rounds: int, n_rows: int) -> dict[str, float]:
        rounds_m = [r for r in acc.get("n_hist", [])]
        n_hist = [n for r in rounds_m for n in r]
        flat = {k: [x for r in acc.get(k, []) for x in r] for k in ("r_novel", "r_score_diff", "r_success",
                                                                      "r_penalty", "reward", "invalid")}
        nodes = sum(acc.get("expanded", [])) + sum(acc.get("pruned", []))
        env_steps = sum(acc.get("env_steps", []))
        self.counters["env_steps"] += env_steps
        self.counters["llm_calls"] += sum(acc.get("llm_calls", []))
        self.counters["replayed_steps"] += sum(acc.get("replayed", []))
        self.counters["rounds"] += rounds
        out: dict[str, float] = {
            "explore/rounds": rounds,
            "explore/update_rows": n_rows,
            "explore/nodes": nodes,
            "explore/pruned_rate": sum(acc.get("pruned", [])) / max(1, nodes),
            "explore/singleton_group_rate": sum(acc.get("singleton", [])) / max(1, sum(acc.get("expanded", []))),
            "explore/failed_nodes": sum(acc.get("failed", [])),
            "explore/prompt_truncated_nodes": sum(acc.get("prompt_truncated", [])),
            "explore/env_steps": env_steps,
            "explore/llm_calls": sum(acc.get("llm_calls", [])),
            "explore/replayed_env_steps": sum(acc.get("replayed", [])),
            "explore/replayed_fraction": sum(acc.get("replayed", [])) / max(1, env_steps),
            "explore/unique_states": len({h for r in acc.get("state_hashes", []) for h in r}),
            "explore/new_states": sum(acc.get("new_states", [])),
            "explore/cumulative_unique_states": len(self.unique_states),
            "explore/cumulative_env_steps": self.counters["env_steps"],
            "explore/cumulative_llm_calls": self.counters["llm_calls"],
            "explore/trees_finished": self.counters["trees_finished"],
        }
        for n in range(self.params.g_max + 1):
            out[f"explore/n_hist/{n}"] = sum(1 for x in n_hist if x == n)
        if n_hist:
            out["explore/n_mean"] = float(np.mean(n_hist))
        for k, v in flat.items():
            if v:
                out[f"explore/reward/{k}_mean"] = float(np.mean(v))
        solved = acc.get("tree_solved", [])
        if solved:
            out["explore/success"] = float(np.mean([s for _, s in solved]))
            per_type = defaultdict(list)
            for ttype, s in solved:
                per_type[ttype].append(s)
            for ttype, v in sorted(per_type.items()):
                out[f"explore/success/{ttype}"] = float(np.mean(v))
            out["explore/tree_trajectories_mean"] = float(np.mean(acc["tree_trajectories"]))
            out["explore/tree_states_mean"] = float(np.mean(acc["tree_states"]))
        ended = [x for r in acc.get("ended", []) for x in r]
        if ended:  # the comparable training success of every algorithm (DESIGN §2.8): finished trajectories
            out["train/episode_success"] = float(np.mean(ended))
            out["train/finished_trajectories"] = len(ended)
        if acc.get("traj_len"):
            out["explore/episode_length_mean"] = float(np.mean(acc["traj_len"]))
            ends = Counter(acc["traj_end"])
            for end in ("won", "failed", "pruned"):
                out[f"explore/trajectory_end/{end}"] = ends.get(end, 0)
        stats = self._store_stats()
        if stats:
            out["explore/store_states"] = stats["states"]
            out["explore/store_t"] = stats["t"]
        return out

    def _store_stats(self) -> dict[str, int] | None:
        if self.store is None:
            return None
        import ray

        return ray.get(self.store.stats.remote())

    # ---- advantage -----------------------------------------------------------------------------------------------
    def _row_rewards_to_tq(self, batch: KVBatchMeta, extras: list[dict[str, Any]]) -> None:
        """rm_scores of every row := its own step reward at the last response token (padding rows keep 0); a
        trajectory row (``algorithm=ppo | spa_ppo``) gets ``turn_rewards[i]`` at ``turn_ends[i]``, the closing token
        of each action turn, and 0 on every other token (observation tokens included). verl's GRPO reads only each
        session's final row: for it that row carries the episode's return (the sum of its step rewards: the outcome
        minus the invalid-action penalties, DESIGN §2.8) and the session's other rows 0."""
        rewards = [float(e.get("step_reward", 0.0)) for e in extras]
        if self.algo == "3spo" and self.tcfg.get("reward_stats", "round") == "update":
            rewards = self._rescored(batch, extras, rewards)
        if str(self.config.algorithm.adv_estimator) == "grpo":
            rewards = episode_returns_on_final_rows(extras, [t.get("is_padding", False) for t in batch.tags])
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["response_mask"])
        mask = data["response_mask"]
        lens = mask.offsets().diff().tolist()
        width = max(lens) if lens else 1
        scores = torch.zeros(len(batch), width, dtype=torch.float32)
        for i, (tag, e, n, r) in enumerate(zip(batch.tags, extras, lens, rewards)):
            if not tag.get("is_padding", False) and n > 0 and e.get("mode") == "trajectory":
                shift = int(self.mutation == "reward_off_by_one")
                ends = [(p + shift, r) for p, r in zip(e["turn_ends"], e["turn_rewards"]) if p + shift < n]
                scores[i, :n] = torch.tensor(place_turn_rewards(n, [p for p, _ in ends], [r for _, r in ends]))
            elif not tag.get("is_padding", False) and n > 0:
                pos = n if self.mutation == "reward_off_by_one" else n - 1
                if pos < width:
                    scores[i, pos] = r
        out = TensorDict({"rm_scores": response_to_nested(scores, mask)}, batch_size=len(batch))
        tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=out)

    def _rescored(self, batch: KVBatchMeta, extras: list[dict[str, Any]], rewards: list[float]) -> list[float]:
        """``reward_stats: update``: Eq.2 of every node row from the statistics committed now (``rescore_rows``); the
        round-time rewards stay in the rows' extra fields (explore/reward/*), the re-scored means go to
        ``explore/reward/update_*``."""
        import ray

        idx = [i for i, (t, e) in enumerate(zip(batch.tags, extras))
               if not t.get("is_padding", False) and e.get("mode") == "node" and not e.get("pruned", False)]

        def lookup(keys):
            (n_total, n_success), t = ray.get(self.store.lookup_with_t.remote(list(keys)))
            return n_total, n_success, t

        r = rescore_rows([extras[i] for i in idx], self.params, lookup)
        out = list(rewards)
        for j, i in enumerate(idx):
            out[i] = float(r.total[j])
        if idx:
            self._rescore_metrics = {"explore/reward/update_reward_mean": float(np.mean(r.total)),
                                     "explore/reward/update_r_score_diff_mean": float(np.mean(r.score_diff)),
                                     "explore/reward/update_r_novel_mean": float(np.mean(r.novelty))}
        return out

    def row_metadata(self, batch: KVBatchMeta, extras: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        """The per-row metadata of ``row_meta`` for this batch, aligned with ``batch.keys``."""
        pad = np.array([bool(t.get("is_padding", False)) for t in batch.tags])
        return {
            # trees scope 3SPO's node ids; episode rows are scoped by verl's uid (one submission of a task)
            rm.TASK_ID: np.array([e["tree_id"] for e in extras], dtype=object),
            rm.ENV_TASK_ID: np.array([e["task_id"] for e in extras], dtype=object),
            rm.TRAJ_ID: np.array([e["traj_id"] for e in extras], dtype=object),
            rm.STEP_INDEX: np.array([int(e["step_index"]) for e in extras], dtype=np.int64),
            rm.NODE_ID: np.array([int(e["node_id"]) for e in extras], dtype=np.int64),
            rm.PARENT_NODE_ID: np.array([int(e["parent_node_id"]) for e in extras], dtype=np.int64),
            rm.STATE_KEY: np.array([e["state_key"] for e in extras], dtype=object),
            rm.ROUND: np.array([int(e["round"]) for e in extras], dtype=np.int64),
            rm.IS_PAD: pad,
        }

    def _compute_advantage(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        extras = _extra_fields(batch)
        self._rescore_metrics: dict[str, float] = {}
        self._row_rewards_to_tq(batch, extras)
        metrics.update(self._rescore_metrics)
        with rm.row_metadata(self.row_metadata(batch, extras)):
            batch = super()._compute_advantage(batch, metrics)
        if self.mutation == "flip_advantage":
            adv = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["advantages"])
            flipped = TensorDict({"advantages": -adv["advantages"]}, batch_size=len(batch))
            tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=flipped)
        return batch

    # ---- mini-batches of a fixed number of rows, for every algorithm (DESIGN §2.8) -----------------------------
    def _batch_unit(self, dp_size: int) -> int:
        """Rows a mini-batch must be a multiple of: whole micro-batches on every dp rank for the actor update and the
        log-prob passes (with dynamic batch sizes micro-batches are cut by tokens and only dp counts), and whole
        ``rollout.n`` groups (verl multiplies the mini-batch size by rollout.n)."""
        arr = self.config.actor_rollout_ref

        def micro(node, key):
            if node.get("use_dynamic_bsz", False) or node.get("log_prob_use_dynamic_bsz", False):
                return 1
            return int(node.get(key, None) or 1)

        unit = math.lcm(dp_size * micro(arr.actor, "ppo_micro_batch_size_per_gpu"), int(arr.rollout.n))
        unit = math.lcm(unit, dp_size * micro(arr.rollout, "log_prob_micro_batch_size_per_gpu"))
        if self.use_reference_policy:
            unit = math.lcm(unit, dp_size * micro(arr.ref, "log_prob_micro_batch_size_per_gpu"))
        if self.use_critic:
            unit = math.lcm(unit, dp_size * micro(self.config.critic, "ppo_micro_batch_size_per_gpu"))
        return unit

    def _balance_batch(self, batch: KVBatchMeta, metrics, logging_prefix="global_seqlen", keep_minibatch=False):
        # the update's real row count decides its mini-batch plan (read by _get_required_batch_multiple below)
        self._update_rows = sum(not t.get("is_padding", False) for t in batch.tags)
        return super()._balance_batch(batch, metrics, logging_prefix=logging_prefix, keep_minibatch=keep_minibatch)

    def _get_required_batch_multiple(self, dp_size: int) -> int:
        """The batch is padded to K x b rows (``minibatch_plan``): K optimizer steps of b rows each."""
        rows = getattr(self, "_update_rows", None) or 1
        self._mb_plan = minibatch_plan(rows, self.mini_batch_rows, self._batch_unit(dp_size))
        k, b = self._mb_plan
        return k * b

    @contextlib.contextmanager
    def _planned_mini_batches(self, node, batch: KVBatchMeta) -> Iterator[tuple[int, int]]:
        """verl sizes mini-batches as ``node.ppo_mini_batch_size`` x rollout.n rows (node: the actor's or the
        critic's config); inside the block that is b of this update's plan (``minibatch_plan``), so the update takes
        K = len(batch) / b optimizer steps per epoch. Yields (K, b); the configured size is restored afterwards."""
        n = int(self.config.actor_rollout_ref.rollout.n)
        k, b = self._mb_plan or (1, len(batch))
        if k * b != len(batch):
            raise AssertionError(f"update batch of {len(batch)} rows does not match its plan {k} x {b}")
        saved = node.ppo_mini_batch_size
        with open_dict(self.config):
            node.ppo_mini_batch_size = b // n
        try:
            yield k, b
        finally:
            with open_dict(self.config):
                node.ppo_mini_batch_size = saved

    def _update_actor(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        actor = self.config.actor_rollout_ref.actor
        with self._planned_mini_batches(actor, batch) as (k, b):
            out = super()._update_actor(batch, metrics)
        steps = k * int(actor.ppo_epochs)
        self.counters["optimizer_steps"] += steps
        metrics["actor/optimizer_steps"] = steps
        metrics["actor/update_rows"] = len(batch)
        metrics["actor/mini_batch_rows"] = b
        metrics["actor/cumulative_optimizer_steps"] = self.counters["optimizer_steps"]
        return out

    def _update_critic(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        # the critic's mini-batches follow the actor's plan: the same b-row mini-batches, K optimizer steps per epoch
        critic = self.config.critic
        with self._planned_mini_batches(critic, batch) as (k, b):
            out = super()._update_critic(batch, metrics)
        metrics["critic/optimizer_steps"] = k * int(critic.ppo_epochs)
        metrics["critic/mini_batch_rows"] = b
        return out

    # ---- rollout probe: does the rollout engine serve the actor's current weights? -----------------------------
    def on_init_end(self):
        super().on_init_end()
        self._run_probe()

    def on_step_end(self):
        super().on_step_end()  # verl's weight sync into the rollout engine
        self._run_probe()

    def _run_probe(self) -> None:
        """With ``rollout_probe.enable``: the rollout engine's greedy reply to a fixed prompt right after each weight
        sync, logged as ``probe/logprob_sum`` (+ the first tokens): it moves exactly when the served weights do."""
        cfg = self.config.get("rollout_probe", None)
        if not cfg or not cfg.get("enable", False):
            return
        import asyncio

        messages = [{"role": "user", "content": str(cfg.get("prompt", "Say hello."))}]
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt_ids = self.tokenizer.encode(text, add_special_tokens=False)
        params = {"temperature": 0.0, "top_p": 1.0, "top_k": -1, "logprobs": True,
                  "max_tokens": int(cfg.get("max_tokens", 8))}
        out = asyncio.run(self.get_llm_client().generate(request_id=f"probe{self.global_steps}",
                                                        prompt_ids=prompt_ids, sampling_params=params))
        lp = list(out.log_probs or [])
        self._probe = {"probe/logprob_sum": float(sum(lp)), "probe/tokens": len(out.token_ids)}
        for i, tok in enumerate(out.token_ids[:4]):
            self._probe[f"probe/token_{i}"] = int(tok)
        metrics_log.append(os.path.join(os.path.dirname(self.metrics_path), "probe.jsonl"), self.global_steps,
                           self._probe, token_ids=list(map(int, out.token_ids)), logprobs=lp)

    # ---- metrics -------------------------------------------------------------------------------------------------
    def _val_metrics_update(self, data_sources, sample_uids, reward_extra_infos_dict, sample_turns,
                            expected_acc_counts=None) -> dict[str, float]:
        """verl's per-data-source validation metrics (data_source = ``<env>/<task type>``), plus the success rate
        over the whole panel and per task type under ``val-core/<env>/success[/<type>]``."""
        out = super()._val_metrics_update(data_sources, sample_uids, reward_extra_infos_dict, sample_turns,
                                          expected_acc_counts=expected_acc_counts)
        won = reward_extra_infos_dict.get("won", [])
        if won and len(won) == len(data_sources):
            env = str(self.env_cfg.name)
            per_type = defaultdict(list)
            for src, w in zip(data_sources, won):
                if w is not None:
                    per_type[str(src).split("/", 1)[-1]].append(float(w))
            allv = [w for v in per_type.values() for w in v]
            if allv:
                out[f"val-core/{env}/success"] = float(np.mean(allv))
                out[f"val-aux/{env}/episodes"] = len(allv)
            for ttype, v in sorted(per_type.items()):
                out[f"val-core/{env}/success/{ttype}"] = float(np.mean(v))
        return out

    def _validate(self, *args, **kwargs):
        out = super()._validate(*args, **kwargs)
        if self.global_steps == 0 and out:  # val_before_train of a fresh run: the step-0 point of metrics.jsonl
            metrics_log.append(self.metrics_path, 0, dict(out), algorithm=self.algo)
        return out

    def _compute_metrics(self, batch, metrics, timing_raw, global_steps, epoch):
        super()._compute_metrics(batch, metrics, timing_raw, global_steps, epoch)
        metrics.update(getattr(self, "_probe", {}))
        if self.algo != "3spo":
            metrics.update(self._episode_metrics(batch))
        env_steps = metrics.get("explore/env_steps", metrics.get("episode/env_steps", 0))
        if "actor/optimizer_steps" in metrics and env_steps:
            metrics["actor/optimizer_steps_per_env_step"] = metrics["actor/optimizer_steps"] / env_steps
        metrics["actor/cumulative_optimizer_steps"] = self.counters["optimizer_steps"]
        metrics_log.append(self.metrics_path, global_steps, metrics, algorithm=self.algo)

    def _episode_metrics(self, batch: KVBatchMeta) -> dict[str, float]:
        real = KVBatchMeta(partition_id=batch.partition_id,
                           keys=[k for k, t in zip(batch.keys, batch.tags) if not t.get("is_padding", False)],
                           tags=[t for t in batch.tags if not t.get("is_padding", False)])
        extras = _extra_fields(real)
        if not extras:
            return {}
        last: dict[str, dict] = {}
        states: set[str] = set()
        # a trajectory row (algorithm=ppo | spa_ppo) is a whole episode: its steps, states and invalid actions
        traj = [e for e in extras if e["mode"] == "trajectory"]
        steps = [e["step_index"] + 1 if e["mode"] == "trajectory" else 1 for e in extras]
        invalid = [e["invalid_steps"] if e["mode"] == "trajectory" else int(not e["valid_action"]) for e in extras]
        for e in extras:
            states.add(e["state_key"])
            states.add(e["child_state_key"])
            states.update(e["turn_states"])
            if e["done"]:
                last[e["traj_id"]] = e
        hashes = key_hash(sorted(states)).tolist()
        new = sum(1 for h in hashes if h not in self.unique_states)
        self.unique_states.update(hashes)
        self.counters["env_steps"] += sum(steps)
        self.counters["llm_calls"] += sum(steps)
        out = {"episode/env_steps": sum(steps), "episode/unique_states": len(states), "episode/new_states": new,
               "explore/cumulative_unique_states": len(self.unique_states),
               "explore/cumulative_env_steps": self.counters["env_steps"],
               "explore/cumulative_llm_calls": self.counters["llm_calls"],
               "episode/invalid_rate": sum(invalid) / max(1, sum(steps))}
        if self.algo in ("spa", "spa_ppo"):  # SPA's reward components per step: alpha_p c_t and the guarded beta g_t
            # (a trajectory row holds its episode's sums; step rows one step each)
            out["reward/progress_mean"] = sum(e["r_progress"] for e in extras) / max(1, sum(steps))
            out["reward/grounding_mean"] = sum(e["r_grounding"] for e in extras) / max(1, sum(steps))
            out["reward/step_mean"] = sum(e["step_reward"] for e in extras) / max(1, sum(steps))
        if traj:  # turns dropped to fit the context budget (rollout/trajectory.py), never silently
            out["trajectory/turns_dropped"] = sum(int(e["turns_dropped"]) for e in traj)
            out["trajectory/truncated_rows"] = sum(int(e["turns_dropped"]) > 0 for e in traj)
            out["trajectory/rows"] = len(traj)
        if last:
            out["episode/success"] = float(np.mean([e["won"] for e in last.values()]))
            out["train/episode_success"] = out["episode/success"]  # comparable with 3SPO's (DESIGN §2.8)
            out["train/finished_trajectories"] = len(last)
            out["episode/length_mean"] = float(np.mean([e["step_index"] + 1 for e in last.values()]))
            per_type = defaultdict(list)
            for e in last.values():
                per_type[e["task_type"]].append(float(e["won"]))
            for ttype, v in sorted(per_type.items()):
                out[f"episode/success/{ttype}"] = float(np.mean(v))
        return out

    # ---- checkpoints ---------------------------------------------------------------------------------------------
    def threespo_state(self) -> dict[str, Any]:
        return {
            "version": 1, "algorithm": self.algo, "round": self.round, "global_steps": self.global_steps,
            "frontiers": self.frontiers.state_dict(),
            "task_queue": [dataclasses.asdict(t) for t in self.task_queue],
            "counters": dict(self.counters), "unique_states": sorted(self.unique_states),
            "node_failures": [[list(k), v] for k, v in self.node_failures.items()],
        }

    def load_threespo_state(self, d: dict[str, Any]) -> None:
        self.round = int(d["round"])
        self.frontiers = Frontiers.from_state_dict(d["frontiers"])
        self.task_queue = [Task(**t) for t in d["task_queue"]]
        self.counters = Counter(d["counters"])
        self.unique_states = set(d["unique_states"])
        self.node_failures = Counter({tuple(k): v for k, v in d["node_failures"]})

    def save_threespo_state(self, folder: str) -> None:
        """Write this trainer's state (and the store's committed snapshot) atomically into ``folder``."""
        import ray

        os.makedirs(folder, exist_ok=True)
        if self.store is not None:
            ray.get(self.store.save.remote(os.path.join(folder, STORE_FILE)))
        tmp = os.path.join(folder, f".{STATE_FILE}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.threespo_state(), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(folder, STATE_FILE))

    def restore_threespo_state(self, folder: str) -> None:
        import ray

        path = os.path.join(folder, STATE_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(f"resuming from {folder}, but it has no {STATE_FILE}: it was not written by the "
                                    f"threespo trainer mode (set trainer.resume_mode=disable to start afresh)")
        with open(path, encoding="utf-8") as f:
            self.load_threespo_state(json.load(f))
        store_path = os.path.join(folder, STORE_FILE)
        if self.store is not None and os.path.exists(store_path):
            ray.get(self.store.load.remote(store_path))
        metrics_log.truncate(os.path.join(os.path.dirname(self.metrics_path), "probe.jsonl"), self.global_steps)
        dropped = metrics_log.truncate(self.metrics_path, self.global_steps)
        if dropped:
            logger.info("resume: dropped %d metric lines of steps after %d from %s", dropped, self.global_steps,
                        self.metrics_path)

    def _global_step_folder(self) -> str:
        return os.path.join(self.config.trainer.default_local_dir, f"global_step_{self.global_steps}")

    def _save_checkpoint(self):
        # written before verl's own files and its tracker: a kill can never leave the tracker pointing at a folder
        # without this state
        self.save_threespo_state(self._global_step_folder())
        return super()._save_checkpoint()

    def _load_checkpoint(self):
        super()._load_checkpoint()
        if self.global_steps <= 0:
            return
        mode = self.config.trainer.resume_mode
        if mode == "resume_path":
            folder = os.path.abspath(self.config.trainer.resume_from_path)
        else:
            folder = find_latest_ckpt_path(os.path.abspath(self.config.trainer.default_local_dir))
        self.restore_threespo_state(folder)



def check_trajectory_config(config) -> int:
    """Up-front checks of trajectory rows (``algorithm=ppo | spa_ppo``, one row per episode; returns the row's token
    budget L = ``rollout.prompt_length + rollout.response_length``). Each reply is capped at
    m = ``env.max_tokens_per_step`` (required, m <= ``rollout.response_length``); the agent loop keeps every row
    within L by dropping the oldest turns before a reply would not fit (``trajectory/turns_dropped``). L must fit
    the model's context (``rollout.max_model_len``, else ``max_position_embeddings``) and, with dynamic batch sizes,
    every ``*max_token_len_per_gpu`` that a whole row has to fit in."""
    rollout = config.actor_rollout_ref.rollout
    budget = int(rollout.prompt_length) + int(rollout.response_length)
    reply_cap = config.env.get("max_tokens_per_step", None)
    problems = []
    if not reply_cap:
        problems.append("env.max_tokens_per_step is null: set the cap of one reply (data.max_response_length is the "
                        "budget of the whole row after its first prompt)")
    elif int(reply_cap) > int(rollout.response_length):
        problems.append(f"env.max_tokens_per_step={reply_cap} exceeds data.max_response_length="
                        f"{rollout.response_length}, the budget of everything after the first prompt")
    limit = rollout.get("max_model_len", None)
    if limit is None:
        try:
            from transformers import AutoConfig

            hf = AutoConfig.from_pretrained(str(config.actor_rollout_ref.model.path))
            limit = getattr(hf, "max_position_embeddings", None)
        except (OSError, ValueError) as e:
            logger.warning("trajectory rows: could not read the model's context length (%s)", e)
    if limit is not None and budget > int(limit):
        problems.append(f"a row of data.max_prompt_length + data.max_response_length = {budget} tokens does not fit "
                        f"the model's context of {limit} tokens")
    arr = config.actor_rollout_ref
    for name, node, dyn, key in (
            ("actor_rollout_ref.actor", arr.actor, "use_dynamic_bsz", "ppo_max_token_len_per_gpu"),
            ("actor_rollout_ref.rollout", arr.rollout, "log_prob_use_dynamic_bsz", "log_prob_max_token_len_per_gpu"),
            ("actor_rollout_ref.ref", arr.ref, "log_prob_use_dynamic_bsz", "log_prob_max_token_len_per_gpu"),
            ("critic", config.critic, "use_dynamic_bsz", "ppo_max_token_len_per_gpu")):
        if node.get(dyn, False) and node.get(key, None) is not None and int(node.get(key)) < budget:
            problems.append(f"{name}.{key}={node.get(key)} is smaller than one row ({budget} tokens)")
    if problems:
        raise ValueError(f"algorithm={config.algorithm.name} (one row per episode): " + "; ".join(problems))
    return budget


def create_progress_worker(spa_cfg):
    """SPA's estimator worker (``algorithm.spa.estimator_path``), with the command that makes one if it is missing."""
    from threespo_verl.verl_glue.spa_worker import get_or_create_progress_worker

    path = spa_cfg.get("estimator_path", None)
    if not path or not os.path.isdir(str(path)):
        raise FileNotFoundError(
            f"algorithm=spa needs a trained progress estimator: algorithm.spa.estimator_path={path!r} is not a folder. "
            "Make one with  threespo-verl spa collect --env ENV --model MODEL --out traj.jsonl  then  "
            "threespo-verl spa train-estimator --data traj.jsonl --model MODEL --out PE_DIR")
    return get_or_create_progress_worker(spa_cfg.get("worker_name", None) or "threespo_spa_progress", str(path),
                                         spa_cfg.get("max_length", None),
                                         num_gpus=spa_cfg.get("estimator_num_gpus", 0) or 0)
