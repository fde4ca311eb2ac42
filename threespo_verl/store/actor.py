"""A Ray actor that holds the one ``StateStore`` of a run, shared by the trainer and every agent-loop worker.

The trainer creates it (``get_or_create_store``); agent-loop workers in other processes get the same actor by name.
All calls run in the actor's process, one at a time, so records from concurrent workers never interleave badly.
Workers should pass hashed keys (``key_hash``) to keep the messages small.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import ray

from threespo_verl.store.state_store import StateStore

DEFAULT_NAME = "threespo_state_store"


@ray.remote(num_cpus=0)
class StateStoreActor:
    def __init__(self, path: str | None = None) -> None:
        self._store = StateStore.load(path) if path and Path(path).exists() else StateStore()

    def lookup(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._store.lookup(hashes)

    def t(self) -> int:
        return self._store.t

    def record_trajectories(self, paths: list[np.ndarray], successes: list[bool]) -> int:
        self._store.record_trajectories(paths, successes)
        return self._store.pending_trajectories

    def commit(self) -> dict[str, int]:
        return self._store.commit()

    def discard_pending(self) -> int:
        return self._store.discard_pending()

    def save(self, path: str) -> str:
        return str(self._store.save(path))

    def load(self, path: str) -> dict[str, int]:
        self._store = StateStore.load(path)
        return self.stats()

    def state_dict(self) -> dict:
        return self._store.state_dict()

    def stats(self) -> dict[str, int]:
        return {"states": len(self._store), "t": self._store.t, "nbytes": self._store.nbytes,
                "pending_trajectories": self._store.pending_trajectories}


def get_or_create_store(name: str = DEFAULT_NAME, namespace: str | None = None, path: str | None = None):
    """The named store actor, created on first call (loading ``path`` if it exists); later calls return it."""
    return StateStoreActor.options(name=name, namespace=namespace, get_if_exists=True).remote(path)
