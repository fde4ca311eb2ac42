"""Per-state success statistics for 3SPO (DESIGN §2.1 and §2.6), snapshot-then-commit.

For every canonical state key s the store keeps

    N_total(s)   = trajectories that passed through s (each trajectory counts a state once)
    N_success(s) = those of them that ended in success

and the global clock ``t = 1 + completed trajectories since the run began`` used by lambda(t) = alpha * log(t).

Semantics (DESIGN §2.6):

* A trajectory is recorded when it ends (won, failed, time-out or pruned), for every distinct state on its path
  including the terminal one.
* Records go to a *pending* buffer. Lookups, ``t`` and scores read the *committed snapshot* only; ``commit()`` (once
  per expansion round, by the trainer) makes the pending records visible. So every score used during a round comes
  from the snapshot taken before that round, whatever order the workers finish in.
* ``save``/``load`` persist the committed snapshot and t atomically (temp file + fsync + rename), in a versioned
  format. Pending records are not saved: a round interrupted before its commit is re-run after resume.

Memory: keys are stored as 64-bit hashes (xxh3_64 of the UTF-8 key; stable across processes and machines), with
uint32 counters, in three sorted numpy arrays: 16 bytes per state. Two distinct keys collide with probability about
n^2 / 2^65 (1e-7 at a million states); a collision merges two states' statistics, it cannot crash anything.
Lookups are vectorised binary searches (``np.searchsorted``).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import xxhash

FORMAT_NAME = "threespo-state-store"
FORMAT_VERSION = 1

HASH_DTYPE = np.uint64
COUNT_DTYPE = np.uint32


def key_hash(keys: Iterable[str] | str) -> np.ndarray:
    """Stable 64-bit hashes (xxh3_64) of canonical state keys, as a uint64 array (a str gives shape (1,))."""
    if isinstance(keys, str):
        keys = (keys,)
    h = xxhash.xxh3_64_intdigest
    return np.fromiter((h(k.encode("utf-8")) for k in keys), dtype=HASH_DTYPE)


def _as_hashes(keys_or_hashes) -> np.ndarray:
    """Accept strings (hashed here) or already hashed uint64 values."""
    if isinstance(keys_or_hashes, np.ndarray) and keys_or_hashes.dtype == HASH_DTYPE:
        return keys_or_hashes
    if isinstance(keys_or_hashes, str):
        return key_hash(keys_or_hashes)
    seq = list(keys_or_hashes)
    if seq and isinstance(seq[0], str):
        return key_hash(seq)
    return np.asarray(seq, dtype=HASH_DTYPE)


class StoreFormatError(ValueError):
    pass


class StateStore:
    """N_total / N_success per state key plus t, with snapshot-then-commit semantics (see module docstring)."""

    def __init__(self) -> None:
        # committed snapshot: sorted unique hashes and their counters
        self._keys = np.empty(0, dtype=HASH_DTYPE)
        self._n_total = np.empty(0, dtype=COUNT_DTYPE)
        self._n_success = np.empty(0, dtype=COUNT_DTYPE)
        self._trajectories = 0  # committed, so t = 1 + _trajectories
        # pending records: one array of distinct hashes per finished trajectory, and its outcome
        self._pending_paths: list[np.ndarray] = []
        self._pending_success: list[bool] = []

    # ---- reads (committed snapshot only) -------------------------------------------------------------------------
    @property
    def t(self) -> int:
        """1 + trajectories committed so far (t >= 1, so lambda(1) = 0)."""
        return 1 + self._trajectories

    def __len__(self) -> int:
        return int(self._keys.size)

    @property
    def nbytes(self) -> int:
        """Bytes held by the committed snapshot's arrays."""
        return int(self._keys.nbytes + self._n_total.nbytes + self._n_success.nbytes)

    @property
    def pending_trajectories(self) -> int:
        return len(self._pending_paths)

    def lookup(self, keys_or_hashes) -> tuple[np.ndarray, np.ndarray]:
        """(N_total, N_success) per key from the last commit, as int64 arrays; unseen keys give (0, 0)."""
        q = _as_hashes(keys_or_hashes)
        n_total = np.zeros(q.shape, dtype=np.int64)
        n_success = np.zeros(q.shape, dtype=np.int64)
        if self._keys.size and q.size:
            idx = np.searchsorted(self._keys, q)
            idx_c = np.minimum(idx, self._keys.size - 1)
            found = self._keys[idx_c] == q
            n_total[found] = self._n_total[idx_c[found]]
            n_success[found] = self._n_success[idx_c[found]]
        return n_total, n_success

    def scores(self, keys_or_hashes, alpha: float = 50.0, xi: float = 10.0, zeta: float = 0.1, eps: float = 1e-6):
        """State scores S(s) (DESIGN Eq.1) of the keys at the committed t."""
        from threespo_verl.algos.threespo import state_score

        n_total, n_success = self.lookup(keys_or_hashes)
        return state_score(n_total, n_success, self.t, alpha=alpha, xi=xi, zeta=zeta, eps=eps)

    # ---- writes (pending until commit) ---------------------------------------------------------------------------
    def record_trajectory(self, path_keys, success: bool) -> None:
        """Record one finished trajectory: every distinct state on ``path_keys`` (terminal included) counts once."""
        self._pending_paths.append(np.unique(_as_hashes(path_keys)))
        self._pending_success.append(bool(success))

    def record_trajectories(self, paths: Sequence, successes: Sequence[bool]) -> None:
        if len(paths) != len(successes):
            raise ValueError(f"{len(paths)} paths but {len(successes)} outcomes")
        for path, ok in zip(paths, successes):
            self.record_trajectory(path, ok)

    def commit(self) -> dict[str, int]:
        """Make the pending trajectories visible: merge them into the snapshot and advance t."""
        n_traj = len(self._pending_paths)
        if n_traj == 0:
            return {"trajectories": 0, "new_states": 0, "states": len(self)}
        lengths = np.fromiter((p.size for p in self._pending_paths), dtype=np.int64, count=n_traj)
        hashes = np.concatenate(self._pending_paths) if lengths.sum() else np.empty(0, dtype=HASH_DTYPE)
        won = np.repeat(np.asarray(self._pending_success, dtype=np.int64), lengths)
        # per distinct key in this commit: how many trajectories visited it, how many of those succeeded
        ukeys, inv = np.unique(hashes, return_inverse=True)
        add_total = np.bincount(inv, minlength=ukeys.size)
        add_success = np.bincount(inv, weights=won, minlength=ukeys.size).astype(np.int64)

        idx = np.searchsorted(self._keys, ukeys)
        idx_c = np.minimum(idx, max(self._keys.size - 1, 0))
        known = (self._keys[idx_c] == ukeys) if self._keys.size else np.zeros(ukeys.size, dtype=bool)
        # existing states: add in place (keys are unique within ukeys, so plain fancy-index add is exact)
        self._n_total[idx_c[known]] += add_total[known].astype(COUNT_DTYPE)
        self._n_success[idx_c[known]] += add_success[known].astype(COUNT_DTYPE)
        # new states: insert at their sorted positions (ukeys is sorted, so positions are non-decreasing)
        new = ~known
        pos = idx[new]
        self._keys = np.insert(self._keys, pos, ukeys[new])
        self._n_total = np.insert(self._n_total, pos, add_total[new].astype(COUNT_DTYPE))
        self._n_success = np.insert(self._n_success, pos, add_success[new].astype(COUNT_DTYPE))

        self._trajectories += n_traj
        self._pending_paths.clear()
        self._pending_success.clear()
        return {"trajectories": n_traj, "new_states": int(new.sum()), "states": len(self)}

    def discard_pending(self) -> int:
        """Drop uncommitted records (e.g. a round that is re-run); returns how many trajectories were dropped."""
        n = len(self._pending_paths)
        self._pending_paths.clear()
        self._pending_success.clear()
        return n

    # ---- persistence ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray | int]:
        return {"keys": self._keys.copy(), "n_total": self._n_total.copy(), "n_success": self._n_success.copy(),
                "trajectories": self._trajectories}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the committed snapshot and t atomically: a crash at any point leaves the previous file intact."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "states": len(self),
                  "trajectories": self._trajectories, "pending_not_saved": self.pending_trajectories}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
                         keys=self._keys, n_total=self._n_total, n_success=self._n_success)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "StateStore":
        path = Path(path)
        try:
            data = np.load(path, allow_pickle=False)
            header = json.loads(bytes(data["header"]).decode())
        except Exception as exc:  # noqa: BLE001
            raise StoreFormatError(f"{path} is not a readable threespo state store: {exc!r}") from exc
        if header.get("format") != FORMAT_NAME:
            raise StoreFormatError(f"{path}: not a {FORMAT_NAME} file (format={header.get('format')!r})")
        if header.get("version") != FORMAT_VERSION:
            raise StoreFormatError(
                f"{path}: state-store format version {header.get('version')} is not supported by this "
                f"threespo_verl (reads version {FORMAT_VERSION}); use the matching threespo_verl release"
            )
        store = cls()
        store._keys = data["keys"].astype(HASH_DTYPE, copy=False)
        store._n_total = data["n_total"].astype(COUNT_DTYPE, copy=False)
        store._n_success = data["n_success"].astype(COUNT_DTYPE, copy=False)
        store._trajectories = int(header["trajectories"])
        if not (store._keys.size == store._n_total.size == store._n_success.size == header["states"]):
            raise StoreFormatError(f"{path}: array sizes disagree with the header (truncated file?)")
        return store

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StateStore):
            return NotImplemented
        return (self._trajectories == other._trajectories and np.array_equal(self._keys, other._keys)
                and np.array_equal(self._n_total, other._n_total)
                and np.array_equal(self._n_success, other._n_success))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
