"""Seconds per trained row of one update on CPU, before and after the update-cost levers, side by side in one run.

    python benchmarks/bench_update_cost.py                       # smollm2-135m and tiny-qwen2-bc (long on CPU)
    python benchmarks/bench_update_cost.py --steps 3 --tasks 1 --group 4   # a small batch: 33 min on 2 cores

Each (model, variant) pair trains GRPO for ``--steps`` steps on the CPU learning testbed (threespo_verl/testbed.py:
household ``easy_train``, ``--tasks`` x ``--group`` episodes per step, replies of at most 48 tokens) through verl's
real loop, and reads verl's own stage timers from the run's metrics log: ``timing_s/old_log_prob`` (the actor's
forward that recomputes the rollout's log-probs), ``timing_s/ref`` (the reference forward; verl runs it only with a KL
term), ``timing_s/update_actor`` (the FSDP update) and ``timing_s/update_weights`` (the weight sync into vLLM),
divided by the update's rows (``actor/update_rows``). The first step is left out (it warms caches up); the others are
averaged.

Variants:

* ``today``: the project's CPU configuration before the levers: no KL term, so verl runs no reference forward (it
  could not on CPU anyway: verl's FSDP2 engine shards a forward-only model with ``CPUOffloadPolicy(pin_memory=True)``,
  and pinning memory needs an accelerator), and the actor recomputes the rollout's log-probs as old log-probs
  (verl's decoupled mode: one extra forward over every row).
* ``bypass``: the rollout engine's log-probs serve as old log-probs (verl's
  ``algorithm.rollout_correction.bypass_mode``: one on-policy pass, PPO ratio against the sampling policy), which
  ``actor_rollout_ref.rollout.calculate_log_probs=true`` makes vLLM return with each reply.
* ``levers``: ``bypass`` plus one OpenMP thread per core for verl's Ray workers (``threespo_trainer_cpu`` gives them
  one, ``ray_kwargs.ray_init.runtime_env.env_vars.OMP_NUM_THREADS``): the FSDP worker's forward and backward then use
  every core while vLLM, which keeps its own ``THREESPO_VLLM_OMP_THREADS``, waits for the next rollout.
* ``bf16``: ``levers`` plus bf16 compute in the FSDP update (``actor_rollout_ref.actor.fsdp_config.mixed_precision.
  param_dtype=bf16``: autocast over fp32 master weights and fp32 optimizer state). Only for CPUs with AMX or
  AVX512-BF16 (``lscpu`` lists ``amx_bf16`` or ``avx512_bf16``); on AVX2-only CPUs torch runs bf16 matrix products
  through a slow reference kernel, which is why ``threespo_trainer_cpu`` computes in fp32.

What is measured is cost, not equivalence. With the testbed's constrained decoding (``env.constrain_actions=true``)
vLLM's log-probs are those of the constrained distribution, so ``bypass`` and what builds on it change the PPO ratio
as well as the cost (the trainer warns; see ``bypass_with_constrained_decoding``): use them with free decoding.

It prints a table (with the actor worker's peak memory) and, per model,
``MODEL: s/row today X.XXX, bypass X.XXX, levers X.XXX, bf16 X.XXX, speed-up X.XXx, bf16 X.XXx`` (today / levers,
today / bf16).

    python benchmarks/bench_update_cost.py --fixed-cost RUN_DIR [RUN_DIR ...]

splits the cost of one post-step 3SPO update into a fixed part and a per-row part instead: a least-squares fit of
``seconds = a + b x rows`` over the updates logged in finished runs (e.g. the learning benchmark's ``3spo`` runs:
updates of 2 to ~130 rows), per stage (the old-log-prob pass over the round's rows, advantages, the FSDP update, the
weight sync) and in total, and prints ``update cost: fixed X.XXX s per update, X.XXXX s per row (R2 X.XX); an
update of N rows is X% fixed``, N = the median update. ``min_update_rows`` = k x a / b keeps the fixed part of an
update at or below 1 / (k + 1).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import numpy as np

from threespo_verl import testbed
from threespo_verl.verl_glue import metrics_log

STAGES = ("old_log_prob", "ref", "update_actor", "update_weights")
BYPASS = ["algorithm.rollout_correction.bypass_mode=true", "actor_rollout_ref.rollout.calculate_log_probs=true"]
VARIANTS = {
    "today": [],
    "bypass": BYPASS,
    "levers": [*BYPASS, f'ray_kwargs.ray_init.runtime_env.env_vars.OMP_NUM_THREADS="{os.cpu_count() or 1}"'],
}
VARIANTS["bf16"] = [*VARIANTS["levers"], "actor_rollout_ref.actor.fsdp_config.mixed_precision.param_dtype=bf16"]


def per_row(rows: list[dict], skip: int = 1) -> dict[str, float]:
    """Mean seconds per trained row of each stage over the logged steps after the first ``skip``."""
    steps = [r for r in rows if "actor/update_rows" in r][skip:]
    if not steps:
        raise RuntimeError("no training step after the warm-up step was logged; raise --steps")
    out = {}
    for stage in STAGES:
        out[stage] = float(np.mean([r.get(f"timing_s/{stage}", 0.0) / r["actor/update_rows"] for r in steps]))
    out["total"] = sum(out[s] for s in STAGES)
    out["rows"] = float(np.mean([r["actor/update_rows"] for r in steps]))
    tokens = [r.get("prompt_length/mean", 0.0) + r.get("response_length/mean", 0.0) for r in steps]
    out["tokens_per_row"] = float(np.mean(tokens))
    # the actor worker's peak resident set over the whole run (verl's device memory statistic; on CPU, RSS)
    out["actor_peak_gb"] = max((r.get("actor/perf/max_memory_allocated_gb", 0.0) for r in rows), default=0.0)
    return out


FIT_STAGES = ("round_old_log_prob", "adv", "update_actor", "update_weights")


def fit_fixed_and_per_row(rows: list[dict], skip: int = 1) -> dict[str, tuple[float, float, float]]:
    """Per stage of ``FIT_STAGES`` and ``total``: (a, b, R^2) of the least-squares line seconds = a + b x rows over
    the updates after the first ``skip`` (``actor/update_rows``, ``timing_s/<stage>``)."""
    steps = [r for r in rows if "actor/update_rows" in r][skip:]
    if len(steps) < 3:
        raise RuntimeError(f"{len(steps)} updates logged after the warm-up: too few to fit a line")
    x = np.array([float(r["actor/update_rows"]) for r in steps])
    out = {}
    ys = {stage: np.array([float(r.get(f"timing_s/{stage}", 0.0)) for r in steps]) for stage in FIT_STAGES}
    ys["total"] = sum(ys.values())
    design = np.stack([np.ones_like(x), x], axis=1)
    for stage, y in ys.items():
        (a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
        resid = y - (a + b * x)
        r2 = 1.0 - float(resid @ resid) / float(((y - y.mean()) ** 2).sum()) if y.var() > 0 else float("nan")
        out[stage] = (float(a), float(b), r2)
    out["median_rows"] = (float(np.median(x)), 0.0, 0.0)
    return out


def fixed_cost_report(run_dirs: list[Path]) -> None:
    rows = [r for d in run_dirs for r in metrics_log.read(str(Path(d) / "metrics.jsonl"))]
    fit = fit_fixed_and_per_row(rows)
    n = fit.pop("median_rows")[0]
    print(f"{'stage':<20} {'fixed s/update':>15} {'s/row':>10} {'R2':>6}")
    for stage, (a, b, r2) in fit.items():
        print(f"{stage:<20} {a:>15.3f} {b:>10.4f} {r2:>6.2f}")
    a, b, r2 = fit["total"]
    print(f"update cost: fixed {a:.3f} s per update, {b:.4f} s per row (R2 {r2:.2f}); an update of {n:.0f} rows is "
          f"{100 * a / (a + b * n):.0f}% fixed")


def bf16_units(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """The CPU's bf16 matrix instructions among ``amx_bf16`` and ``avx512_bf16`` (empty: bf16 runs slowly here)."""
    try:
        flags = set(cpuinfo.read_text().split())
    except OSError:
        return []
    return [f for f in ("amx_bf16", "avx512_bf16") if f in flags]


