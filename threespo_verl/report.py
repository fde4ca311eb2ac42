"""Compare training runs from their metrics logs: markdown + PNG plots (``threespo-verl report RUN_DIR ...``).

A run directory is a trainer's ``trainer.default_local_dir`` (it holds ``metrics.jsonl``, see
``verl_glue/metrics_log.py``) or a folder with that file anywhere below it. Plots (one line per run):

* ``success_vs_step.png`` / ``success_vs_env_steps.png``: training success (``train/episode_success``, the success
  rate of the trajectories that finished in the step, logged the same way for every algorithm; logs written before it
  existed fall back to ``explore/success`` / ``episode/success``) against the training step and the cumulative env
  steps, with the fixed-panel validation success as markers where it was measured;
* ``unique_states.png``: cumulative distinct states visited against cumulative env steps;
* ``n_hist.png``: the n(s) histogram of 3SPO runs (how many actions were sampled per expanded node; 0 = pruned);
* ``reward_components.png``: 3SPO's Eq.2 parts per step (novelty, score difference, success, penalty);
* ``pruned_rate.png``: 3SPO's share of pruned nodes and of singleton groups per step;
* ``spa_reward_components.png``: SPA's progress and grounding parts per step (SPA runs only);
* ``critic.png``: the critic's explained variance per step, ``critic/vf_explained_var`` = 1 - Var(G - V) / Var(G)
  over the action tokens (runs with a critic: PPO, SPA-PPO; 1 = the values predict the returns, <= 0 = no better
  than their mean).

The markdown table lists per run: steps, env steps, LLM calls, unique states, last training success, validation
success overall and per task type, seconds per step, and, when a run has a critic, its last explained variance.
"""

from __future__ import annotations

import argparse
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from threespo_verl.verl_glue import metrics_log

SUCCESS_KEYS = ("train/episode_success", "explore/success", "episode/success")
#: verl's explained variance of the critic's values (``compute_data_metrics``), logged every step a critic runs
VF_EXPLAINED_VAR = "critic/vf_explained_var"


def find_log(run: Path) -> Path:
    run = Path(run)
    if run.is_file():
        return run
    direct = run / "metrics.jsonl"
    if direct.exists():
        return direct
    found = sorted(run.rglob("metrics.jsonl"))
    if not found:
        raise FileNotFoundError(f"no metrics.jsonl in {run}: pass a run's trainer.default_local_dir")
    return found[0]


def load_run(run: Path, name: str | None = None) -> dict[str, Any]:
    log = find_log(run)
    rows = metrics_log.read(str(log))
    if not rows:
        raise ValueError(f"{log} has no complete metric lines yet")
    algo = next((r.get("algorithm") for r in rows if isinstance(r.get("algorithm"), str)), "?")
    return {"name": name or f"{Path(run).name} ({algo})", "algorithm": algo, "rows": rows, "log": log}


def _series(rows, key, x="step"):
    """(x, y) of ``key`` over the log; the step-0 row (initial validation) sits at x = 0 on cumulative axes."""
    xs, ys = [], []
    for r in rows:
        if key not in r or (isinstance(r[key], float) and math.isnan(r[key])):
            continue
        if x == "step" or x in r or r["step"] == 0:
            xs.append(r["step"] if x == "step" else r.get(x, 0))
            ys.append(r[key])
    return xs, ys


def _success_key(rows) -> str | None:
    for k in SUCCESS_KEYS:
        if any(k in r for r in rows):
            return k
    return None


def _val_keys(rows) -> dict[str, str]:
    """'overall' or task type -> metric key of the validation success."""
    out = {}
    for r in rows:
        for k in r:
            m = re.fullmatch(r"val-core/([^/]+)/success(?:/([^/]+))?", k)
            if m:
                out[m.group(2) or "overall"] = k
    return out


def _last(rows, key):
    vals = [r[key] for r in rows if key in r]
    return vals[-1] if vals else None


