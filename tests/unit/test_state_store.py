"""State store: counting rules, snapshot/commit visibility, t, atomic versioned persistence."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
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


_BIG_SAVE = """
import os, sys, time
import numpy as np
from threespo_verl.store import StateStore
s = StateStore()
s.record_trajectory(np.arange(1, 4_000_001, dtype=np.uint64), True)   # 4M states, ~64 MB to write
s.commit()
if {block_in_fsync}:
    real_fsync = os.fsync
    def fsync_then_hang(fd):
        real_fsync(fd)
        print("temp file written", flush=True)
        time.sleep(600)   # the parent kills us here: after the temp write, before os.replace
    os.fsync = fsync_then_hang
print("saving", flush=True)
s.save({path!r})
print("saved", flush=True)
"""


def _old_store_file(tmp_path):
    old = StateStore()
    old.record_trajectory(["old-1", "old-2"], True)
    old.commit()
    path = old.save(tmp_path / "store.npz")
    return old, path, path.read_bytes()


def test_a_save_killed_between_temp_write_and_rename_keeps_the_previous_file(tmp_path):
    """SIGKILL the saving process once its temp file is complete and synced, before the rename: old file intact."""
    old, path, before = _old_store_file(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", _BIG_SAVE.format(block_in_fsync=True, path=str(path))],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "saving"
        assert proc.stdout.readline().strip() == "temp file written"
        temps = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        assert len(temps) == 1 and temps[0].stat().st_size > 60_000_000  # the new data really was on disk
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert path.read_bytes() == before
    assert StateStore.load(path) == old


def test_a_save_killed_at_any_moment_leaves_old_or_new_never_a_broken_file(tmp_path):
    """SIGKILL while the temp file grows: the target is byte-identical to the old file, or the complete new one."""
    old, path, before = _old_store_file(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", _BIG_SAVE.format(block_in_fsync=False, path=str(path))],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "saving"

    def listing():
        return sorted((p.name, p.stat().st_size) for p in tmp_path.iterdir())

    start, deadline = listing(), time.monotonic() + 120
    # kill at the first visible write to the folder (a temp file appears, or the target itself changes)
    while proc.poll() is None and time.monotonic() < deadline and listing() == start:
        time.sleep(0.001)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if path.read_bytes() != before:  # the save had already finished: then the new file must be whole
        new = StateStore.load(path)
        assert len(new) == 4_000_000 and new.t == 2
    else:
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


def test_pending_t_and_empty_paths():
    s = StateStore()
    s.record_trajectory([], success=False)  # e.g. pruned before any state was keyed: still a completed trajectory
    s.record_trajectory(["A", "A"], success=True)
    assert (s.t, s.pending_t, s.pending_trajectories) == (1, 3, 2)
    assert s.commit() == {"trajectories": 2, "new_states": 1, "states": 1}
    assert (s.t, s.pending_t) == (3, 3) and s.lookup("A")[0].tolist() == [1]


def test_hash_inputs_in_every_accepted_form():
    s = StateStore()
    s.record_trajectories([["a", "b"], key_hash(["b", "c"])], [True, False])
    s.commit()
    h = key_hash(["a", "b", "c", "zz"])
    expected = ([1, 2, 1, 0], [1, 1, 0, 0])
    for q in (["a", "b", "c", "zz"], np.array(["a", "b", "c", "zz"]), h, h.view(np.int64), [int(x) for x in h],
              iter(["a", "b", "c", "zz"])):
        n_total, n_success = s.lookup(q)
        assert (n_total.tolist(), n_success.tolist()) == expected
    assert [a.tolist() for a in s.lookup([])] == [[], []]
    with pytest.raises(TypeError, match="must be str"):
        key_hash(["a", 3])
    with pytest.raises(TypeError, match="uint64"):
        s.lookup(np.array([1.5, 2.5]))


def test_record_trajectories_rejects_misaligned_outcomes():
    with pytest.raises(ValueError, match="2 paths but 1 outcomes"):
        StateStore().record_trajectories([["a"], ["b"]], [True])


def test_state_dict_round_trip_and_validation():
    s = StateStore()
    s.record_trajectories([["a", "b"], ["b"]], [True, False])
    s.commit()
    assert StateStore.from_state_dict(s.state_dict()) == s
    bad = s.state_dict()
    bad["keys"] = bad["keys"][::-1].copy()
    with pytest.raises(StoreFormatError, match="strictly increasing"):
        StateStore.from_state_dict(bad)
    bad = s.state_dict()
    bad["n_success"] = bad["n_total"] + np.uint32(1)
    with pytest.raises(StoreFormatError, match="N_success <= N_total"):
        StateStore.from_state_dict(bad)


def test_corrupt_files_are_rejected(tmp_path):
    s = StateStore()
    s.record_trajectories([["a", "b", "c"]], [True])
    s.commit()
    good = dict(np.load(s.save(tmp_path / "s.npz")))
    cases = {
        "truncated": {**good, "keys": good["keys"][:2]},
        "unsorted": {**good, "keys": np.sort(good["keys"])[::-1].copy()},
        "other-magic": {**good, "header": np.frombuffer(b'{"format": "x", "version": 1}', dtype=np.uint8)},
    }
    messages = {"truncated": "different shapes", "unsorted": "strictly increasing", "other-magic": "not a threespo"}
    for name, arrays in cases.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
        with pytest.raises(StoreFormatError, match=messages[name]):
            StateStore.load(tmp_path / f"{name}.npz")
    with pytest.raises(FileNotFoundError):
        StateStore.load(tmp_path / "missing.npz")


def test_counter_overflow_is_refused_without_changing_the_snapshot():
    s = StateStore()
    s.record_trajectory(["a"], True)
    s.commit()
    state = s.state_dict()
    state["n_total"][:] = np.iinfo(np.uint32).max
    full = StateStore.from_state_dict(state)
    full.record_trajectory(["a"], False)
    with pytest.raises(OverflowError):
        full.commit()
    assert full.lookup("a")[0].tolist() == [np.iinfo(np.uint32).max] and full.t == 2


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
@given(ops, st.booleans())
def test_matches_reference_implementation(sequence, record_hashes):
    """Random record/commit sequences: lookups, t, pending_t and len equal the dict reference after every step,
    and a save/load round trip at the end reproduces the committed state exactly."""
    import tempfile
    from pathlib import Path

    store, ref = StateStore(), _Reference()
    probe = [f"s{i}" for i in range(31)]
    for op in sequence:
        if op[0] == "record":
            store.record_trajectory(key_hash(op[1]) if record_hashes else op[1], op[2])
            ref.record(op[1], op[2])
        else:
            store.commit()
            ref.commit()
        n_total, n_success = store.lookup(probe[::-1])
        assert list(zip(n_total.tolist(), n_success.tolist())) == [ref.lookup(k) for k in probe[::-1]]
        assert store.t == 1 + ref.traj and store.pending_t == store.t + len(ref.pending)
        assert len(store) == len(ref.committed)
    with tempfile.TemporaryDirectory() as d:
        assert StateStore.load(store.save(Path(d) / "s.npz")) == store


def test_key_strings_are_kept_only_on_request_and_survive_save(tmp_path):
    plain = StateStore()
    plain.record_trajectory(["kitchen", "hall"], True)
    plain.commit()
    assert plain.key_strings(["kitchen"]) == [None]
    assert "string_hashes" not in np.load(plain.save(tmp_path / "plain.npz")).files

    s = StateStore(keep_key_strings=True)
    s.record_trajectory(["kitchen", "hall"], True)
    s.record_trajectory(key_hash(["attic"]), False)  # recorded by hash: its text is unknown
    assert s.key_strings(["kitchen"]) == [None]  # pending text is not visible either
    s.commit()
    s.record_trajectory(["cellar"], False)
    s.discard_pending()
    s.commit()
    assert s.key_strings(["hall", "kitchen", "attic", "cellar"]) == ["hall", "kitchen", None, None]
    loaded = StateStore.load(s.save(tmp_path / "s.npz"))
    assert loaded == s and loaded.keep_key_strings
    assert loaded.key_strings(key_hash(["kitchen", "attic"])) == ["kitchen", None]
