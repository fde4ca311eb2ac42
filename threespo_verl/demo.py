"""``threespo-verl demo``: the CPU demo (README's main job). Trains ``algorithm=3spo`` and ``algorithm=grpo`` on
the CPU learning testbed (``threespo_verl/testbed.py``: household look-at-the-object-under-the-lamp tasks, a tiny
Qwen2 policy behaviour-cloned on noisy expert play, compact prompts) through verl's whole loop on CPU
(``threespo_trainer_cpu``: FSDP2 actor, vLLM CPU rollout, weight sync after every update), validates the initial
model and both trained ones on the same 32 held-out tasks, and writes ``runs/demo-<time>/report.md`` with PNG plots
(``threespo_verl/report.py``): both validation curves start from the shared initial point.

Both algorithms get the same environments, prompts, model, learning rate, per-task env-step budget (G x H: GRPO
plays G episodes per task, 3SPO's tree spends G x H env steps, G = ``--group`` = 3SPO's g_max) and run budget in env
steps: ``--steps`` GRPO-step equivalents of tasks x G x H env steps each (``trainer.total_env_steps``), validated every
``--val-every`` of them (``trainer.val_every_env_steps``). 3SPO runs its default, post-step form (an update after
every expansion round with the groups whose subtree closed in it), so it makes many more, smaller updates; optimizer
steps follow env steps for both (``algorithm.env_steps_per_optimizer_step``, DESIGN §2.8). The validation before
training runs once, in the 3SPO run, and is the shared step-0 point of the report.

    threespo-verl demo                 # tiny-qwen2-bc on the testbed, about 15-25 minutes on 2 cores
    threespo-verl demo --quick         # 2 GRPO-step equivalents: a smoke run
    threespo-verl demo --model smollm2-135m --lr 1e-5   # the real 135M model (slower; no warm start)

Models are installed on first use (``threespo-verl setup model``). Each run's own output (verl's console log) goes
to ``<run>/train.log``; a progress bar per run says what it is doing while Ray, vLLM and the workers start.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from threespo_verl import testbed
from threespo_verl.verl_glue import metrics_log


#: a run ends at its env-step budget; verl's update count is only a cap far above what a post-step 3SPO run needs
MAX_UPDATES_PER_GRPO_STEP = 100


def _overrides(algo: str, model: Path, a) -> list[str]:
    unit = testbed.grpo_step_env_steps(a.tasks, a.group, a.max_steps)
    cap = a.steps * MAX_UPDATES_PER_GRPO_STEP
    return [*testbed.overrides(a.val_tasks, a.micro_batch_tokens), *testbed.algorithm_overrides(algo, a.group),
            f"actor_rollout_ref.model.path={model}", f"env.max_steps={a.max_steps}",
            f"trainer.total_env_steps={a.steps * unit}", f"trainer.val_every_env_steps={a.val_every * unit}",
            f"trainer.total_training_steps={cap}", f"trainer.save_freq={cap}", "trainer.test_freq=-1",
            f"trainer.val_before_train={'true' if algo == '3spo' else 'false'}", f"data.train_batch_size={a.tasks}",
            f"actor_rollout_ref.actor.optim.lr={a.lr}",
            f"algorithm.env_steps_per_optimizer_step={a.env_steps_per_optimizer_step}",
            "rollout_probe.enable=true", f"trainer.experiment_name=demo-{algo}", "data.seed=0",
            "algorithm.threespo.sample_seed=0"]


def micro_batch_tokens(model: str) -> int:
    """The testbed's tokens per actor micro-batch for ``--model`` (a setup name or a folder)."""
    return testbed.MICRO_BATCH_TOKENS.get(Path(model).name, testbed.MICRO_BATCH_TOKENS["other"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="threespo-verl demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 GRPO-step equivalents of training: a smoke run")
    ap.add_argument("--out", type=Path, default=Path("runs"), help="parent folder of the demo's run folder")
    ap.add_argument("--steps", type=int, default=None,
                    help="each run's env-step budget in GRPO steps of tasks x G x H env steps (default 8; --quick 2)")
    ap.add_argument("--val-every", type=int, default=None,
                    help="validate every N GRPO steps' env steps (default 2; quick 1)")
    ap.add_argument("--tasks", type=int, default=4, help="tasks per training step (data.train_batch_size)")
    ap.add_argument("--max-steps", type=int, default=int(testbed.ENV["max_steps"]), help="episode horizon H")
    ap.add_argument("--group", type=int, default=8, help="G: GRPO's episodes per task = 3SPO's g_max")
    ap.add_argument("--val-tasks", type=int, default=32, help="held-out panel: the first N easy_test tasks")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--env-steps-per-optimizer-step", type=int, default=testbed.ENV_STEPS_PER_OPTIMIZER_STEP,
                    help="one optimizer step per this many env steps, for both algorithms (DESIGN §2.8)")
    ap.add_argument("--model", default="tiny-qwen2-bc",
                    help="a model name of threespo-verl setup model, or a model folder (default tiny-qwen2-bc)")
    ap.add_argument("--micro-batch-tokens", type=int, default=None,
                    help="tokens per actor micro-batch (default 4096 for tiny-qwen2-bc; for any other model 1072, the "
                         "longest testbed row, which keeps SmolLM2-135M's update within a 24 GB machine)")
    a = ap.parse_args(argv)
    a.micro_batch_tokens = a.micro_batch_tokens or micro_batch_tokens(a.model)
    a.steps = a.steps or (2 if a.quick else 8)
    a.val_every = a.val_every or (1 if a.quick else 2)

    from threespo_verl import models

    t_start = time.time()
    if Path(a.model).is_dir():
        model = Path(a.model)
    else:
        print(f"demo: model {a.model} (built on first use: a few minutes)", flush=True)
        model = models.install(name=a.model)
    run_dir = (a.out / f"demo-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    budget = a.steps * testbed.grpo_step_env_steps(a.tasks, a.group, a.max_steps)
    print(f"demo: runs in {run_dir} ({budget} env steps each; {a.tasks} tasks per "
          f"GRPO step, G={a.group}, H={a.max_steps}; validation on {a.val_tasks} held-out easy_test tasks)", flush=True)
    walls = {}
    for algo in ("3spo", "grpo"):
        walls[algo] = testbed.run_training(_overrides(algo, model, a), run_dir / algo, budget, algo,
                                           unit="env steps")
        print(f"demo: {algo} done in {walls[algo] / 60:.1f} min", flush=True)
    from threespo_verl.report import write_report

    val = "val-core/household/success"
    curves = {}
    for algo in ("3spo", "grpo"):
        rows = metrics_log.read(str(run_dir / algo / "metrics.jsonl"))
        curves[algo] = [(int(r.get("explore/cumulative_env_steps", 0)) if r["step"] else 0, r[val])
                        for r in rows if val in r]
    start = curves["3spo"][:1]
    initial = (f" The initial model (validated once, before training, in the 3SPO run) solves "
               f"{100 * start[0][1]:.1f}% of the panel." if start else "")
    finals = "; ".join(f"{algo.upper()} after training {100 * c[-1][1]:.1f}% (at {c[-1][0]} env steps)"
                       for algo, c in curves.items() if c and (algo == "grpo" or len(c) > 1))
    notes = (f"CPU demo on the learning testbed: household easy split (look tasks, 3-step plans), model "
             f"`{Path(model).name}`, {a.tasks} tasks per step, G={a.group} (GRPO episodes per task = 3SPO g_max), "
             f"H={a.max_steps}, lr {a.lr}, one optimizer step per {a.env_steps_per_optimizer_step} env steps, "
             f"{budget} env steps per run, validation on {a.val_tasks} "
             f"held-out tasks sampled at T=1.{initial} {finals}. Wall time: 3SPO {walls['3spo'] / 60:.1f} min, GRPO "
             f"{walls['grpo'] / 60:.1f} min, demo total {(time.time() - t_start) / 60:.1f} min.")
    md = write_report([run_dir / "3spo", run_dir / "grpo"], run_dir, names=["3SPO", "GRPO"],
                      title="threespo_verl CPU demo: 3SPO vs GRPO on the learning testbed", notes=notes)
    print(f"demo: {notes}", flush=True)
    print(f"demo: report {md}  (total {(time.time() - t_start) / 60:.1f} min)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
