"""State store: counting rules, snapshot/commit visibility, t, atomic versioned persistence."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from threespo_verl.store import FORMAT_VERSION, StateStore, StoreFormatError, key_hash


def test_hash_is_stable_and_vectorised():
    h = key_hash(["kitchen: fridge 1 (closed)", "kitchen: fridge 1 (open)", "kitchen: fridge 1 (closed)"])
    assert h.dtype == np.uint64 and h.shape == (3,)
    assert h[0] == h[2] != h[1]
    # stable across processes (no PYTHONHASHSEED dependence): the same value in a fresh interpreter
    out = subprocess.run([sys.executable, "-c", "from threespo_verl.store import key_hash;"
                          "print(int(key_hash('kitchen: fridge 1 (closed)')[0]))"],
                         capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "123"}, check=True)
    assert int(out.stdout) == int(h[0])


def test_hand_counted_trajectories_and_commit_visibility():
    s = StateStore()
    assert s.t == 1 and len(s) == 0
    # trajectory 1 loops A -> B -> A -> C and wins: A counts once
    s.record_trajectory(["A", "B", "A", "C"], success=True)
    # trajectory 2: A -> B, fails (time-out)
    s.record_trajectory(["A", "B"], success=False)
    # nothing visible before the commit
    assert s.lookup(["A", "B", "C"])[0].tolist() == [0, 0, 0] and s.t == 1
    summary = s.commit()
    assert summary == {"trajectories": 2, "new_states": 3, "states": 3}
    n_total, n_success = s.lookup(["A", "B", "C", "unseen"])
    assert n_total.tolist() == [2, 2, 1, 0]
    assert n_success.tolist() == [1, 1, 1, 0]
    assert s.t == 3  # 1 + two completed trajectories
    # a third trajectory through a new state D and the known C
    s.record_trajectory(["C", "D"], success=False)
    assert s.lookup(["C", "D"])[0].tolist() == [1, 0]
    assert s.commit()["new_states"] == 1
    assert s.lookup(["C", "D"])[0].tolist() == [2, 1] and s.lookup(["C"])[1].tolist() == [1]
    assert s.t == 4 and len(s) == 4 and s.nbytes == 4 * 16


def test_lookup_by_hash_equals_lookup_by_string():
    s = StateStore()
    s.record_trajectory([f"s{i}" for i in range(50)], success=True)
    s.commit()
    keys = [f"s{i}" for i in range(0, 100, 7)]
    by_str = s.lookup(keys)
    by_hash = s.lookup(key_hash(keys))
    assert np.array_equal(by_str[0], by_hash[0]) and np.array_equal(by_str[1], by_hash[1])


def test_scores_use_the_committed_t():
    s = StateStore()
    assert s.scores(["new"]).tolist() == [1.0]  # unseen state
    s.record_trajectory(["x"], success=True)
    s.commit()  # t = 2, SR(x) ~ 1, N_fail = 0 < xi
    assert s.scores(["x"])[0] == pytest.approx(np.exp(-50.0 * np.log(2) * (1 / (1 + 1e-6))))


def test_discard_pending():
    s = StateStore()
    s.record_trajectory(["A"], True)
    assert s.discard_pending() == 1 and s.commit()["trajectories"] == 0 and s.t == 1


def test_save_load_round_trip_is_exact(tmp_path):
    s = StateStore()
    rng = np.random.default_rng(0)
    for _ in range(30):
        s.record_trajectory([f"k{v}" for v in rng.integers(0, 200, size=8)], bool(rng.random() < 0.3))
    s.commit()
    s.record_trajectory(["pending-only"], True)  # not committed: not saved
    path = s.save(tmp_path / "store.npz")
    loaded = StateStore.load(path)
    assert loaded == s and loaded.t == s.t == 31 and loaded.pending_trajectories == 0
    assert loaded.lookup(["pending-only"])[0].tolist() == [0]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_unknown_version_and_garbage_are_rejected(tmp_path):
    s = StateStore()
    s.record_trajectory(["A"], True)
    s.commit()
    path = s.save(tmp_path / "store.npz")
    data = dict(np.load(path))
    header = json.loads(bytes(data["header"]).decode())
    header["version"] = FORMAT_VERSION + 1
    data["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    np.savez(tmp_path / "future.npz", **data)
    with pytest.raises(StoreFormatError, match=f"version {FORMAT_VERSION + 1} is not supported"):
        StateStore.load(tmp_path / "future.npz")
    (tmp_path / "garbage.npz").write_bytes(b"not a store")
    with pytest.raises(StoreFormatError, match="not a readable"):
        StateStore.load(tmp_path / "garbage.npz")


def test_a_save_killed_midway_keeps_the_previous_file(tmp_path):
    """SIGKILL a process while it writes a large store over an existing one: the old file still loads intact."""
    old = StateStore()
    old.record_trajectory(["old-1", "old-2"], True)
    old.commit()
    path = old.save(tmp_path / "store.npz")
    before = path.read_bytes()
    script = textwrap.dedent(f"""
        import numpy as np, sys
        from threespo_verl.store import StateStore
        s = StateStore()
        s.record_trajectory(np.arange(1, 8_000_001, dtype=np.uint64), True)   # ~128 MB to write
        s.commit()
        print("saving", flush=True)
        s.save({str(path)!r})
        print("saved", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "saving"
    deadline = time.time() + 60
    # kill once the temp file exists and is being written (so the crash really is mid-save)
    while time.time() < deadline and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert path.read_bytes() == before
    assert StateStore.load(path) == old


def test_failure_between_write_and_replace_keeps_previous(tmp_path, monkeypatch):
    old = StateStore()
    old.record_trajectory(["a"], False)
    old.commit()
    path = old.save(tmp_path / "s.npz")
    new = StateStore()
    new.record_trajectory(["b"], True)
    new.commit()

    def boom(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="simulated"):
        new.save(path)
    monkeypatch.undo()
    assert StateStore.load(path) == old
    assert [p.name for p in tmp_path.iterdir()] == ["s.npz"]  # the temp file was removed


class _Reference:
    """The obvious dict implementation, for the property test."""

    def __init__(self):
        self.committed, self.pending, self.traj, self.pending_traj = {}, [], 0, 0

    def record(self, path, ok):
        self.pending.append((set(path), ok))

    def commit(self):
        for states, ok in self.pending:
            for k in states:
                tot, suc = self.committed.get(k, (0, 0))
                self.committed[k] = (tot + 1, suc + int(ok))
        self.traj += len(self.pending)
        self.pending = []

    def lookup(self, k):
        return self.committed.get(k, (0, 0))


ops = st.lists(
    st.one_of(
        st.tuples(st.just("record"), st.lists(st.integers(0, 30).map(lambda i: f"s{i}"), min_size=1, max_size=10),
                  st.booleans()),
        st.tuples(st.just("commit")),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(ops)
def test_matches_reference_implementation(sequence):
    store, ref = StateStore(), _Reference()
    probe = [f"s{i}" for i in range(31)]
    for op in sequence:
        if op[0] == "record":
            store.record_trajectory(op[1], op[2])
            ref.record(op[1], op[2])
        else:
            store.commit()
            ref.commit()
        n_total, n_success = store.lookup(probe)
        assert list(zip(n_total.tolist(), n_success.tolist())) == [ref.lookup(k) for k in probe]
        assert store.t == 1 + ref.traj
