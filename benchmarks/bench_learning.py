"""Learning benchmark: 3SPO (its three forms), GRPO, GiGPO, SPA, PPO and SPA-PPO on the CPU learning testbeds, at
equal env-step budgets, with statistics that can rank them (DESIGN §8).

    python benchmarks/bench_learning.py --testbed easy                       # every algorithm, 5 seeds (hours)
    python benchmarks/bench_learning.py --testbed easy --algos 3spo,grpo --seeds 5
    python benchmarks/bench_learning.py --testbed easy,medium --algos 3spo,grpo --tune-lrs 1e-4,3e-4,1e-3
    python benchmarks/bench_learning.py --quick                              # 1 seed, 3SPO and GRPO, a short budget

Protocol (the testbeds are threespo_verl/testbed.py's ``TESTBEDS``):

* **Budgets in env steps.** Every run ends once it has spent ``--budget`` env steps (``trainer.total_env_steps``;
  the update that reaches it is the last, so an episode algorithm may overshoot by part of one step, reported) and
  validates the whole held-out panel after the first update at or past each of ``--checkpoints`` equally spaced
  env-step checkpoints (``trainer.val_every_env_steps``), the same for every algorithm, plus once before training.
  "Final" is the validation at the budget. LLM calls and optimizer steps are reported beside env steps.
* **Equal optimizer work.** Every algorithm takes one optimizer step per ``--env-steps-per-optimizer-step`` env steps
  (``algorithm.env_steps_per_optimizer_step``), at least one per update. Post-step 3SPO updates after every round, so
  it takes more steps than that; hence every algorithm is also reported at its best of ``--tune-lrs`` learning
  rates, chosen by final success on a tuning panel (the first ``--tune-tasks`` training tasks, disjoint from the
  held-out panel) over ``--tune-seeds`` seeds.
* **Statistics.** Held-out panels of ``testbed.panel_tasks`` tasks (>= 128), each validation's binomial standard
  error printed; ``--seeds`` seeds (default 5), the same seeds and panel for every algorithm; every algorithm's
  difference from GRPO in final success and in AUC (area under the success-vs-env-steps step curve over [0, budget],
  divided by the budget) with a 95% CI from the per-seed paired differences (t distribution), marked significant
  when the interval excludes 0.
* **Resumable.** Each (testbed, lr, algorithm, seed) run has its own folder under ``--out``; a finished one
  (``done.json``) is reused, an unfinished one (a killed run) is started again from scratch. So a long grid can run
  in several sittings; ``--report-only`` prints the tables of what has finished.

Outputs per testbed: ``<out>/<testbed>/results.md`` (the tables, seeds, commit), ``curves.png`` (held-out success
against env steps, LLM calls and optimizer steps). Per testbed a line
``3spo/grpo (<testbed>): final success X.XX, auc X.XX, convergence X.XX, unique states X.XX`` (ratios of the means;
convergence = GRPO's env steps to ``--target`` success / 3SPO's, interpolated between validations, a run that never
reaches it counting the whole budget); the last line is the same line without the testbed name, for the last testbed
given.
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

from threespo_verl import testbed as tb
from threespo_verl.verl_glue import metrics_log

#: env-step budgets per testbed (``--budget`` overrides): 8 GRPO steps of 4 tasks x 8 episodes x H
DEFAULT_BUDGET_GRPO_STEPS = 8
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def _t95(n: int) -> float:
    """Two-sided 95% t quantile for n - 1 degrees of freedom (n <= 11; 2.0 up to 31; normal beyond)."""
    return T95.get(n - 1, 2.0 if n - 1 <= 30 else 1.96)


def mean_ci(values) -> tuple[float, float]:
    """(mean, half-width of the 95% confidence interval); the half-width is nan for a single value."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    if v.size == 1:
        return float(v[0]), float("nan")
    return float(v.mean()), float(_t95(v.size) * v.std(ddof=1) / math.sqrt(v.size))


