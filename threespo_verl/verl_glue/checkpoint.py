"""Checkpoint and resume of the trainer's own state: ``threespo_state.json`` (frontiers, task queue, round,
counters) and ``state_store.npz`` are written into verl's ``global_step_N`` folder *before* verl writes its tracker
file, and read back on resume; the metrics JSONL is cut back to the resumed step, so a killed run resumes exactly."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections import Counter
from typing import Any

from verl.utils.checkpoint.checkpoint_manager import find_latest_ckpt_path

from threespo_verl.envs.base import Task
from threespo_verl.rollout.tree import Frontiers
from threespo_verl.verl_glue import metrics_log
from threespo_verl.verl_glue.verl_compat import global_step_folder

logger = logging.getLogger("threespo_verl.trainer")

STATE_FILE = "threespo_state.json"
STORE_FILE = "state_store.npz"


class CheckpointMixin:
    """Save / restore of the trainer's state (mixed into ``ThreeSPOTrainer``)."""

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
        return global_step_folder(self.config.trainer.default_local_dir, self.global_steps)

    def _resume_folder(self) -> str:
        """The checkpoint folder verl resumed from (``trainer.resume_mode``)."""
        mode = self.config.trainer.resume_mode
        if mode == "resume_path":
            return os.path.abspath(self.config.trainer.resume_from_path)
        return find_latest_ckpt_path(os.path.abspath(self.config.trainer.default_local_dir))
