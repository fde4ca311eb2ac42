"""What ``threespo-verl eval`` reports: success (and score) per task type with mean, std and a 95% interval over
seeds (Student t; a Wilson interval over the panel's tasks with one seed), as markdown and as a console table."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Any

#: ALFWorld's six task types in the order papers report them
TYPE_ORDER = ("pick", "look", "clean", "heat", "cool", "pick2")

#: two-sided 97.5% Student t quantiles for 1..30 degrees of freedom (beyond: 1.96)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


# ------------------------------------------------------------------------------------------------ statistics (pure)
def t975(df: int) -> float:
    return _T975[df - 1] if 1 <= df <= len(_T975) else 1.96


def wilson(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k/n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


def seed_stats(per_seed: list[float], n_tasks: int) -> dict[str, Any]:
    """mean, std (ddof 1) and 95% interval of a rate measured once per seed on ``n_tasks`` tasks.

    S >= 2 seeds: mean +- t_{0.975,S-1} * std / sqrt(S). One seed: Wilson interval of the rate over the tasks."""
    s = len(per_seed)
    mean = sum(per_seed) / s
    if s >= 2:
        std = math.sqrt(sum((x - mean) ** 2 for x in per_seed) / (s - 1))
        half = t975(s - 1) * std / math.sqrt(s)
        lo, hi, how = mean - half, mean + half, f"t over {s} seeds"
    else:
        std = 0.0
        lo, hi = wilson(mean * n_tasks, n_tasks)
        how = f"Wilson over {n_tasks} tasks"
    return {"mean": mean, "std": std, "ci95": [lo, hi], "ci_method": how, "per_seed": per_seed}


def summarize(episodes: list[dict[str, Any]], seeds: list[int], task_types: dict[str, str]) -> dict[str, Any]:
    """Per seed success (and score) overall and per task type, then mean/std/CI over seeds.

    ``episodes``: one dict per (seed, task) with ``won`` and ``score``; ``task_types``: the panel's task id -> type
    (every panel task must have exactly one episode per seed, else ValueError)."""
    by_seed: dict[int, dict[str, dict]] = defaultdict(dict)
    for e in episodes:
        if e["task_id"] in by_seed[e["seed"]]:
            raise ValueError(f"two episodes for task {e['task_id']} seed {e['seed']}")
        by_seed[e["seed"]][e["task_id"]] = e
    for s in seeds:
        missing = set(task_types) - set(by_seed[s])
        if missing:
            raise ValueError(f"seed {s}: {len(missing)} panel tasks have no episode (e.g. {sorted(missing)[0]})")
    types = sorted(set(task_types.values()), key=lambda t: (TYPE_ORDER.index(t) if t in TYPE_ORDER else 99, t))
    groups = {"all": list(task_types)} | {t: [k for k, v in task_types.items() if v == t] for t in types}
    out: dict[str, Any] = {}
    for name, ids in groups.items():
        succ = [sum(bool(by_seed[s][i]["won"]) for i in ids) / len(ids) for s in seeds]
        score = [sum(float(by_seed[s][i]["score"]) for i in ids) / len(ids) for s in seeds]
        out[name] = {"n_tasks": len(ids), "success": seed_stats(succ, len(ids)), "score": seed_stats(score, len(ids))}
    return out


# ------------------------------------------------------------------------------------------------ report
def _pct(st: dict) -> str:
    lo, hi = st["ci95"]
    return f"{100 * st['mean']:.1f} ± {100 * st['std']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def render_markdown(res: dict[str, Any]) -> str:
    card, summ = res["protocol"], res["summary"]
    show_score = card["env"] == "webshop"
    lines = [f"# Evaluation: {card['env']} {card['panel']} ({card['n_tasks']} tasks x {len(card['seeds'])} seeds)", ""]
    head = "| task type | tasks | success % (mean ± std [95% CI]) |" + (" score × 100 |" if show_score else "")
    lines += [head, "|---|---:|---|" + ("---|" if show_score else "")]
    for name, row in summ.items():
        cells = f"| {name} | {row['n_tasks']} | {_pct(row['success'])} |"
        if show_score:
            cells += f" {_pct(row['score'])} |"
        lines.append(cells)
    lines += ["", f"95% interval: {summ['all']['success']['ci_method']}.", "", "## Protocol card", ""]
    lines += [f"- **{k}**: {json.dumps(v) if isinstance(v, dict | list) else v}" for k, v in card.items()]
    return "\n".join(lines) + "\n"


def print_table(res: dict[str, Any]) -> None:
    summ = res["summary"]
    print(f"{'task type':<10} {'tasks':>5}  success % mean ± std [95% CI]", flush=True)
    for name, row in summ.items():
        extra = f"   score {_pct(row['score'])}" if res["protocol"]["env"] == "webshop" else ""
        print(f"{name:<10} {row['n_tasks']:>5}  {_pct(row['success'])}{extra}", flush=True)
