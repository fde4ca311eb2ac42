"""``threespo-verl demo``: the CPU demo (README's main job). Trains ``algorithm=3spo`` and ``algorithm=grpo`` on the
``household`` game with SmolLM2-135M-Instruct through verl's whole loop on CPU (``threespo_trainer_cpu``: FSDP2
actor, vLLM CPU rollout, weight sync after every update), validates the initial model and both trained ones on the
same fixed panel, and writes ``runs/demo-<time>/report.md`` with PNG plots (``threespo_verl/report.py``).

Both algorithms get the same environments, prompts, model, learning rate and per-task env-step budget (G x H: GRPO
plays G episodes per task, 3SPO's tree spends G x H env steps, with G = ``--group`` = 3SPO's g_max). A 3SPO training
step is one expansion round (one update); a GRPO step is G whole episodes per task; so the runs are given steps for
equal env-step budgets (``--steps`` is 3SPO's; a 3SPO round spends at most tasks x G env steps, a GRPO step at most
tasks x G x H, so GRPO gets ``steps / H`` steps, at least 1). Both start from the same model, so the validation
before training runs once, in the 3SPO run, and is the shared step-0 point of the report.

Decoding is constrained to ``<action>A</action>`` with A admissible (``env.constrain_actions=true``): SmolLM2-135M
writes no valid household action on its own (0 of 64 samples measured), so without it neither run gets any reward.

    threespo-verl demo                 # SmolLM2-135M, about 20-30 minutes on 2 cores
    threespo-verl demo --quick         # the tiny format-trained model, two steps each: a smoke run of a few minutes

The model is installed on first use (``threespo-verl setup model``). Each run's own output (verl's console log) goes
to ``<run>/train.log``; progress is shown per training step.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from threespo_verl.verl_glue import metrics_log


def _overrides(algo: str, model: Path, out: Path, steps: int, a) -> list[str]:
    common = [
        f"algorithm={algo}", "env=household", f"actor_rollout_ref.model.path={model}",
        f"trainer.default_local_dir={out}", f"trainer.total_training_steps={steps}", f"trainer.save_freq={steps}",
        f"trainer.test_freq={steps}", f"trainer.val_before_train={'true' if algo == '3spo' else 'false'}",
        f"data.val_max_samples={a.val_tasks}",
        f"data.train_batch_size={a.tasks}", f"env.max_steps={a.max_steps}", "env.reasoning=false",
        "env.few_shot=false", f"env.history_length={a.history}", "env.constrain_actions=true",
        "data.max_prompt_length=2048", "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=2048",
        "data.max_response_length=48", f"actor_rollout_ref.actor.optim.lr={a.lr}", "rollout_probe.enable=true",
        f"trainer.experiment_name=demo-{algo}", "data.seed=0", "algorithm.threespo.sample_seed=0",
        f"actor_rollout_ref.rollout.val_kwargs.temperature={a.val_temperature}",
        "actor_rollout_ref.rollout.val_kwargs.do_sample=true",
    ]
    if algo == "3spo":
        return common + [f"algorithm.threespo.g_max={a.group}", "actor_rollout_ref.rollout.n=1"]
    return common + [f"actor_rollout_ref.rollout.n={a.group}"]


def _follow(log: Path, total: int, label: str, stop: threading.Event) -> None:
    """Progress bar from the run's metrics.jsonl (one line per finished training step)."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=f"{label:>5} steps", unit="step", dynamic_ncols=True)
    done = 0
    while not stop.is_set():
        rows = metrics_log.read(str(log))
        n = max((r["step"] for r in rows), default=0)
        if n > done:
            bar.update(n - done)
            done = n
            last = rows[-1]
            ok = last.get("explore/success", last.get("episode/success"))
            bar.set_postfix(env_steps=int(last.get("explore/cumulative_env_steps", 0)),
                            **({"success": f"{ok:.2f}"} if ok is not None else {}))
        stop.wait(2.0)
    bar.close()