def finished(run: Path, record: list[str]) -> bool:
    """Whether ``run`` holds a finished run of exactly ``record`` (its overrides and ``steps=N``): a run cut short by a
    kill has no ``done.json``, and one from other settings in the same ``--out`` folder must not be reused."""
    done = run / "done.json"
    return done.exists() and json.loads(done.read_text()).get("overrides") == record


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="smollm2-135m,tiny-qwen2-bc",
                    help="names of `threespo-verl setup model` (installed on first use) or model folders")
    ap.add_argument("--steps", type=int, default=3, help="GRPO steps per run (the first is a warm-up)")
    ap.add_argument("--tasks", type=int, default=4, help="tasks per step (data.train_batch_size)")
    ap.add_argument("--group", type=int, default=8, help="episodes per task (rollout.n)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_update_cost"))
    ap.add_argument("--fixed-cost", nargs="+", type=Path, default=None, metavar="RUN_DIR",
                    help="fit fixed + per-row update cost over the updates of finished post-step 3SPO runs instead")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run, e.g. "
                    "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=1024 (tokens per micro-batch)")
    a = ap.parse_args(argv)
    if a.fixed_cost:
        fixed_cost_report(a.fixed_cost)
        return 0
    from threespo_verl import models

    out = a.out.resolve()
    results: dict[tuple[str, str], dict[str, float]] = {}
    for name in [m.strip() for m in a.models.split(",") if m.strip()]:
        path = Path(name) if Path(name).is_dir() else models.install(name=name)
        label = Path(name).name
        for variant, extra in VARIANTS.items():
            run = out / f"{label}-{variant}"
            overrides = [*testbed.overrides(val_tasks=1), *testbed.algorithm_overrides("grpo", a.group),
                         f"actor_rollout_ref.model.path={path}", f"data.train_batch_size={a.tasks}",
                         "algorithm.mini_batch_rows=64", "trainer.save_freq=-1", "trainer.test_freq=-1",
                         "data.seed=0", *a.overrides, *extra]
            record = [*overrides, f"steps={a.steps}"]
            if not finished(run, record):
                if run.exists():
                    shutil.rmtree(run)
                wall = testbed.run_training(overrides, run, a.steps, f"{label} {variant}")
                (run / "done.json").write_text(json.dumps({"wall_s": wall, "overrides": record}))
            results[(label, variant)] = per_row(metrics_log.read(str(run / "metrics.jsonl")))
    print(f"\n{'model':<16} {'variant':<8} {'rows':>6} {'tok/row':>8} "
          + " ".join(f"{s:>15}" for s in STAGES) + f" {'s/row':>8} {'actor GB':>9}")
    for (label, variant), r in results.items():
        print(f"{label:<16} {variant:<8} {r['rows']:>6.0f} {r['tokens_per_row']:>8.0f} "
              + " ".join(f"{r[s]:>15.4f}" for s in STAGES) + f" {r['total']:>8.4f} {r['actor_peak_gb']:>9.2f}")
    print(f"\nbf16 matrix instructions on this CPU: {', '.join(bf16_units()) or 'none (the bf16 row is slow here)'}")
    for label in dict.fromkeys(k[0] for k in results):
        before, bypass, after, bf16 = (results[(label, v)]["total"] for v in VARIANTS)
        print(f"{label}: s/row today {before:.3f}, bypass {bypass:.3f}, levers {after:.3f}, bf16 {bf16:.3f}, "
              f"speed-up {before / after:.2f}x, bf16 {before / bf16:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