def summary(run: dict[str, Any]) -> dict[str, Any]:
    rows = run["rows"]
    sk = _success_key(rows)
    val = {t: _last(rows, k) for t, k in _val_keys(rows).items()}
    step_s = [r["timing_s/step"] for r in rows if "timing_s/step" in r]
    return {
        "run": run["name"], "algorithm": run["algorithm"], "steps": rows[-1]["step"],
        "env_steps": _last(rows, "explore/cumulative_env_steps"),
        "llm_calls": _last(rows, "explore/cumulative_llm_calls"),
        "unique_states": _last(rows, "explore/cumulative_unique_states"),
        "train_success": _last(rows, sk) if sk else None, "val": val,
        "s_per_step": (sum(step_s) / len(step_s)) if step_s else None,
        "vf_explained_var": _last(rows, VF_EXPLAINED_VAR),
    }


def _fmt(v, pct=False):
    if v is None:
        return "-"
    if pct:
        return f"{100 * v:.1f}%"
    if isinstance(v, float) and not v.is_integer():
        return f"{v:.2f}"
    return f"{int(v)}"


def _fmt_float(v):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def plot_runs(runs: list[dict[str, Any]], out: Path) -> list[Path]:
    """Write the PNGs of the module docstring into ``out``; returns their paths in the report's order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    figs = _Figures(plt, runs, out)
    for xkey, name, xlabel in (("step", "success_vs_step.png", "training step"),
                               ("explore/cumulative_env_steps", "success_vs_env_steps.png", "env steps (cumulative)")):
        figs.success(xkey, name, xlabel)
    figs.unique_states()
    hist_runs = [r for r in runs if any(k.startswith("explore/n_hist/") for row in r["rows"] for k in row)]
    if hist_runs:
        figs.n_hist(hist_runs)
        figs.lines(hist_runs, [(f"explore/reward/{c}_mean", st, c) for c, st in
                               (("r_novel", "-"), ("r_score_diff", "--"), ("r_success", ":"), ("r_penalty", "-."))],
                   "mean per update row", "3SPO step-reward components (Eq.2)", "reward_components.png")
        figs.lines(hist_runs, [("explore/pruned_rate", "-", "pruned nodes"),
                               ("explore/singleton_group_rate", "--", "singleton groups")],
                   "share of expanded nodes", "pruning and singleton groups", "pruned_rate.png", ylim=(-0.02, 1.02))
    spa_runs = [r for r in runs if any("reward/progress_mean" in row for row in r["rows"])]
    if spa_runs:
        figs.lines(spa_runs, [("reward/progress_mean", "-", "alpha_p c_t"),
                              ("reward/grounding_mean", "--", "beta g_t")],
                   "mean per step row", "SPA step-reward components", "spa_reward_components.png")
    critic_runs = [r for r in runs if any(VF_EXPLAINED_VAR in row for row in r["rows"])]
    if critic_runs:
        figs.lines(critic_runs, [(VF_EXPLAINED_VAR, "-", "explained variance")],
                   "1 - Var(G - V) / Var(G)", "critic: explained variance of the returns", "critic.png")
    return figs.written


class _Figures:
    """The report's plots, one method per kind; each run keeps its colour (``C<index in runs>``) in every plot."""

    def __init__(self, plt, runs: list[dict[str, Any]], out: Path) -> None:
        self.plt, self.runs, self.out = plt, runs, out
        self.written: list[Path] = []

    def color(self, run) -> str:
        return f"C{self.runs.index(run)}"

    def save(self, fig, ax, *, xlabel: str, ylabel: str, title: str, legend_size: int = 8, ylim=None,
             grid_axis: str = "both", name: str) -> None:
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if ylim:
            ax.set_ylim(*ylim)
        ax.grid(alpha=0.3, axis=grid_axis)
        ax.legend(fontsize=legend_size)
        ax.set_title(title)
        p = self.out / name
        fig.tight_layout()
        fig.savefig(p, dpi=110)
        self.plt.close(fig)
        self.written.append(p)

    def lines(self, which, series, ylabel, title, name, ylim=None) -> None:
        """One line per (run, metric key) against the training step."""
        fig, ax = self.plt.subplots(figsize=(6.4, 4))
        for run in which:
            for key, style, label in series:
                xs, ys = _series(run["rows"], key)
                if xs:
                    ax.plot(xs, ys, style, marker="o", ms=3, color=self.color(run), label=f"{run['name']} {label}")
        self.save(fig, ax, xlabel="training step", ylabel=ylabel, title=title, legend_size=7, ylim=ylim, name=name)

    def success(self, xkey: str, name: str, xlabel: str) -> None:
        """Training success (line) and fixed-panel validation success (markers) against ``xkey``."""
        fig, ax = self.plt.subplots(figsize=(6.4, 4))
        for run in self.runs:
            sk = _success_key(run["rows"])
            if sk:
                xs, ys = _series(run["rows"], sk, xkey)
                ax.plot(xs, ys, "-", color=self.color(run), label=f"{run['name']} train")
            vk = _val_keys(run["rows"]).get("overall")
            if vk:
                xs, ys = _series(run["rows"], vk, xkey)
                ax.plot(xs, ys, "s--", color=self.color(run), label=f"{run['name']} validation (fixed panel)")
        self.save(fig, ax, xlabel=xlabel, ylabel="success rate", title="success", ylim=(-0.02, 1.02), name=name)

    def unique_states(self) -> None:
        fig, ax = self.plt.subplots(figsize=(6.4, 4))
        for run in self.runs:
            xs, ys = _series(run["rows"], "explore/cumulative_unique_states", "explore/cumulative_env_steps")
            ax.plot(xs, ys, "o-", color=self.color(run), label=run["name"], markersize=3)
        self.save(fig, ax, xlabel="env steps (cumulative)", ylabel="distinct states visited (cumulative)",
                  title="state exploration", name="unique_states.png")

    def n_hist(self, hist_runs) -> None:
        """3SPO's n(s) histogram: side-by-side bars per run."""
        fig, ax = self.plt.subplots(figsize=(6.4, 4))
        width = 0.8 / len(hist_runs)
        for i, run in enumerate(hist_runs):
            counts: dict[int, float] = defaultdict(float)
            for r in run["rows"]:
                for k, v in r.items():
                    if k.startswith("explore/n_hist/"):
                        counts[int(k.rsplit("/", 1)[1])] += v
            ns = sorted(counts)
            ax.bar([n + (i - (len(hist_runs) - 1) / 2) * width for n in ns], [counts[n] for n in ns], width,
                   label=run["name"], color=self.color(run))
        self.save(fig, ax, xlabel="n(s) = branches sampled at an expanded node (0 = pruned)", ylabel="nodes",
                  title="adaptive branching", grid_axis="y", name="n_hist.png")


