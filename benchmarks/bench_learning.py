"""Learning curves of 3SPO, GRPO, GiGPO, SPA, PPO and SPA-PPO on the CPU learning testbed, at equal env-step budgets.

    python benchmarks/bench_learning.py                 # 3 seeds x 7 algorithms x 12 updates (hours; not yet run whole)
    python benchmarks/bench_learning.py --algos 3spo,3spo_paper,grpo --grpo-steps 4 --val-every 2   # 30 min
    python benchmarks/bench_learning.py --quick         # 1 seed, a short budget: a smoke run
    python benchmarks/bench_learning.py --algos 3spo,grpo --seeds 3 --out runs/bench_learning

Protocol (docs/DESIGN.md §8, the testbed in threespo_verl/testbed.py): every run starts from ``tiny-qwen2-bc``
(``threespo-verl setup model tiny-qwen2-bc``) and trains through verl's real loop on household ``easy_train``
(``data.train_batch_size`` tasks at a time, G = ``--group`` episodes per task for the episode algorithms, g_max = G
for 3SPO), with the same learning rate, mini-batches of ``algorithm.mini_batch_rows`` rows, outcome (success) and
invalid-action penalty. Budgets are equal in env steps: a GRPO step spends at most tasks x G x H env steps, and so
does a step of ``3spo`` (one update once the batch's trees are done, Eq.2 re-scored from their statistics); a step of
``3spo_paper`` (the paper's timing: an update after every expansion round, Eq.2 from the round's snapshot) is one
round of at most tasks x G env steps, so it gets H times the steps (``testbed.steps_per_update``). Trees that spend
less than their budget (pruned, solved, out of trajectories) leave env steps unspent: the table reports what each run
used. Validation plays the 32 held-out ``easy_test`` tasks once, sampling at temperature 1, before training and every
``--val-every`` GRPO-step equivalents. SPA (``spa`` and ``spa_ppo``) first collects trajectories with the initial
policy and trains its progress estimator on them (``threespo-verl spa collect`` / ``train-estimator`` with
``testbed.SPA_ESTIMATOR``; the same for every seed). PPO and SPA-PPO train verl's critic on one row per episode
(``testbed.algorithm_overrides``).

Per algorithm it prints mean +- 95% CI (t distribution over seeds) of: validation success at fixed env-step
checkpoints (the last validation at or before each), final success, the gain (final - initial success of each
seed; the 95% CI says whether training moved the policy), the area under the success-vs-env-steps curve
(normalised by the budget), env steps to reach ``--target`` success, cumulative unique states, LLM calls and
optimizer steps; it writes ``curves.png`` and ``results.md`` under ``--out``. The last line reads
``3spo/grpo: final success X.XX, auc X.XX, convergence X.XX, unique states X.XX`` (ratios of the means;
convergence = GRPO's env steps to target / 3SPO's; a run that never reaches the target counts the whole budget).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from threespo_verl import testbed
from threespo_verl.verl_glue import metrics_log

VAL = "val-core/household/success"
EPISODE_ALGOS = ("grpo", "gigpo", "spa", "spa_ppo", "ppo")


def _t95(n: int) -> float:
    """Two-sided 95% t quantile for n - 1 degrees of freedom (n <= 30; normal beyond)."""
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
    return table.get(n - 1, 2.0 if n - 1 <= 30 else 1.96)


def mean_ci(values) -> tuple[float, float]:
    """(mean, half-width of the 95% confidence interval); the half-width is nan for a single value."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    if v.size == 1:
        return float(v[0]), float("nan")
    return float(v.mean()), float(_t95(v.size) * v.std(ddof=1) / math.sqrt(v.size))


def curve(rows) -> tuple[np.ndarray, np.ndarray]:
    """(cumulative env steps, validation success) of one run's metrics log; step 0 sits at 0 env steps."""
    xs, ys = [], []
    for r in rows:
        if VAL in r:
            xs.append(0.0 if r["step"] == 0 else float(r.get("explore/cumulative_env_steps", 0)))
            ys.append(float(r[VAL]))
    return np.asarray(xs), np.asarray(ys)


def at(xs, ys, x: float) -> float:
    """The last validation at or before env step ``x``."""
    keep = xs <= x
    return float(ys[keep][-1]) if keep.any() else float("nan")


def auc(xs, ys, budget: float) -> float:
    """Area under the step-function success curve on [0, budget], divided by the budget (a success rate)."""
    if xs.size == 0:
        return float("nan")
    edges = np.append(np.clip(xs, 0, budget), budget)
    return float(np.sum(ys * np.diff(edges)) / budget)