def paired_ci(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, int]:
    """(mean of a - b, 95% half-width, pairs) over the seeds both have: the paired comparison of two algorithms."""
    seeds = sorted(set(a) & set(b))
    m, half = mean_ci([a[s] - b[s] for s in seeds])
    return m, half, len(seeds)


def significant(mean: float, half: float) -> bool:
    return not (math.isnan(half) or abs(mean) <= half)


def curve(rows, val_key: str, x_key: str = "explore/cumulative_env_steps") -> tuple[np.ndarray, np.ndarray]:
    """(x, held-out success) of one run's metrics log at each validation; step 0 (before training) sits at x = 0."""
    xs, ys = [], []
    for r in rows:
        if val_key in r:
            xs.append(0.0 if r["step"] == 0 else float(r.get(x_key, 0)))
            ys.append(float(r[val_key]))
    return np.asarray(xs), np.asarray(ys)


def at_checkpoint(xs, ys, c: float) -> float:
    """The validation that stands for env-step checkpoint ``c``: the first one at or past it (the trainer validates
    after the first update that reaches a checkpoint); nan when the run never reached it."""
    hit = np.nonzero(xs >= c)[0]
    return float(ys[hit[0]]) if hit.size else float("nan")


def auc(xs, ys, budget: float) -> float:
    """Area under the step-function success curve on [0, budget], divided by the budget (a success rate). A run
    ends at or past its budget, so no value is carried beyond the run's last validation."""
    if xs.size == 0:
        return float("nan")
    edges = np.append(np.clip(xs, 0, budget), budget)
    return float(np.sum(ys * np.diff(edges)) / budget)


def steps_to(xs, ys, target: float, budget: float) -> float:
    """Env steps to reach ``target`` success, linearly interpolated between the validations around the first one
    at or above it; the whole budget when never reached."""
    hit = np.nonzero(ys >= target)[0]
    if not hit.size:
        return float(budget)
    i = int(hit[0])
    if i == 0 or ys[i] == ys[i - 1]:
        return float(xs[i])
    frac = (target - ys[i - 1]) / (ys[i] - ys[i - 1])
    return float(xs[i - 1] + frac * (xs[i] - xs[i - 1]))


def binomial_se(p: float, n: int) -> float:
    """Standard error of a success rate p measured on n episodes (one validation of an n-task panel)."""
    return float(math.sqrt(max(p * (1 - p), 0.0) / n)) if n else float("nan")


def last(rows, key: str) -> float:
    vals = [r[key] for r in rows if key in r]
    return float(vals[-1]) if vals else float("nan")


def mean_of(rows, key: str) -> float:
    vals = [float(r[key]) for r in rows if key in r]
    return float(np.mean(vals)) if vals else float("nan")


def spa_estimator(model: Path, out: Path, tasks: int, m: int, lr: float, epochs: int, bed: tb.Testbed = tb.EASY) -> Path:
    """SPA stages 2-3 on the testbed with the initial policy (``testbed.SPA_ESTIMATOR``; resumable: a finished
    estimator trained with these settings is reused, one trained with others is trained again)."""
    pe = out / "pe"
    if (pe / "spa_pe.json").exists():
        done = json.loads((pe / "spa_pe.json").read_text())["metrics"]
        if (done["lr"], done["epochs"], done["n_trajectories"]) == (lr, epochs, tasks * m):
            return pe
    traj = out / "traj.jsonl"
    env = bed.env
    base = [sys.executable, "-m", "threespo_verl.cli", "spa"]
    subprocess.run([*base, "collect", "--env", env["name"], "--split", env["train_split"], "--tasks", str(tasks),
                    "--m", str(m), "--model", str(model), "--out", str(traj), "--max-steps", str(env["max_steps"]),
                    "--history-length", str(env["history_length"]), "--no-reasoning", "--constrain-actions"],
                   check=True)
    subprocess.run([*base, "train-estimator", "--data", str(traj), "--model", str(model), "--out", str(pe),
                    "--lr", str(lr), "--epochs", str(epochs)], check=True)
    return pe


