"""State-store benchmark: batched lookups/s and bytes/state at 1M states (goals: >= 1M lookups/s, <= 300 B/state).

    python benchmarks/bench_store.py [--states 1000000] [--batch 16384]

Builds the store from synthetic text-game-like state keys through the public API (record + commit), then times
batched lookups by precomputed hash and by key string, a commit of one round, and save/load.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time

import numpy as np
import psutil

from threespo_verl.store import StateStore, key_hash

ROOMS = ["countertop", "cabinet", "drawer", "fridge", "microwave", "sinkbasin", "shelf", "desk", "bed", "garbagecan"]
OBJS = ["mug", "apple", "knife", "plate", "book", "pen", "cd", "towel", "egg", "lettuce"]


def synthetic_keys(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    r, o, a, b = (rng.integers(0, 10, n), rng.integers(0, 10, n), rng.integers(1, 9, n), rng.integers(0, 10**6, n))
    return [f"at {ROOMS[r[i]]} {a[i]} | you see a {OBJS[o[i]]} {a[i]} | holding: {OBJS[(o[i] + 3) % 10]} | #{i}:{b[i]}"
            for i in range(n)]


def best_of(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--states", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=16384)
    args = ap.parse_args()

    keys = synthetic_keys(args.states)
    hashes = key_hash(keys)
    proc = psutil.Process()
    gc.collect()
    rss0 = proc.memory_info().rss
    store = StateStore()
    # 1 trajectory per 20 states, each through its 20 states, 30% successful
    rng = np.random.default_rng(1)
    for start in range(0, args.states, 20):
        store.record_trajectory(hashes[start:start + 20], bool(rng.random() < 0.3))
    t0 = time.perf_counter()
    store.commit()
    build_commit = time.perf_counter() - t0
    gc.collect()
    rss1 = proc.memory_info().rss
    assert len(store) == len(set(hashes.tolist()))

    q_idx = rng.integers(0, args.states, args.batch)
    q_hash = hashes[q_idx]
    q_keys = [keys[i] for i in q_idx]
    t_hash = best_of(lambda: store.lookup(q_hash))
    t_str = best_of(lambda: store.lookup(q_keys))

    # one expansion round: 128 tasks x 8 branches finishing 10-step trajectories, half of the states new
    round_paths = [np.concatenate([hashes[rng.integers(0, args.states, 5)],
                                   rng.integers(2**62, 2**63, 5).astype(np.uint64)]) for _ in range(1024)]

    def one_round():
        s = StateStore.__new__(StateStore)
        s.__dict__.update({k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in store.__dict__.items()})
        s._pending_paths, s._pending_success = [], []
        s.record_trajectories(round_paths, [False] * len(round_paths))
        t = time.perf_counter()
        s.commit()
        return time.perf_counter() - t

    commit_round = min(one_round() for _ in range(3))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "store.npz")
        t_save = best_of(lambda: store.save(path), repeats=3)
        t_load = best_of(lambda: StateStore.load(path), repeats=3)
        size = os.path.getsize(path)

    per_state_arrays = store.nbytes / len(store)
    per_state_rss = (rss1 - rss0) / len(store)
    print(f"states: {len(store):,}   build commit: {build_commit:.2f} s   one-round commit (1024 traj): "
          f"{commit_round * 1e3:.1f} ms")
    print(f"save: {t_save * 1e3:.0f} ms   load: {t_load * 1e3:.0f} ms   file: {size / 1e6:.1f} MB")
    print(f"lookups/s by hash   (batch {args.batch}): {args.batch / t_hash:,.0f}")
    print(f"lookups/s by string (batch {args.batch}): {args.batch / t_str:,.0f}")
    print(f"bytes/state: arrays {per_state_arrays:.0f}, process RSS delta {per_state_rss:.0f}")
    ok_speed = args.batch / t_str >= 1e6
    ok_mem = max(per_state_arrays, per_state_rss) <= 300
    print(f"goal >= 1,000,000 lookups/s (by string): {'MET' if ok_speed else 'MISSED'};  "
          f"goal <= 300 B/state: {'MET' if ok_mem else 'MISSED'}")


if __name__ == "__main__":
    main()