def steps_to(xs, ys, target: float, budget: float) -> float:
    hit = np.nonzero(ys >= target)[0]
    return float(xs[hit[0]]) if hit.size else float(budget)


def last(rows, key: str) -> float:
    vals = [r[key] for r in rows if key in r]
    return float(vals[-1]) if vals else float("nan")


def spa_estimator(model: Path, out: Path, tasks: int, m: int, lr: float, epochs: int) -> Path:
    """SPA stages 2-3 on the testbed with the initial policy (``testbed.SPA_ESTIMATOR``; resumable: a finished
    estimator trained with these settings is reused, one trained with others is trained again)."""
    pe = out / "pe"
    if (pe / "spa_pe.json").exists():
        done = json.loads((pe / "spa_pe.json").read_text())["metrics"]
        if (done["lr"], done["epochs"], done["n_trajectories"]) == (lr, epochs, tasks * m):
            return pe
    traj = out / "traj.jsonl"
    env = testbed.ENV
    base = [sys.executable, "-m", "threespo_verl.cli", "spa"]
    subprocess.run([*base, "collect", "--env", "household", "--split", env["train_split"], "--tasks", str(tasks),
                    "--m", str(m), "--model", str(model), "--out", str(traj), "--max-steps", str(env["max_steps"]),
                    "--history-length", str(env["history_length"]), "--no-reasoning", "--constrain-actions"],
                   check=True)
    subprocess.run([*base, "train-estimator", "--data", str(traj), "--model", str(model), "--out", str(pe),
                    "--lr", str(lr), "--epochs", str(epochs)], check=True)
    return pe


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--algos", default=",".join(testbed.ALGORITHMS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--grpo-steps", type=int, default=12, help="GRPO-step equivalents of env-step budget")
    ap.add_argument("--val-every", type=int, default=3, help="validate every N GRPO-step equivalents")
    ap.add_argument("--tasks", type=int, default=4, help="data.train_batch_size")
    ap.add_argument("--group", type=int, default=8, help="G: episodes per task = 3SPO's g_max")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--mini-batch-rows", type=int, default=64)
    ap.add_argument("--target", type=float, default=0.5, help="validation success that counts as converged")
    ap.add_argument("--model", type=Path, default=None, help="default: tiny-qwen2-bc (installed on first use)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_learning"))
    ap.add_argument("--quick", action="store_true", help="1 seed, 3SPO and GRPO, 4 GRPO-step equivalents")
    a = ap.parse_args(argv)
    if a.quick:
        a.seeds, a.grpo_steps, a.val_every, a.algos = 1, 4, 2, "3spo,grpo"
    algos = [x.strip() for x in a.algos.split(",") if x.strip()]
    from threespo_verl import models

    model = Path(a.model) if a.model else models.install(name="tiny-qwen2-bc")
    h = int(testbed.ENV["max_steps"])
    budget = float(a.grpo_steps * a.tasks * a.group * h)  # env steps per run (upper bound of GRPO's spend)
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    common = [*testbed.overrides(), f"actor_rollout_ref.model.path={model}", f"data.train_batch_size={a.tasks}",
              f"actor_rollout_ref.actor.optim.lr={a.lr}", f"algorithm.mini_batch_rows={a.mini_batch_rows}",
              "trainer.save_freq=-1", "trainer.val_before_train=true"]
    runs: dict[str, list[list[dict]]] = {}
    walls: dict[str, list[float]] = {}
    t_start = time.time()
    for algo in algos:
        scale = testbed.steps_per_update(algo, h)
        extra = list(testbed.algorithm_overrides(algo, a.group))
        if algo in ("spa", "spa_ppo"):
            extra.append(f"algorithm.spa.estimator_path={spa_estimator(model, out / 'spa', **testbed.SPA_ESTIMATOR)}")
        for seed in range(a.seeds):
            run_dir = out / f"{algo}-seed{seed}"
            if not (run_dir / "done.json").exists():
                if run_dir.exists():  # a run cut short (killed): start it again from scratch, not on its old log
                    shutil.rmtree(run_dir)
                wall = testbed.run_training(
                    [*common, *extra, f"data.seed={seed}", f"trainer.test_freq={a.val_every * scale}",
                     f"algorithm.threespo.sample_seed={seed}"],
                    run_dir, a.grpo_steps * scale, f"{algo} seed {seed}")
                (run_dir / "done.json").write_text(json.dumps({"wall_s": wall}))
            runs.setdefault(algo, []).append(metrics_log.read(str(run_dir / "metrics.jsonl")))
            walls.setdefault(algo, []).append(json.loads((run_dir / "done.json").read_text())["wall_s"])
    report(runs, walls, budget, a, out, time.time() - t_start)
    return 0


