"""``threespo-verl spa``: SPA's offline stages (docs/DESIGN.md section 3).

    threespo-verl spa collect --env household --split train --tasks 200 --m 8 --out runs/spa/traj.jsonl \\
                              --model PATH        # the current policy, through vLLM
    threespo-verl spa collect ... --scripted      # a scripted stand-in policy, not a model (tests, smoke runs)
    threespo-verl spa train-estimator --data runs/spa/traj.jsonl --model PATH --out runs/spa/pe [--epochs 1 --lr 1e-5]

collect appends to --out and resumes: running it again skips the (task, rollout) pairs already there.
train-estimator (alias: train-pe) prints the held-out MSE/MAE of sum_t c_t vs R before and after training and saves
the progress estimator (save_pretrained + tokenizer + spa_pe.json with the metrics) in --out. On a GPU it trains
through transformers' Trainer (add --bf16 --gradient-checkpointing); on several GPUs launch it with torchrun:

    torchrun --nproc_per_node 8 -m threespo_verl.spa.cli train-estimator ... --bf16 --gradient-checkpointing \
        --fsdp "full_shard auto_wrap"

The options shared with threespo-verl eval have the same names there: --model, --data-dir, --reasoning/--no-reasoning,
--few-shot/--no-few-shot.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ENVS = ("household", "alfworld", "webshop")
SCRIPTED_LABEL = "scripted stand-in policy (ScriptedPolicy, not a model: for tests and smoke runs)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="threespo-verl spa", description="SPA's offline stages: collect trajectories, "
                                "train the progress estimator.", formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("collect", help="stage 2: M rollouts per training task -> one JSONL line per trajectory")
    c.add_argument("--env", required=True, choices=ENVS)
    c.add_argument("--split", default="train", help="task split (default train)")
    c.add_argument("--tasks", type=int, required=True, help="number of tasks: the first N of the split")
    c.add_argument("--task-offset", type=int, default=0, help="skip the first K tasks of the split")
    c.add_argument("--m", type=int, required=True, help="rollouts per task")
    c.add_argument("--out", type=Path, required=True, help="JSONL file (appended to; resumes)")
    who = c.add_mutually_exclusive_group(required=True)
    who.add_argument("--model", help="policy model folder (sampled with vLLM)")
    who.add_argument("--scripted", action="store_true", help=f"use a {SCRIPTED_LABEL}")
    c.add_argument("--max-steps", type=int, default=None, help="episode horizon H (default: the env's)")
    c.add_argument("--history-length", type=int, default=2, help="previous steps shown in the prompt")
    c.add_argument("--data-dir", type=Path, default=None,
                   help="environment data folder (default: the data home)")
    c.add_argument("--data", dest="data_dir", type=Path, help=argparse.SUPPRESS)  # the earlier name of --data-dir
    c.add_argument("--few-shot", action=argparse.BooleanOptionalAction, default=False,
                   help="prepend the worked example to every prompt (default: no)")
    c.add_argument("--reasoning", action=argparse.BooleanOptionalAction, default=True,
                   help="ask for <think> before the action (default: yes; --no-reasoning asks for the action only)")
    c.add_argument("--temperature", type=float, default=1.0)
    c.add_argument("--max-tokens", type=int, default=512, help="generated tokens per step")
    c.add_argument("--concurrency", type=int, default=16, help="episodes played at once")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--constrain-actions", action="store_true",
                   help="decode only <action>A</action> with A admissible (as env.constrain_actions in training)")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=cmd_collect)

    t = sub.add_parser("train-estimator", aliases=["train-pe"],
                       help="stage 3: train the progress estimator on collected trajectories")
    t.add_argument("--data", type=Path, required=True, help="JSONL written by spa collect")
    t.add_argument("--model", "--base", dest="model", required=True,
                   help="base model folder: the policy's model (--base is the earlier name)")
    t.add_argument("--out", type=Path, required=True, help="output folder of the estimator")
    t.add_argument("--epochs", type=int, default=1)
    t.add_argument("--lr", type=float, default=1e-5)
    t.add_argument("--batch-size", type=int, default=8, help="trajectories per optimizer step")
    t.add_argument("--micro-batch-size", type=int, default=None, help="trajectories per forward pass")
    t.add_argument("--heldout", type=float, default=0.1, help="fraction of trajectories held out")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--max-length", type=int, default=4096, help="tokens per serialized trajectory window")
    t.add_argument("--device", default=None, help="cuda | cpu (default: cuda if available)")
    t.add_argument("--dtype", default=None, help="weights' dtype: float32 (default) | bfloat16")
    t.add_argument("--backend", choices=("loop", "trainer"), default=None,
                   help="loop: a plain fp32 loop on one device (default on the CPU); trainer: transformers' Trainer "
                        "(default on a GPU, and with --bf16/--gradient-checkpointing/--optim/--fsdp)")
    t.add_argument("--bf16", action="store_true", help="Trainer: bf16 mixed precision (fp32 master weights)")
    t.add_argument("--gradient-checkpointing", action="store_true", help="Trainer: recompute activations")
    t.add_argument("--optim", default=None, help="Trainer: optimizer name (default adamw_torch)")
    t.add_argument("--fsdp", default=None,
                   help="Trainer under torchrun: FSDP mode, e.g. 'full_shard auto_wrap' (shards a 7B's AdamW state)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train_pe)
    return p


def _tasks_and_factory(args):
    from threespo_verl.envs import make

    kwargs = {}
    if args.max_steps is not None:
        kwargs["max_steps"] = args.max_steps
    if args.data_dir is not None:
        kwargs["data_dir"] = str(args.data_dir)
    env = make(args.env, **kwargs)
    try:
        tasks = env.tasks(args.split)[args.task_offset:args.task_offset + args.tasks]
    finally:
        env.close()
    if not tasks:
        raise SystemExit(f"spa collect: no tasks in {args.env}:{args.split} from offset {args.task_offset}")
    return tasks, (lambda: make(args.env, **kwargs))


def cmd_collect(args) -> int:
    from threespo_verl.spa.collect import collect

    tasks, factory = _tasks_and_factory(args)
    closer = None
    if args.scripted:
        from threespo_verl.testing import ScriptedPolicy, household_plans, scripted_sampler

        plans = household_plans(tasks) if args.env == "household" else None
        sample = scripted_sampler(ScriptedPolicy(plans=plans), args.seed)
        policy = f"{SCRIPTED_LABEL}, seed {args.seed}"
        print(f"spa collect: using a {SCRIPTED_LABEL}", file=sys.stderr)
    else:
        from threespo_verl.rollout.vllm_sampler import VLLMSampler

        sampler = VLLMSampler(args.model, temperature=args.temperature, max_tokens=args.max_tokens,
                              constrain_actions=args.constrain_actions, seed=args.seed)
        sample = sampler.with_seed(args.seed)
        closer = sampler.close
        policy = f"model {args.model} (vLLM, temperature {args.temperature}, seed {args.seed})"
    try:
        stats = collect(tasks, factory, sample, args.m, args.out, args.history_length, few_shot=args.few_shot,
                        reasoning=args.reasoning, concurrency=args.concurrency, progress=not args.quiet,
                        meta={"policy": policy})
    finally:
        if closer is not None:
            closer()
    print(f"spa collect: {stats.written} trajectories written to {args.out} ({stats.skipped} already there), "
          f"{stats.env_steps} env steps, {stats.won} won, mean R {stats.mean_reward:.3f}; policy: {policy}")
    return 0


def cmd_train_pe(args) -> int:
    from threespo_verl.spa.progress import PE_JSON, train_pe

    m = train_pe(args.data, args.out, args.model, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                 heldout_fraction=args.heldout, seed=args.seed, max_length=args.max_length,
                 micro_batch_size=args.micro_batch_size, device=args.device, dtype=args.dtype,
                 progress=not args.quiet, backend=args.backend, bf16=args.bf16,
                 gradient_checkpointing=args.gradient_checkpointing, optim=args.optim, fsdp=args.fsdp)
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: the main process reports
        return 0
    b, a = m["heldout_before"], m["heldout_after"]
    how = m.get("backend")
    how = (f"transformers' Trainer on {how['device']} x {how['processes']}, bf16 {how['bf16']}, gradient "
           f"checkpointing {how['gradient_checkpointing']}" if how else f"loop on one device, {args.dtype or 'float32'}")
    print(f"spa train-estimator: {m['n_train']} train / {m['n_heldout']} held-out trajectories, "
          f"{m['truncated_trajectories']} truncated to fit --max-length {args.max_length}; {how}")
    print(f"held-out sum_t c_t vs R: MSE {b['mse']:.4f} -> {a['mse']:.4f}, MAE {b['mae']:.4f} -> {a['mae']:.4f}")
    print(f"estimator saved to {args.out} (metrics in {Path(args.out) / PE_JSON})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return int(args.func(args) or 0)
    except FileNotFoundError as e:  # missing data or model (MissingDataError names the setup command)
        print(f"threespo-verl spa {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