def run_overrides(bed: tb.Testbed, algo: str, model: Path, a, lr: float, seed: int, budget: int, tune: bool,
                  estimator: Path | None) -> list[str]:
    """The Hydra overrides of one benchmark run (``threespo_trainer_cpu``)."""
    every = max(1, budget // a.checkpoints)
    val = (["env.eval_panel=" + bed.env["train_split"], f"data.val_max_samples={a.tune_tasks}"] if tune else [])
    return [*bed.overrides(), *val, *tb.algorithm_overrides(algo, a.group), f"actor_rollout_ref.model.path={model}",
            f"data.train_batch_size={a.tasks}", f"actor_rollout_ref.actor.optim.lr={lr}",
            f"algorithm.env_steps_per_optimizer_step={a.env_steps_per_optimizer_step}",
            f"trainer.total_env_steps={budget}", f"trainer.val_every_env_steps={every}", "trainer.test_freq=-1",
            f"trainer.total_training_steps={budget}", "trainer.save_freq=-1", "trainer.val_before_train=true",
            f"data.seed={seed}", f"algorithm.threespo.sample_seed={seed}",
            *([f"algorithm.spa.estimator_path={estimator}"] if estimator else [])]


def run_grid(bed: tb.Testbed, algos, lrs: dict[str, float], seeds, model: Path, a, out: Path, budget: int,
             tune: bool = False) -> dict[str, dict[int, Path]]:
    """Run (or reuse) every (algorithm, seed) at the algorithm's learning rate; returns algo -> seed -> run folder."""
    found: dict[str, dict[int, Path]] = {}
    for algo in algos:
        estimator = None
        if algo.startswith("spa") and not a.report_only:
            estimator = spa_estimator(model, out / "spa", **tb.SPA_ESTIMATOR, bed=bed)
        for seed in seeds:
            run_dir = out / ("tune" if tune else "runs") / f"lr{lrs[algo]:g}" / f"{algo}-seed{seed}"
            if not (run_dir / "done.json").exists():
                if a.report_only:
                    continue
                if run_dir.exists():  # a run cut short (killed): start it again from scratch, not on its old log
                    shutil.rmtree(run_dir)
                label = f"{bed.name} {algo} s{seed}" + (" tune" if tune else "")
                wall = tb.run_training(run_overrides(bed, algo, model, a, lrs[algo], seed, budget, tune, estimator),
                                       run_dir, budget, label, unit="env steps")
                (run_dir / "done.json").write_text(json.dumps({"wall_s": wall, "lr": lrs[algo], "seed": seed}))
            found.setdefault(algo, {})[seed] = run_dir
    return found


def tune_learning_rates(bed, algos, model, a, out, budget) -> dict[str, float]:
    """Each algorithm's learning rate of ``--tune-lrs`` with the best mean final success on the tuning panel."""
    best: dict[str, float] = {}
    scores: dict[str, dict[float, float]] = {}
    for lr in a.tune_lrs:
        runs = run_grid(bed, algos, dict.fromkeys(algos, lr), range(a.tune_seeds), model, a, out, budget, tune=True)
        for algo, by_seed in runs.items():
            finals = [curve(metrics_log.read(str(d / "metrics.jsonl")), bed.val_metric)[1][-1]
                      for d in by_seed.values()]
            scores.setdefault(algo, {})[lr] = float(np.mean(finals))
    for algo, s in scores.items():
        best[algo] = max(s, key=lambda lr: (s[lr], -abs(math.log(lr / a.lr))))  # ties: the one nearest the shared
        print(f"[{bed.name}] {algo}: tuning-panel final success by lr "
              + ", ".join(f"{lr:g}: {v:.3f}" for lr, v in sorted(s.items())) + f" -> lr {best[algo]:g}")
    return best


def summarize(bed: tb.Testbed, runs: dict[str, dict[int, Path]], budget: int, a) -> dict[str, dict]:
    """Per algorithm: per-seed numbers (for paired differences) and their means with 95% CIs."""
    out = {}
    checkpoints = [budget * (i + 1) / a.checkpoints for i in range(a.checkpoints)]
    for algo, by_seed in runs.items():
        per: dict[str, dict[int, float]] = {}
        ses = []
        curves = {}
        for seed, d in by_seed.items():
            rows = metrics_log.read(str(d / "metrics.jsonl"))
            xs, ys = curve(rows, bed.val_metric)
            if not ys.size:
                continue
            curves[seed] = (rows, xs, ys)
            n = int(rows[0].get(f"val-aux/{bed.env['name']}/episodes", bed.panel_tasks))
            ses.extend(binomial_se(y, n) for y in ys)
            vals = {
                "initial": ys[0], "final": at_checkpoint(xs, ys, budget), "auc": auc(xs, ys, budget),
                "to_target": steps_to(xs, ys, a.target, budget),
                "env_steps": last(rows, "explore/cumulative_env_steps"),
                "unique": last(rows, "explore/cumulative_unique_states"),
                "llm": last(rows, "explore/cumulative_llm_calls"),
                "optim": last(rows, "actor/cumulative_optimizer_steps"),
                "updates": float(max(r["step"] for r in rows)),
                "wall": json.loads((d / "done.json").read_text())["wall_s"] / 60,
                "wait": mean_of(rows, "explore/row_wait_rounds"), "kl": mean_of(rows, "actor/ppo_kl"),
                "clip": mean_of(rows, "actor/pg_clipfrac"),
            }
            vals["gain"] = vals["final"] - vals["initial"]
            for i, c in enumerate(checkpoints):
                vals[f"c{i}"] = at_checkpoint(xs, ys, c)
            for k, v in vals.items():
                per.setdefault(k, {})[seed] = float(v)
        out[algo] = {"per": per, "ci": {k: mean_ci(v.values()) for k, v in per.items()}, "se": float(np.mean(ses))
                     if ses else float("nan"), "curves": curves, "seeds": sorted(curves)}
    return out


def _fmt(m: float, half: float, pct: bool = False, digits: int = 1) -> str:
    scale = 100 if pct else 1
    if math.isnan(m):
        return "-"
    return f"{m * scale:.{digits}f}" + ("" if math.isnan(half) else f" +- {half * scale:.{digits}f}")


def tables(bed: tb.Testbed, stats: dict[str, dict], budget: int, a, title: str) -> list[str]:
    ck = [budget * (i + 1) / a.checkpoints for i in range(a.checkpoints)]
    lines = [f"### {title}", "",
             "| algorithm | seeds | initial | " + " | ".join(f"@{c:.0f}" for c in ck)
             + " | final | gain | AUC | env steps to target | env steps used | updates | LLM calls | optimizer steps "
             "| unique states | val. SE | wall min |",
             "|---" * (13 + len(ck)) + "|"]
    for algo, s in stats.items():
        ci = s["ci"]
        if not s["seeds"]:
            continue
        lines.append(
            f"| {algo} | {len(s['seeds'])} | {_fmt(*ci['initial'], pct=True)} | "
            + " | ".join(_fmt(*ci[f"c{i}"], pct=True) for i in range(len(ck)))
            + f" | {_fmt(*ci['final'], pct=True)} | {_fmt(*ci['gain'], pct=True)} | {_fmt(*ci['auc'], pct=True)} | "
            f"{_fmt(*ci['to_target'], digits=0)} | {_fmt(*ci['env_steps'], digits=0)} | {_fmt(*ci['updates'], digits=0)}"
            f" | {_fmt(*ci['llm'], digits=0)} | {_fmt(*ci['optim'], digits=0)} | {_fmt(*ci['unique'], digits=0)} | "
            f"{100 * s['se']:.1f} | {_fmt(*ci['wall'])} |")
    if "grpo" in stats and stats["grpo"]["seeds"]:
        g = stats["grpo"]["per"]
        lines += ["", "Difference from GRPO (paired by seed; mean +- 95% CI; * = the interval excludes 0):", "",
                  "| algorithm | pairs | final - GRPO (points) | AUC - GRPO (points) |", "|---|---|---|---|"]
        for algo, s in stats.items():
            if algo == "grpo" or not s["seeds"]:
                continue
            cells = []
            for k in ("final", "auc"):
                m, half, n = paired_ci(s["per"][k], g[k])
                cells.append(_fmt(m, half, pct=True) + (" *" if significant(m, half) else ""))
            lines.append(f"| {algo} | {n} | {cells[0]} | {cells[1]} |")
    three = {k: v for k, v in stats.items() if k.startswith("3spo") and v["seeds"]}
    if three:
        lines += ["", "3SPO's forms: rows' wait between sampling and update, and the PPO ratio statistics it causes "
                  "(means over updates):", "", "| form | row wait (rounds) | actor/ppo_kl | actor/pg_clipfrac |",
                  "|---|---|---|---|"]
        for algo, s in three.items():
            ci = s["ci"]
            lines.append(f"| {algo} | {_fmt(*ci['wait'], digits=2)} | {_fmt(*ci['kl'], digits=4)} | "
                         f"{_fmt(*ci['clip'], digits=3)} |")
    return lines


def ratio_line(stats: dict[str, dict]) -> str | None:
    if not ("3spo" in stats and "grpo" in stats and stats["3spo"]["seeds"] and stats["grpo"]["seeds"]):
        return None
    t, g = stats["3spo"]["ci"], stats["grpo"]["ci"]

    def ratio(x, y):
        return x / y if y else float("nan")

    return (f"3spo/grpo: final success {ratio(t['final'][0], g['final'][0]):.2f}, "
            f"auc {ratio(t['auc'][0], g['auc'][0]):.2f}, "
            f"convergence {ratio(g['to_target'][0], t['to_target'][0]):.2f}, "
            f"unique states {ratio(t['unique'][0], g['unique'][0]):.2f}")


def _plot(bed: tb.Testbed, stats: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_keys = [("explore/cumulative_env_steps", "env steps"), ("explore/cumulative_llm_calls", "LLM calls"),
                 ("actor/cumulative_optimizer_steps", "optimizer steps")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), sharey=True)
    for ax, (key, label) in zip(axes, axes_keys):
        for i, (algo, s) in enumerate(stats.items()):
            for j, (rows, _xs, _ys) in enumerate(s["curves"].values()):
                xs, ys = curve(rows, bed.val_metric, key)
                ax.step(xs, ys, where="post", color=f"C{i}", alpha=0.35, label=algo if j == 0 else None)
        ax.set_xlabel(f"{label} (cumulative)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"held-out success ({bed.env['eval_panel']}, T=1)")
    axes[0].set_ylim(-0.02, 1.02)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"CPU learning testbed `{bed.name}`: one line per seed")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def bench_testbed(bed: tb.Testbed, a, root: Path) -> str | None:
    from threespo_verl import models

    model = Path(a.model) if a.model else models.install(name=bed.model)
    unit = tb.grpo_step_env_steps(a.tasks, a.group, bed.horizon)
    budget = int(a.budget or DEFAULT_BUDGET_GRPO_STEPS * unit)
    out = root / bed.name
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    seeds = range(a.seeds)
    shared = run_grid(bed, a.algos, dict.fromkeys(a.algos, a.lr), seeds, model, a, out, budget)
    sections = [(f"All algorithms at the shared learning rate {a.lr:g}", summarize(bed, shared, budget, a))]
    if a.tune_lrs:
        best = tune_learning_rates(bed, a.algos, model, a, out, budget)
        tuned = run_grid(bed, a.algos, best, seeds, model, a, out, budget)
        title = ("Each algorithm at its best of " + ", ".join(f"{x:g}" for x in a.tune_lrs) + " (chosen on the first "
                 f"{a.tune_tasks} {bed.env['train_split']} tasks over {a.tune_seeds} seeds): "
                 + ", ".join(f"{k} {v:g}" for k, v in best.items()))
        sections.append((title, summarize(bed, tuned, budget, a)))
    n_seeds = max((len(s["seeds"]) for _t, st in sections for s in st.values()), default=0)
    head = [f"# Learning benchmark: testbed `{bed.name}`", "",
            f"{bed.description}. Held-out panel: the first {bed.panel_tasks} tasks of `{bed.env['eval_panel']}`, "
            f"validated at T = 1 before training and at {a.checkpoints} env-step checkpoints; {a.tasks} tasks per "
            f"update batch, G = {a.group}, H = {bed.horizon}, budget {budget} env steps per run, one optimizer step "
            f"per {a.env_steps_per_optimizer_step} env steps (at least one per update); {n_seeds} seeds "
            f"(seeds {', '.join(map(str, seeds))}), mean +- 95% CI over seeds (t distribution); the val. SE column "
            f"is the mean binomial standard error of one validation. Commit `{_commit()}`; this invocation "
            f"{(time.time() - t0) / 60:.1f} min.", "",
            f"Command: `python benchmarks/bench_learning.py {' '.join(a.argv)}`", ""]
    body: list[str] = []
    for title, st in sections:
        body += tables(bed, st, budget, a, title) + [""]
    _plot(bed, sections[0][1], out / "curves.png")
    (out / "results.md").write_text("\n".join(head + body) + "\n![curves](curves.png)\n")
    print("\n".join(head + body))
    print(f"results: {out / 'results.md'}, curves: {out / 'curves.png'}")
    line = ratio_line(sections[0][1])
    if line:
        print(line.replace("3spo/grpo:", f"3spo/grpo ({bed.name}):"))
    return line


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--testbed", default="easy", help=f"comma-separated: {', '.join(tb.TESTBEDS)}")
    ap.add_argument("--algos", default=",".join(tb.ALGORITHMS))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budget", type=int, default=None,
                    help=f"env steps per run (default {DEFAULT_BUDGET_GRPO_STEPS} GRPO steps of tasks x G x H)")
    ap.add_argument("--checkpoints", type=int, default=8, help="validations at equally spaced env-step checkpoints")
    ap.add_argument("--tasks", type=int, default=4, help="data.train_batch_size")
    ap.add_argument("--group", type=int, default=8, help="G: episodes per task = 3SPO's g_max")
    ap.add_argument("--lr", type=float, default=3e-4, help="the shared learning rate")
    ap.add_argument("--tune-lrs", default="", help="comma-separated learning rates to tune each algorithm over")
    ap.add_argument("--tune-seeds", type=int, default=2)
    ap.add_argument("--tune-tasks", type=int, default=64, help="tuning panel: the first N training tasks")
    ap.add_argument("--env-steps-per-optimizer-step", type=int, default=tb.ENV_STEPS_PER_OPTIMIZER_STEP)
    ap.add_argument("--target", type=float, default=0.5, help="held-out success that counts as converged")
    ap.add_argument("--model", type=Path, default=None, help="default: the testbed's own (installed on first use)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_learning"))
    ap.add_argument("--report-only", action="store_true", help="tables of the finished runs; start nothing")
    ap.add_argument("--quick", action="store_true", help="1 seed, 3SPO and GRPO, 2 GRPO steps of budget")
    a = ap.parse_args(argv)
    a.argv = argv
    if a.quick:
        a.seeds, a.algos, a.checkpoints = 1, "3spo,grpo", 2
        a.budget = a.budget or 2 * tb.grpo_step_env_steps(a.tasks, a.group, tb.get(a.testbed.split(",")[0]).horizon)
    a.algos = [x.strip() for x in a.algos.split(",") if x.strip()]
    for algo in a.algos:
        tb.algorithm_overrides(algo, a.group)  # an unknown name fails here, before anything runs
    a.tune_lrs = [float(x) for x in a.tune_lrs.split(",") if x.strip()]
    beds = [tb.get(x.strip()) for x in a.testbed.split(",") if x.strip()]
    lines = [bench_testbed(bed, a, a.out.resolve()) for bed in beds]
    if lines[-1]:
        print(lines[-1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