def report(runs, walls, budget, a, out: Path, total_s: float) -> None:
    checkpoints = [budget * f for f in (0.25, 0.5, 0.75, 1.0)]
    stats: dict[str, dict[str, tuple[float, float]]] = {}
    lines = ["# Learning benchmark (CPU testbed)\n",
             f"household easy_train -> easy_test (32 held-out tasks), tiny-qwen2-bc, {a.tasks} tasks/step, "
             f"G={a.group}, H={testbed.ENV['max_steps']}, lr {a.lr}, mini-batches of {a.mini_batch_rows} rows, "
             f"budget {budget:.0f} env steps per run, {a.seeds} seed(s); mean +- 95% CI over seeds. Total wall time "
             f"{total_s / 60:.1f} min.\n",
             "| algorithm | initial | " + " | ".join(f"@{c:.0f}" for c in checkpoints)
             + " | final | gain | AUC | env steps to target | env steps used | unique states | LLM calls "
             "| optimizer steps | wall min |",
             "|---" * (11 + len(checkpoints)) + "|"]
    for algo, rs in runs.items():
        curves = [curve(r) for r in rs]
        s = {
            "initial": mean_ci([ys[0] if ys.size else None for _, ys in curves]),
            "final": mean_ci([ys[-1] if ys.size else None for _, ys in curves]),
            "gain": mean_ci([ys[-1] - ys[0] if ys.size else None for _, ys in curves]),
            "auc": mean_ci([auc(xs, ys, budget) for xs, ys in curves]),
            "to_target": mean_ci([steps_to(xs, ys, a.target, budget) for xs, ys in curves]),
            "unique": mean_ci([last(r, "explore/cumulative_unique_states") for r in rs]),
            "llm": mean_ci([last(r, "explore/cumulative_llm_calls") for r in rs]),
            "optim": mean_ci([last(r, "actor/cumulative_optimizer_steps") for r in rs]),
            "wall": mean_ci([w / 60 for w in walls[algo]]),
            "env_steps": mean_ci([last(r, "explore/cumulative_env_steps") for r in rs]),
        }
        for c in checkpoints:
            s[f"@{c:.0f}"] = mean_ci([at(xs, ys, c) for xs, ys in curves])
        stats[algo] = s

        def f(k, pct=False):
            m, ci = s[k]
            scale = 100 if pct else 1
            return f"{m * scale:.1f}" + ("" if math.isnan(ci) else f" +- {ci * scale:.1f}")

        lines.append(f"| {algo} | {f('initial', True)} | " + " | ".join(f(f'@{c:.0f}', True) for c in checkpoints)
                     + f" | {f('final', True)} | {f('gain', True)} | {f('auc', True)} | {f('to_target')} | "
                     f"{f('env_steps')} | {f('unique')} | {f('llm')} | {f('optim')} | {f('wall')} |")
    text = "\n".join(lines) + "\n"
    _plot(runs, out / "curves.png", budget)
    (out / "results.md").write_text(text + "\n![curves](curves.png)\n")
    print(text)
    print(f"results: {out / 'results.md'}, curves: {out / 'curves.png'}")
    if "3spo" in stats and "grpo" in stats:
        t, g = stats["3spo"], stats["grpo"]
        ratio = lambda x, y: x / y if y else float("nan")  # noqa: E731
        print(f"3spo/grpo: final success {ratio(t['final'][0], g['final'][0]):.2f}, "
              f"auc {ratio(t['auc'][0], g['auc'][0]):.2f}, "
              f"convergence {ratio(g['to_target'][0], t['to_target'][0]):.2f}, "
              f"unique states {ratio(t['unique'][0], g['unique'][0]):.2f}")


def _plot(runs, path: Path, budget: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (algo, rs) in enumerate(runs.items()):
        color = f"C{i}"
        for j, r in enumerate(rs):
            xs, ys = curve(r)
            ax.step(xs, ys, where="post", color=color, alpha=0.35 if len(rs) > 1 else 1.0,
                    label=algo if j == 0 else None)
        grid = np.linspace(0, budget, 50)
        mean = np.nanmean([[at(*curve(r), x) for x in grid] for r in rs], axis=0)
        if len(rs) > 1:
            ax.plot(grid, mean, color=color, lw=2.5)
    ax.set_xlabel("env steps (cumulative)")
    ax.set_ylabel("held-out success (easy_test, T=1)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("CPU learning testbed")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