def write_report(run_dirs: list[Path], out: Path, names: list[str] | None = None, title: str = "Runs",
                 notes: str = "") -> Path:
    runs = [load_run(Path(d), (names or [None] * len(run_dirs))[i]) for i, d in enumerate(run_dirs)]
    pngs = plot_runs(runs, out)
    sums = [summary(r) for r in runs]
    types = sorted({t for s in sums for t in s["val"] if t != "overall"})
    critic = any(s["vf_explained_var"] is not None for s in sums)
    head = ["run", "steps", "env steps", "LLM calls", "unique states", "train success", "val success",
            *[f"val {t}" for t in types], "s/step", *(["critic expl. var"] if critic else [])]
    lines = [f"# {title}", "", notes, "" if notes else "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for s in sums:
        cells = [s["run"], _fmt(s["steps"]), _fmt(s["env_steps"]), _fmt(s["llm_calls"]), _fmt(s["unique_states"]),
                 _fmt(s["train_success"], pct=True), _fmt(s["val"].get("overall"), pct=True),
                 *[_fmt(s["val"].get(t), pct=True) for t in types], _fmt(s["s_per_step"]),
                 *([_fmt_float(s["vf_explained_var"])] if critic else [])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *[f"![{p.stem}]({p.name})" for p in pngs], "",
              "Logs: " + ", ".join(f"`{r['log']}`" for r in runs), ""]
    md = out / "report.md"
    md.write_text("\n".join(ln for ln in lines if ln is not None))
    return md


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="threespo-verl report", description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run directories (trainer.default_local_dir) or metrics.jsonl")
    ap.add_argument("--out", type=Path, default=Path("runs/report"), help="folder for report.md and the PNGs")
    ap.add_argument("--title", default="Runs")
    a = ap.parse_args(argv)
    md = write_report(a.runs, a.out, title=a.title)
    print(f"report: {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