def run_one(algo: str, model: Path, out: Path, steps: int, a) -> float:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "threespo_verl.main", "--config-name", "threespo_trainer_cpu",
           *_overrides(algo, model, out, steps, a)]
    env = dict(os.environ, PYTHONHASHSEED="0", TOKENIZERS_PARALLELISM="false")
    stop = threading.Event()
    watcher = threading.Thread(target=_follow, args=(out / "metrics.jsonl", steps, algo, stop), daemon=True)
    t0 = time.time()
    with open(out / "train.log", "w") as logf:
        logf.write(" ".join(cmd) + "\n")
        logf.flush()
        watcher.start()
        proc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=out)
    stop.set()
    watcher.join()
    if proc.returncode != 0:
        tail = (out / "train.log").read_text(errors="replace").splitlines()[-25:]
        raise SystemExit(f"demo: the {algo} run failed (exit {proc.returncode}); last lines of {out / 'train.log'}:\n"
                         + "\n".join(tail))
    return time.time() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="threespo-verl demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny model, 2 steps each: a smoke run of a few minutes")
    ap.add_argument("--out", type=Path, default=Path("runs"), help="parent folder of the demo's run folder")
    ap.add_argument("--steps", type=int, default=None, help="3SPO training steps (default 5; --quick 2)")
    ap.add_argument("--tasks", type=int, default=2, help="tasks per training step (data.train_batch_size)")
    ap.add_argument("--max-steps", type=int, default=None, help="episode horizon H (default 5; --quick 4)")
    ap.add_argument("--group", type=int, default=4, help="G: GRPO's episodes per task = 3SPO's g_max")
    ap.add_argument("--val-tasks", type=int, default=None, help="fixed validation panel: the first N household "
                    "test tasks (default 8; --quick 4)")
    ap.add_argument("--val-temperature", type=float, default=0.4)
    ap.add_argument("--history", type=int, default=1, help="env.history_length: past turns kept in the prompt")
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--model", type=Path, default=None, help="a model folder instead of the default one")
    a = ap.parse_args(argv)
    a.steps = a.steps or (2 if a.quick else 5)
    a.max_steps = a.max_steps or (4 if a.quick else 5)
    a.val_tasks = a.val_tasks or (4 if a.quick else 8)

    from threespo_verl import models

    t_start = time.time()
    if a.model is None:
        name = "tiny-qwen2-actions" if a.quick else "smollm2-135m"
        print(f"demo: model {name} (installing on first use)", flush=True)
        a.model = models.install(name=name)
    run_dir = (a.out / f"demo-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    grpo_steps = max(1, round(a.steps / a.max_steps)) if not a.quick else a.steps
    print(f"demo: runs in {run_dir} (3SPO {a.steps} steps, GRPO {grpo_steps} steps; {a.tasks} tasks per step, "
          f"G={a.group}, H={a.max_steps}; validation on the first {a.val_tasks} household test tasks)", flush=True)
    walls = {}
    for algo, steps in (("3spo", a.steps), ("grpo", grpo_steps)):
        walls[algo] = run_one(algo, a.model, run_dir / algo, steps, a)
        print(f"demo: {algo} done in {walls[algo] / 60:.1f} min", flush=True)
    from threespo_verl.report import write_report

    start = [r for r in metrics_log.read(str(run_dir / "3spo" / "metrics.jsonl"))
             if r["step"] == 0 and "val-core/household/success" in r]
    initial = (f" The initial model (validated once, before training, in the 3SPO run) scores "
               f"{100 * start[0]['val-core/household/success']:.1f}% on the panel." if start else "")

    notes = (f"CPU demo: `household`, model `{Path(a.model).name}`, {a.tasks} tasks per step, G={a.group} "
             f"(GRPO episodes per task = 3SPO g_max), H={a.max_steps}, lr {a.lr}, validation on the first "
             f"{a.val_tasks} tasks of the household test panel at T={a.val_temperature} after training. "
             f"Wall time: 3SPO {walls['3spo'] / 60:.1f} min, GRPO {walls['grpo'] / 60:.1f} min, demo total "
             f"{(time.time() - t_start) / 60:.1f} min.{initial}")
    md = write_report([run_dir / "3spo", run_dir / "grpo"], run_dir, names=["3SPO", "GRPO"],
                      title="threespo_verl CPU demo: 3SPO vs GRPO", notes=notes)
    print(f"demo: report {md}  (total {(time.time() - t_start) / 60:.1f} min)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
