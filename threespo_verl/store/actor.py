"""A Ray actor that holds the one ``StateStore`` of a run, shared by the trainer and every agent-loop worker.

Lifetime (DESIGN §2.6, §5): the *trainer* creates the actor with ``get_or_create_store`` before it starts the
agent-loop workers, restoring it from the checkpoint's store file when resuming. A non-detached named actor lives as
long as the process that created it, so the trainer (driver) owns it and it goes away with the run. Agent-loop
workers in other processes attach with ``get_store(name)``, which never creates: a worker that started before the
trainer made the store gets a clear error instead of silently owning a private, short-lived store. Pass
``lifetime="detached"`` to keep a store beyond its creator (it then lives until ``ray.kill`` or cluster shutdown).

All calls run in the actor's process one at a time (a plain, non-async actor), so records from concurrent workers
never interleave. Workers should send ``key_hash`` arrays rather than key strings to keep messages small. The round
protocol: workers call ``lookup``/``scores`` (committed snapshot) and ``record_trajectories`` (pending); the trainer
calls ``commit`` after each expansion round and ``save`` with every checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import ray

from threespo_verl.store.state_store import StateStore

DEFAULT_NAME = "threespo_state_store"


@ray.remote(num_cpus=0)
class StateStoreActor:
    """Ray wrapper of ``StateStore``; method names and meanings follow the store's."""

    def __init__(self, path: str | None = None) -> None:
        self._store = StateStore.load(path) if path and Path(path).exists() else StateStore()

    def lookup(self, keys_or_hashes) -> tuple[np.ndarray, np.ndarray]:
        """(N_total, N_success) int64 arrays from the last commit."""
        return self._store.lookup(keys_or_hashes)

    def scores(self, keys_or_hashes, alpha: float = 50.0, xi: float = 10.0, zeta: float = 0.1,
               eps: float = 1e-6) -> np.ndarray:
        """State scores S(s) (DESIGN Eq.1) at the committed t, in one round trip."""
        return self._store.scores(keys_or_hashes, alpha=alpha, xi=xi, zeta=zeta, eps=eps)

    def t(self) -> int:
        return self._store.t

    def lookup_with_t(self, keys_or_hashes) -> tuple[tuple[np.ndarray, np.ndarray], int]:
        """((N_total, N_success), t) from the last commit in one round trip (what the rollout's scorer needs)."""
        return self._store.lookup(keys_or_hashes), self._store.t

    def record_trajectory(self, path_keys, success: bool) -> int:
        """Record one finished trajectory (pending); returns the number of pending trajectories."""
        self._store.record_trajectory(path_keys, success)
        return self._store.pending_trajectories

    def record_trajectories(self, paths: list, successes: list[bool]) -> int:
        """Record finished trajectories (pending); returns the number of pending trajectories."""
        self._store.record_trajectories(paths, successes)
        return self._store.pending_trajectories

    def commit(self) -> dict[str, int]:
        return self._store.commit()

    def discard_pending(self) -> int:
        return self._store.discard_pending()

    def save(self, path: str) -> str:
        """Atomic save of the committed snapshot and t (pending records are not saved)."""
        return str(self._store.save(path))

    def load(self, path: str) -> dict[str, int]:
        """Replace the table by the file's (pending records are dropped); returns ``stats()``."""
        self._store = StateStore.load(path)
        return self.stats()

    def state_dict(self) -> dict:
        return self._store.state_dict()

    def stats(self) -> dict[str, int]:
        return {"states": len(self._store), "t": self._store.t, "nbytes": self._store.nbytes,
                "pending_trajectories": self._store.pending_trajectories, "pending_t": self._store.pending_t}


def get_or_create_store(name: str = DEFAULT_NAME, namespace: str | None = None, path: str | None = None,
                        lifetime: str | None = None):
    """The named store actor, created on first call (loading ``path`` if that file exists); later calls return it.

    Call this from the trainer. ``path`` and ``lifetime`` only matter for the call that creates the actor; to load a
    checkpoint into an existing store use ``handle.load.remote(path)``.
    """
    return StateStoreActor.options(name=name, namespace=namespace, get_if_exists=True,
                                   lifetime=lifetime).remote(path)


def get_store(name: str = DEFAULT_NAME, namespace: str | None = None):
    """The existing named store actor (for agent-loop workers); raises ``LookupError`` if nobody created it yet."""
    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError as exc:
        raise LookupError(
            f"no state store actor named {name!r} in namespace {namespace or ray.get_runtime_context().namespace!r}; "
            "the trainer creates it with threespo_verl.store.actor.get_or_create_store() before starting workers"
        ) from exc
