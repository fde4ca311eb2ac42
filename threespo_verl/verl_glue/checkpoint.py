"""Checkpoint and resume of the trainer's own state: ``threespo_state.json`` (frontiers, task queue, round,
counters, the groups waiting for their update, the env-step schedule), ``state_store.npz`` and ``pending_rows.pt``
(the waiting groups' rows: TransferQueue lives in memory) are written into verl's ``global_step_N`` folder *before*
verl writes its tracker file, and read back on resume; the metrics JSONL is cut back to the resumed step, so a killed
run resumes exactly."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections import Counter
from typing import Any

import transfer_queue as tq
from verl.utils.checkpoint.checkpoint_manager import find_latest_ckpt_path

from threespo_verl.envs.base import Task
from threespo_verl.rollout.release import GroupLedger
from threespo_verl.rollout.tree import Frontiers
from threespo_verl.verl_glue import metrics_log
from threespo_verl.verl_glue.schedule import EnvStepSchedule
from threespo_verl.verl_glue.verl_compat import global_step_folder

logger = logging.getLogger("threespo_verl.trainer")

STATE_FILE = "threespo_state.json"
STORE_FILE = "state_store.npz"
PENDING_FILE = "pending_rows.pt"


class CheckpointMixin:
    """Save / restore of the trainer's state (mixed into ``ThreeSPOTrainer``)."""

    def threespo_state(self) -> dict[str, Any]:
        return {
            "version": 1, "algorithm": self.algo, "round": self.round, "global_steps": self.global_steps,
            "frontiers": self.frontiers.state_dict(),
            "task_queue": [dataclasses.asdict(t) for t in self.task_queue],
            "counters": dict(self.counters), "unique_states": sorted(self.unique_states),
            "node_failures": [[list(k), v] for k, v in self.node_failures.items()],
            "ledger": self.ledger.state_dict(), "schedule": self.schedule.state_dict(),
        }

    def load_threespo_state(self, d: dict[str, Any]) -> None:
        self.round = int(d["round"])
        self.frontiers = Frontiers.from_state_dict(d["frontiers"])
        self.task_queue = [Task(**t) for t in d["task_queue"]]
        self.counters = Counter(d["counters"])
        self.unique_states = set(d["unique_states"])
        self.node_failures = Counter({tuple(k): v for k, v in d["node_failures"]})
        self.ledger = GroupLedger.from_state_dict(d["ledger"])
        self.schedule = EnvStepSchedule.from_state_dict(d["schedule"])

    def save_threespo_state(self, folder: str) -> None:
        """Write this trainer's state (and the store's committed snapshot) atomically into ``folder``."""
        import ray

        os.makedirs(folder, exist_ok=True)
        if self.store is not None:
            ray.get(self.store.save.remote(os.path.join(folder, STORE_FILE)))
        save_pending_rows(self.ledger, os.path.join(folder, PENDING_FILE))
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
        restore_pending_rows(self.ledger, os.path.join(folder, PENDING_FILE))
        store_path = os.path.join(folder, STORE_FILE)
        if self.store is not None and os.path.exists(store_path):
            ray.get(self.store.load.remote(store_path))
        metrics_log.truncate(os.path.join(os.path.dirname(self.metrics_path), "probe.jsonl"), self.global_steps)
        dropped = metrics_log.truncate(self.metrics_path, self.global_steps)
        if dropped:
            logger.info("resume: dropped %d metric lines of steps after %d from %s", dropped, self.global_steps,
                        self.metrics_path)

    def _global_step_folder(self) -> str:
        return global_step_folder(self.config.trainer.default_local_dir, self.global_steps)

    def _resume_folder(self) -> str:
        """The checkpoint folder verl resumed from (``trainer.resume_mode``)."""
        mode = self.config.trainer.resume_mode
        if mode == "resume_path":
            return os.path.abspath(self.config.trainer.resume_from_path)
        return find_latest_ckpt_path(os.path.abspath(self.config.trainer.default_local_dir))


def save_pending_rows(ledger: GroupLedger, path: str, partition_id: str = "train") -> int:
    """Every field of the rows of the ledger's waiting groups (TransferQueue is in memory), written atomically to
    ``path``; nothing is written when no group waits. Returns the number of rows."""
    import torch

    keys = [k for g in ledger.groups for k in g.keys]
    if not keys:
        return 0
    data = tq.kv_batch_get(keys=keys, partition_id=partition_id)
    tmp = f"{path}.tmp"
    torch.save({"keys": keys, "fields": data}, tmp)
    os.replace(tmp, path)
    return len(keys)


def restore_pending_rows(ledger: GroupLedger, path: str, partition_id: str = "train") -> int:
    """Put the rows of the ledger's waiting groups back into TransferQueue from ``path`` (``save_pending_rows``),
    with their tags. Raises when the ledger waits for rows the file does not hold."""
    import torch

    keys = [k for g in ledger.groups for k in g.keys]
    if not keys:
        return 0
    if not os.path.exists(path):
        raise FileNotFoundError(f"the checkpoint's ledger waits for {len(keys)} rows, but {path} is missing")
    saved = torch.load(path, weights_only=False)
    if saved["keys"] != keys:
        raise ValueError(f"{path} holds other rows than the checkpoint's ledger waits for")
    tags = [t for g in ledger.groups for t in g.tags]
    tq.kv_batch_put(keys=keys, partition_id=partition_id, fields=saved["fields"], tags=tags)
    return len(keys)
