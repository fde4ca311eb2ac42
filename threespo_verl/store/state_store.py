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
* ``save``/``load`` persist the committed snapshot and t atomically (temp file in the same folder, flush + fsync,
  ``os.replace``, fsync of the folder), so a crash mid-save leaves the previous file as it was. The file is an
  ``.npz`` (no pickle) with a JSON ``header`` (``format`` magic, ``version``, state and trajectory counts) and the
  three arrays; ``load`` refuses other formats and versions with ``StoreFormatError``. Only committed data is
  saved: records still pending belong to a round that had not finished, and that round is re-run after resume.

Memory: keys are stored as 64-bit hashes (xxh3_64 of the UTF-8 key; stable across processes, machines and
PYTHONHASHSEED), with uint32 counters, in three sorted numpy arrays: 16 bytes per state. Among n distinct keys some
pair collides with probability about n^2 / 2^65 (3e-8 at a million states, 3e-6 at ten million); a collision merges
two states' statistics, it cannot crash anything. Lookups are vectorised binary searches (``np.searchsorted``);
a commit is one sort of the round's hashes plus one ``np.insert`` per array (O(states) memory traffic per round).
The key text itself is not kept unless ``StateStore(keep_key_strings=True)`` (debugging; see ``key_strings``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import xxhash

from threespo_verl.io_utils import atomic_write

FORMAT_NAME = "threespo-state-store"
FORMAT_VERSION = 1

HASH_DTYPE = np.uint64
COUNT_DTYPE = np.uint32
_COUNT_MAX = int(np.iinfo(COUNT_DTYPE).max)


#: ``algorithm.threespo.state_scope``: ``task`` keeps statistics per (task id, state) (DESIGN §2.1, the default);
#: ``global`` pools every task's visits of a state (an ablation: on WebShop every task starts on the same page)
STATE_SCOPES = ("task", "global")
_SCOPE_SEP = "\x1f"  # ASCII unit separator: never part of a task id or a canonical state key


def scoped_keys(task_id: str, keys: Iterable[str | None], scope: str = "task") -> list[str]:
    """The store keys of canonical state keys seen in task ``task_id`` (None entries are skipped).

    ``scope="task"``: ``"<task_id>\\x1f<state key>"``, so two tasks that show the same observation (every WebShop task
    starts on the same search page) keep separate N_total / N_success; ``scope="global"``: the state keys as they
    are. Every read and write of the store goes through this function, so lookups and records always agree.
    """
    if scope == "task":
        return [f"{task_id}{_SCOPE_SEP}{k}" for k in keys if k is not None]
    if scope == "global":
        return [k for k in keys if k is not None]
    raise ValueError(f"algorithm.threespo.state_scope={scope!r}; valid: {STATE_SCOPES}")


def key_hash(keys: Iterable[str] | str) -> np.ndarray:
    """Stable 64-bit hashes (xxh3_64, seed 0) of the UTF-8 bytes of canonical state keys, as a uint64 array.

    A single str gives shape (1,). The value does not depend on the process, the machine or PYTHONHASHSEED, so
    workers can hash once and send the uint64 array to the store (8 bytes per key instead of the text).
    """
    if isinstance(keys, str):
        keys = (keys,)
    elif isinstance(keys, np.ndarray):
        keys = keys.ravel().tolist()
    h = xxhash.xxh3_64_intdigest
    if not isinstance(keys, Sequence):
        keys = list(keys)
    try:
        return np.fromiter((h(k.encode("utf-8")) for k in keys), dtype=HASH_DTYPE, count=len(keys))
    except AttributeError:
        bad = next(k for k in keys if not isinstance(k, str))
        raise TypeError(f"state keys must be str, got {type(bad).__name__}: {bad!r}") from None


def _as_hashes(keys_or_hashes) -> np.ndarray:
    """Accept key strings (hashed here) or already hashed values (uint64, or int64 bit patterns from a view)."""
    if isinstance(keys_or_hashes, np.ndarray):
        if keys_or_hashes.dtype == HASH_DTYPE:
            return keys_or_hashes.ravel()
        if keys_or_hashes.dtype == np.int64:  # same bits, e.g. after a round trip through a signed tensor
            return keys_or_hashes.ravel().view(HASH_DTYPE)
        if keys_or_hashes.dtype.kind in "UO":
            return key_hash(keys_or_hashes)
        if keys_or_hashes.size == 0:
            return np.empty(0, dtype=HASH_DTYPE)
        raise TypeError(f"hashes must be uint64 (see key_hash), got an array of {keys_or_hashes.dtype}")
    if isinstance(keys_or_hashes, str):
        return key_hash(keys_or_hashes)
    seq = keys_or_hashes if isinstance(keys_or_hashes, Sequence) else list(keys_or_hashes)
    if len(seq) and isinstance(seq[0], str):
        return key_hash(seq)
    return np.asarray(seq, dtype=HASH_DTYPE).ravel()


class StoreFormatError(ValueError):
    """A file (or state dict) that is not a state store this version can read: wrong magic, version or data."""


class StateStore:
    """N_total / N_success per state key plus t, with snapshot-then-commit semantics (see module docstring)."""

    def __init__(self, keep_key_strings: bool = False) -> None:
        """``keep_key_strings=True`` also keeps the text of every key recorded as a string (for debugging: see
        ``key_strings``); it costs the strings' memory, is not counted in ``nbytes``, and is saved with the store."""
        self.keep_key_strings = bool(keep_key_strings)
        self._key_strings: dict[int, str] = {}  # hash -> text, committed (only with keep_key_strings)
        self._pending_strings: dict[int, str] = {}
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
        """Trajectories recorded since the last commit (not visible to lookups yet)."""
        return len(self._pending_paths)

    @property
    def pending_t(self) -> int:
        """The t that the next ``commit()`` will publish: ``t + pending_trajectories``."""
        return self.t + self.pending_trajectories

    def lookup(self, keys_or_hashes) -> tuple[np.ndarray, np.ndarray]:
        """(N_total, N_success) per key from the last commit, as int64 arrays; unseen keys give (0, 0).

        Accepts key strings or their ``key_hash`` values; the result has one entry per query, in query order.
        The queries are binary-searched in sorted order: consecutive searches then touch neighbouring cache lines
        of the snapshot, which is several times faster than searching them in arrival order at a million states.
        """
        q = _as_hashes(keys_or_hashes)
        n_total = np.zeros(q.size, dtype=np.int64)
        n_success = np.zeros(q.size, dtype=np.int64)
        if self._keys.size and q.size:
            order = np.argsort(q, kind="stable")
            q_sorted = q[order]
            idx = np.searchsorted(self._keys, q_sorted)
            np.minimum(idx, self._keys.size - 1, out=idx)
            found = self._keys[idx] == q_sorted
            rows, idx = order[found], idx[found]
            n_total[rows] = self._n_total[idx]
            n_success[rows] = self._n_success[idx]
        return n_total, n_success

    def scores(self, keys_or_hashes, alpha: float = 50.0, xi: float = 10.0, zeta: float = 0.1, eps: float = 1e-6):
        """State scores S(s) (DESIGN Eq.1) of the keys at the committed t."""
        from threespo_verl.algos.threespo import state_score

        n_total, n_success = self.lookup(keys_or_hashes)
        return state_score(n_total, n_success, self.t, alpha=alpha, xi=xi, zeta=zeta, eps=eps)

    # ---- writes (pending until commit) ---------------------------------------------------------------------------
    def record_trajectory(self, path_keys, success: bool) -> None:
        """Record one finished trajectory: every distinct state on ``path_keys`` (terminal included) counts once."""
        hashes = _as_hashes(path_keys)
        if self.keep_key_strings:
            texts = [path_keys] if isinstance(path_keys, str) else path_keys
            if isinstance(texts, np.ndarray) and texts.dtype.kind in "UO":
                texts = texts.ravel().tolist()
            if isinstance(texts, Sequence) and len(texts) and isinstance(texts[0], str):
                self._pending_strings.update(zip(hashes.tolist(), texts))
        self._pending_paths.append(np.unique(hashes))
        self._pending_success.append(bool(success))

    def record_trajectories(self, paths: Sequence, successes: Sequence[bool]) -> None:
        """``record_trajectory`` for each (path, success) pair, e.g. all trajectories a worker finished in a round."""
        if len(paths) != len(successes):
            raise ValueError(f"{len(paths)} paths but {len(successes)} outcomes")
        for path, ok in zip(paths, successes):
            self.record_trajectory(path, ok)

    def key_strings(self, keys_or_hashes) -> list[str | None]:
        """Committed key text per hash (None where unknown); only filled with ``keep_key_strings=True``."""
        return [self._key_strings.get(h) for h in _as_hashes(keys_or_hashes).tolist()]

    def commit(self) -> dict[str, int]:
        """Make the pending trajectories visible: merge them into the snapshot and advance t."""
        n_traj = len(self._pending_paths)
        if n_traj == 0:
            self._pending_strings.clear()
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
        if known.any() and int(self._n_total[idx_c[known]].max()) + int(add_total.max()) > _COUNT_MAX:
            raise OverflowError("a state's N_total would exceed the uint32 counter; nothing was committed")
        self._n_total[idx_c[known]] += add_total[known].astype(COUNT_DTYPE)
        self._n_success[idx_c[known]] += add_success[known].astype(COUNT_DTYPE)
        # new states: insert at their sorted positions (ukeys is sorted, so positions are non-decreasing)
        new = ~known
        pos = idx[new]
        self._keys = np.insert(self._keys, pos, ukeys[new])
        self._n_total = np.insert(self._n_total, pos, add_total[new].astype(COUNT_DTYPE))
        self._n_success = np.insert(self._n_success, pos, add_success[new].astype(COUNT_DTYPE))

        self._trajectories += n_traj
        self._key_strings.update(self._pending_strings)
        self._pending_strings.clear()
        self._pending_paths.clear()
        self._pending_success.clear()
        return {"trajectories": n_traj, "new_states": int(new.sum()), "states": len(self)}

    def discard_pending(self) -> int:
        """Drop uncommitted records (e.g. a round that is re-run); returns how many trajectories were dropped."""
        n = len(self._pending_paths)
        self._pending_strings.clear()
        self._pending_paths.clear()
        self._pending_success.clear()
        return n

    # ---- persistence ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray | int]:
        """The committed snapshot as plain arrays + the committed trajectory count (pending records excluded)."""
        return {"keys": self._keys.copy(), "n_total": self._n_total.copy(), "n_success": self._n_success.copy(),
                "trajectories": self._trajectories}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the committed snapshot and t atomically: a crash at any point leaves the previous file intact.

        Pending (uncommitted) records are not written (the header notes how many were left out): the trainer saves
        after its commit, and a round cut short by a crash is re-run after resume. A crash can leave a stray
        ``.<name>.*.tmp`` file next to ``path``; it is never read and can be deleted.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "states": len(self),
                  "trajectories": self._trajectories, "pending_not_saved": self.pending_trajectories}
        extra = {}
        if self.keep_key_strings:  # optional debugging arrays: hashes and texts of the known strings
            extra = {"string_hashes": np.fromiter(self._key_strings, dtype=HASH_DTYPE, count=len(self._key_strings)),
                     "strings": np.array(list(self._key_strings.values()), dtype=np.str_)}
        with atomic_write(path, "wb") as f:
            np.savez(f, header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
                     keys=self._keys, n_total=self._n_total, n_success=self._n_success, **extra)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "StateStore":
        """Read a file written by ``save``; raises ``StoreFormatError`` for other files, other versions, bad data."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                header = json.loads(bytes(data["header"]).decode())
                arrays = {name: data[name] for name in ("keys", "n_total", "n_success")}
                strings = None
                if "string_hashes" in data.files:
                    strings = dict(zip(data["string_hashes"].tolist(), data["strings"].tolist()))
        except FileNotFoundError:
            raise
        except Exception as exc:  # noqa: BLE001 - anything unreadable is reported the same way
            raise StoreFormatError(f"{path} is not a readable threespo state store: {exc!r}") from exc
        if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
            fmt = header.get("format") if isinstance(header, dict) else None
            raise StoreFormatError(f"{path}: not a {FORMAT_NAME} file (format={fmt!r})")
        if header.get("version") != FORMAT_VERSION:
            raise StoreFormatError(
                f"{path}: state-store format version {header.get('version')} is not supported by this "
                f"threespo_verl (reads version {FORMAT_VERSION}); use the matching threespo_verl release"
            )
        store = cls._from_arrays(arrays["keys"], arrays["n_total"], arrays["n_success"], header.get("trajectories"),
                                 expected_states=header.get("states"), where=str(path))
        if strings is not None:
            store.keep_key_strings, store._key_strings = True, strings
        return store

    @classmethod
    def from_state_dict(cls, state: dict) -> "StateStore":
        """Inverse of ``state_dict`` (validated like ``load``)."""
        return cls._from_arrays(state["keys"], state["n_total"], state["n_success"], state["trajectories"],
                                expected_states=None, where="state_dict")

    @classmethod
    def _from_arrays(cls, keys, n_total, n_success, trajectories, expected_states, where: str) -> "StateStore":
        keys, n_total, n_success = (np.asarray(a) for a in (keys, n_total, n_success))
        if keys.dtype != HASH_DTYPE or n_total.dtype != COUNT_DTYPE or n_success.dtype != COUNT_DTYPE:
            raise StoreFormatError(f"{where}: unexpected dtypes {keys.dtype}/{n_total.dtype}/{n_success.dtype}")
        if not (keys.ndim == n_total.ndim == n_success.ndim == 1 and keys.size == n_total.size == n_success.size):
            raise StoreFormatError(f"{where}: keys and counters have different shapes")
        if expected_states is not None and keys.size != expected_states:
            raise StoreFormatError(f"{where}: {keys.size} states but the header says {expected_states}")
        if not isinstance(trajectories, int) or trajectories < 0:
            raise StoreFormatError(f"{where}: bad trajectory count {trajectories!r}")
        if keys.size > 1 and not np.all(keys[1:] > keys[:-1]):
            raise StoreFormatError(f"{where}: state hashes are not strictly increasing")
        if np.any(n_success > n_total) or np.any(n_total == 0):
            raise StoreFormatError(f"{where}: counters violate 1 <= N_total and N_success <= N_total")
        store = cls()
        store._keys, store._n_total, store._n_success = keys.copy(), n_total.copy(), n_success.copy()
        store._trajectories = trajectories
        return store

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StateStore):
            return NotImplemented
        return (self._trajectories == other._trajectories and np.array_equal(self._keys, other._keys)
                and np.array_equal(self._n_total, other._n_total)
                and np.array_equal(self._n_success, other._n_success))

