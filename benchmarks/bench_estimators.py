"""Estimator cost on one synthetic batch of 50k step rows: verl's own grpo vs our gigpo and 3spo.

    python benchmarks/bench_estimators.py [--rows 50000] [--tokens 64] [--repeats 5]

Same batch for all three: 128 tasks x 8 episodes of ~49 steps (GRPO's and GiGPO's groups), 8..64 response tokens per
row with the step reward on the last one, string ids as the trainer hands them over, 20 x 5 anchor states; 3SPO groups
are the children of one expanded node, 2..8 rows each. Prints the median time of each (verl's loop-based grpo, the
baseline; its grpo_vectorized for reference) and, on the last line, the ratio 3spo/grpo (goal <= 3).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from verl.trainer.ppo import core_algos

import threespo_verl.plugin  # noqa: F401  (registers 3spo and gigpo)
from threespo_verl.verl_glue.row_meta import row_metadata


def make_batch(rows: int, tokens: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    n_tasks, group = 128, 8
    traj = np.arange(rows) % (n_tasks * group)          # round-robin rows over 1024 trajectories
    order = np.argsort(traj, kind="stable")
    traj = traj[order]
    step = np.zeros(rows, dtype=np.int64)
    starts = np.r_[0, np.nonzero(np.diff(traj))[0] + 1]
    for s, e in zip(starts, np.r_[starts[1:], rows]):
        step[s:e] = np.arange(e - s)
    task = traj // group
    lengths = rng.integers(8, tokens + 1, rows)
    mask = (torch.arange(tokens)[None, :] < torch.as_tensor(lengths)[:, None]).to(torch.int64)
    scores = torch.zeros(rows, tokens)
    scores[torch.arange(rows), torch.as_tensor(lengths - 1)] = torch.as_tensor(rng.random(rows), dtype=torch.float32)
    # 3SPO: the children of one expanded node, n(s) = 2..8 rows each (n = 1 gives no update row)
    sizes = rng.integers(2, 9, rows // 2)
    parent = np.repeat(np.arange(sizes.size), sizes)[:rows]
    meta = {
        "task_id": np.array([f"task{t}" for t in task], dtype=object),
        "traj_id": np.array([f"traj{t}" for t in traj], dtype=object),
        "step_index": step,
        "state_key": np.array([f"room{rng.integers(0, 20)}|held{rng.integers(0, 5)}" for _ in range(rows)],
                              dtype=object),
        "parent_node_id": np.array([f"node{p}" for p in parent], dtype=object),
        "is_padding": np.zeros(rows, dtype=bool),
    }
    return scores, mask, meta


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    scores, mask, meta = make_batch(args.rows, args.tokens)
    uid = meta["task_id"]
    grpo = core_algos.compute_grpo_outcome_advantage
    grpo_vec = core_algos.compute_grpo_vectorized_outcome_advantage
    threespo = core_algos.get_adv_estimator_fn("3spo")
    gigpo = core_algos.get_adv_estimator_fn("gigpo")
    kw = dict(token_level_rewards=scores, response_mask=mask, index=uid)
    with row_metadata(meta):
        t_grpo = timed(lambda: grpo(**kw), args.repeats)
        t_grpo_vec = timed(lambda: grpo_vec(**kw), args.repeats)
        t_gigpo = timed(lambda: gigpo(**kw), args.repeats)
        t_3spo = timed(lambda: threespo(**kw), args.repeats)
    print(f"rows: {args.rows:,}  tokens/row: {args.tokens}  repeats: {args.repeats} (median)  "
          f"3spo groups: {len(np.unique(meta['parent_node_id'])):,}  gigpo anchor groups: "
          f"{len(set(zip(meta['task_id'], meta['state_key']))):,}")
    print(f"verl grpo            : {t_grpo * 1e3:8.1f} ms")
    print(f"verl grpo_vectorized : {t_grpo_vec * 1e3:8.1f} ms   (for reference)")
    print(f"gigpo                : {t_gigpo * 1e3:8.1f} ms   gigpo/grpo = {t_gigpo / t_grpo:.2f}")
    print(f"3spo                 : {t_3spo * 1e3:8.1f} ms")
    print(f"3spo/grpo = {t_3spo / t_grpo:.2f}  (goal <= 3)")

if __name__ == "__main__":
    main()
