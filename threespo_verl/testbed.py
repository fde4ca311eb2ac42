"""The CPU learning testbed (docs/DESIGN.md §8): a task family, a warm-started policy and compact prompts on which
training visibly moves held-out success within minutes on 2 CPU cores, through verl's real loop.

* Tasks: household's ``easy_train`` (512) / ``easy_test`` (32, the held-out panel) splits: *look* goals whose object
  lies on the desk beside the lamp; the shortest plan is three commands (go to desk 1, take the goal's object among
  the desk's, use desklamp 1) and every step is inferable from the prompt. Horizon H = 5 (two spare steps).
* Prompts: no reasoning, one turn of history, decoding constrained to the admissible actions
  (``env.constrain_actions``), replies of about a dozen tokens.
* Policy: ``tiny-qwen2-bc`` (``threespo-verl setup model tiny-qwen2-bc``): the tiny Qwen2 model (2 layers, hidden 64,
  a 1,024-token byte-level BPE) behaviour-cloned on *noisy* expert trajectories of ``easy_train``: at each step the
  expert (``HouseholdEnv.plan``, which recovers from detours) acts, except that with probability ``noise`` a
  uniformly random admissible action is taken (and cloned) instead. The clone inherits the noise: it solves about
  15-20% of the panel (sampling at temperature 1), room for training to show.

``BC`` holds the warm start's settings (part of the model's fingerprint); ``overrides()`` the Hydra overrides that
put a run on the testbed. The benchmark (benchmarks/bench_learning.py), the demo and tests/e2e/test_learning.py use
both.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

#: the behaviour-cloning warm start of ``tiny-qwen2-bc`` (changing a value rebuilds the model)
BC = dict(noise=0.5, demos=4000, steps=300, batch=16, lr=3e-3, seed=0, max_steps=5, history_length=1)

#: SPA's progress estimator on the testbed (``spa collect`` / ``spa train-estimator``): trajectories of the initial
#: policy and the estimator's optimizer. The CLI's defaults (lr 1e-5, 1 epoch) are SPA's for 1.5B/7B models; on
#: ``tiny-qwen2-bc`` they leave the held-out MSE of sum_t c_t vs R at 0.148 (predicting 0: 0.154), these reach
#: 0.035-0.039.
SPA_ESTIMATOR = dict(tasks=64, m=4, lr=1e-3, epochs=15)

@dataclasses.dataclass(frozen=True)
class Testbed:
    """One CPU learning testbed: an environment setting, a warm-started policy and the prompt/reply budgets that put
    a ``threespo_trainer_cpu`` run on it (``TESTBEDS`` holds them by name; ``benchmarks/bench_learning.py
    --testbed NAME``)."""

    #: the name on the command line (``--testbed``)
    name: str
    #: ``env.*`` settings (``name`` selects the env group)
    env: dict[str, Any]
    #: the warm-started policy (``threespo-verl setup model NAME``)
    model: str
    #: the longest prompt and reply, in tokens (``data.max_prompt_length``, ``data.max_response_length``)
    prompt_tokens: int
    reply_tokens: int
    #: tokens per actor micro-batch for the testbed's own model (``actor.ppo_max_token_len_per_gpu``)
    micro_batch_tokens: int
    #: held-out panel size the benchmark validates on (the first N tasks of ``env.eval_panel``)
    panel_tasks: int
    #: one line for tables and reports
    description: str = ""

    @property
    def horizon(self) -> int:
        return int(self.env["max_steps"])

    @property
    def val_metric(self) -> str:
        """The metrics-log key of held-out success on this testbed's panel."""
        return f"val-core/{self.env['name']}/success"

    def overrides(self, val_tasks: int | None = None, micro_batch_tokens: int | None = None) -> list[str]:
        """Hydra overrides that put a ``threespo_trainer_cpu`` run on the testbed (env, prompt and response lengths,
        validation sampled at temperature 1 on the first ``val_tasks`` tasks of the held-out panel,
        ``micro_batch_tokens`` per actor micro-batch)."""
        env = [f"env.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in self.env.items() if k != "name"]
        return [f"env={self.env['name']}", *env, f"data.max_prompt_length={self.prompt_tokens}",
                f"data.max_response_length={self.reply_tokens}",
                f"actor_rollout_ref.actor.ppo_max_token_len_per_gpu={micro_batch_tokens or self.micro_batch_tokens}",
                f"data.val_max_samples={val_tasks or self.panel_tasks}",
                "actor_rollout_ref.rollout.val_kwargs.temperature=1.0",
                "actor_rollout_ref.rollout.val_kwargs.do_sample=true"]


#: the testbed's environment settings (``env.*``)
ENV = {"name": "household", "train_split": "easy_train", "eval_panel": "easy_test", "max_steps": 5,
       "history_length": 1, "reasoning": False, "few_shot": False, "constrain_actions": True}


#: the testbed's longest prompt and reply, in tokens (``data.max_prompt_length``, ``data.max_response_length``);
#: replies are ~12 tokens, but constrained decoding may spell an action in more, smaller tokens: leave room
PROMPT_TOKENS, REPLY_TOKENS = 1024, 48

#: tokens per actor micro-batch (``actor_rollout_ref.actor.ppo_max_token_len_per_gpu``) for ``tiny-qwen2-bc``, and
#: for any other model: SmolLM2-135M's update at 4,096 tokens was killed by Ray's memory monitor on a 24 GB machine
#: (fp32 logits over its 49,152-token vocabulary, several copies per micro-batch); at 1,024 its actor peaks at ~5 GB.
#: The smaller cap is the longest row the testbed allows, so that verl's check (cap >= every row's length) holds.
MICRO_BATCH_TOKENS = {"tiny-qwen2-bc": 4096, "other": PROMPT_TOKENS + REPLY_TOKENS}

#: ``easy``: household look-at-the-object-under-the-lamp tasks with a three-command plan (the demo's and the
#: learning test's testbed)
EASY = Testbed(name="easy", env=ENV, model="tiny-qwen2-bc", prompt_tokens=PROMPT_TOKENS, reply_tokens=REPLY_TOKENS,
               micro_batch_tokens=MICRO_BATCH_TOKENS["tiny-qwen2-bc"], panel_tasks=128,
               description="household easy_train -> easy_test (look goals, 3-command plans, H = 5), tiny-qwen2-bc")

#: every testbed by name
TESTBEDS: dict[str, Testbed] = {t.name: t for t in (EASY,)}


def get(name: str) -> Testbed:
    """The testbed called ``name``, or a clear error listing the valid names."""
    if name not in TESTBEDS:
        raise ValueError(f"unknown testbed {name!r}; valid: {', '.join(TESTBEDS)}")
    return TESTBEDS[name]


def overrides(val_tasks: int = 32, micro_batch_tokens: int = MICRO_BATCH_TOKENS["tiny-qwen2-bc"]) -> list[str]:
    """``EASY.overrides``: the Hydra overrides that put a ``threespo_trainer_cpu`` run on the easy testbed."""
    return EASY.overrides(val_tasks, micro_batch_tokens)


def expert_demonstrations(n: int, noise: float, seed: int, max_steps: int = 5, history_length: int = 1,
                          split: str = "easy_train") -> list[tuple[list[dict], str]]:
    """``n`` (chat messages, reply) pairs from noisy expert episodes on household ``split``, rendered as the agent
    loop renders them (``ENV``'s prompt settings); the reply is ``<action>A</action>`` of the action taken."""
    from threespo_verl.envs.household import HouseholdEnv
    from threespo_verl.envs.prompts import render_prompt

    rng = random.Random(seed)
    env = HouseholdEnv(max_steps=max_steps)
    tasks = env.tasks(split)
    out: list[tuple[list[dict], str]] = []
    while len(out) < n:
        obs, _info = env.reset(tasks[rng.randrange(len(tasks))])
        history: list[tuple[str, str]] = []
        done = False
        while not done and len(out) < n:
            action = rng.choice(obs.admissible_actions) if rng.random() < noise else env.plan()[0]
            out.append((render_prompt("household", obs, history, history_length=history_length, reasoning=False),
                        f"<action>{action}</action>"))
            history.append((obs.text, action))
            obs, _r, terminated, truncated, _info = env.step(action)
            done = terminated or truncated
    return out


def behaviour_clone(folder: Path, noise: float = BC["noise"], demos: int = BC["demos"], steps: int = BC["steps"],
                    batch: int = BC["batch"], lr: float = BC["lr"], seed: int = BC["seed"],
                    max_steps: int = BC["max_steps"], history_length: int = BC["history_length"]) -> dict:
    """Clone the noisy expert into the model in ``folder`` (saved in place; loss on the reply tokens only). Returns
    the final loss and the settings."""
    from threespo_verl.models import supervise_replies

    pairs = expert_demonstrations(demos, noise, seed, max_steps, history_length)
    info = supervise_replies(folder, pairs, steps=steps, batch=batch, lr=lr, seed=seed,
                             desc="behaviour cloning (household easy)")
    return {"bc_loss": info["loss"], "bc": dict(noise=noise, demos=demos, steps=steps, batch=batch, lr=lr, seed=seed,
                                                  max_steps=max_steps, history_length=history_length)}


#: the algorithms the testbed runs (``algorithm_overrides``). 3SPO in its three forms (DESIGN §2.7): ``3spo``, the
#: default (an update after every expansion round with the groups whose subtree closed in it, Eq.2 rescored then);
#: ``3spo_literal``, the paper's literal form (each round's groups in that round's update, Eq.2 from the snapshot
#: before the round: ``update_mode=post_step_own_round``, ``reward_stats=round``); ``3spo_post_traj`` (one update
#: once the batch's trees are done, rescored). PPO and SPA-PPO with the turn-level GAE (their default) and with verl's
#: token-level ``gae`` (``*_token_gae``).
ALGORITHMS = ("3spo", "3spo_literal", "3spo_post_traj", "grpo", "gigpo", "spa", "ppo", "spa_ppo", "ppo_token_gae",
              "spa_ppo_token_gae")
THREESPO_FORMS = {
    "3spo": [],
    "3spo_literal": ["algorithm.threespo.update_mode=post_step_own_round", "algorithm.threespo.reward_stats=round"],
    "3spo_post_traj": ["algorithm.threespo.update_mode=post_trajectory", "algorithm.threespo.reward_stats=update"],
}
#: optimizer steps by env steps on the testbeds (``algorithm.env_steps_per_optimizer_step``, DESIGN §2.8): one per 48
#: env steps, about what a GRPO step of 4 tasks x 8 episodes (~140 env steps) took with 64-row mini-batches (3)
ENV_STEPS_PER_OPTIMIZER_STEP = 48

#: updates of the critic alone before the actor's first (``trainer.critic_warmup``: the actor updates from step
#: CRITIC_WARMUP on, so one critic-only update), for the trajectory algorithms on the testbed
CRITIC_WARMUP = 2


def algorithm_overrides(algo: str, group: int) -> list[str]:
    """3SPO samples up to ``group`` (= g_max) replies per node from one tree per task; the episode algorithms play
    ``group`` episodes per task (rollout.n): the same per-task env-step budget G x H (DESIGN §2.8). PPO and SPA-PPO
    train one row per episode with a critic whose learning rate is the actor's."""
    if algo not in ALGORITHMS:
        raise ValueError(f"unknown testbed algorithm {algo!r}; valid: {', '.join(ALGORITHMS)}")
    if algo in THREESPO_FORMS:
        return ["algorithm=3spo", f"algorithm.threespo.g_max={group}", "actor_rollout_ref.rollout.n=1",
                *THREESPO_FORMS[algo]]
    base = algo.removesuffix("_token_gae")
    if base in ("ppo", "spa_ppo"):
        # one row per episode (DESIGN §3): the response holds all H turns (~400 tokens each with history 1), each
        # reply keeps the 48 tokens of the step rows; 1,024 + 3,072 tokens = the tiny model's context
        estimator = ["algorithm.adv_estimator=gae"] if algo.endswith("_token_gae") else []
        return [f"algorithm={base}", *estimator, f"actor_rollout_ref.rollout.n={group}", "env.max_tokens_per_step=48",
                "data.max_response_length=3072", "critic.optim.lr=${actor_rollout_ref.actor.optim.lr}",
                f"trainer.critic_warmup={CRITIC_WARMUP}"]
    return [f"algorithm={algo}", f"actor_rollout_ref.rollout.n={group}"]


def grpo_step_env_steps(tasks: int, group: int, horizon: int) -> int:
    """The most env steps one GRPO step spends: ``tasks`` x G episodes of at most H steps (the unit in which the
    demo and the learning test state their env-step budgets)."""
    return int(tasks) * int(group) * int(horizon)


def _follow(log: Path, total: int, label: str, stop, unit: str = "steps") -> None:
    """Progress bar from the run's metrics.jsonl (one line per finished update), in updates or env steps."""
    from tqdm import tqdm

    from threespo_verl.verl_glue import metrics_log

    bar = tqdm(total=total, desc=f"{label:>12} {unit}", unit=unit.split()[-1][:-1] or "step", dynamic_ncols=True)
    bar.set_postfix_str("starting Ray, vLLM and the FSDP workers")
    done = 0
    while not stop.is_set():
        rows = metrics_log.read(str(log))
        if unit == "env steps":
            n = min(total, max((int(r.get("explore/cumulative_env_steps", 0)) for r in rows), default=0))
        else:
            n = max((r["step"] for r in rows), default=0)
        if n > done:
            bar.update(n - done)
            done = n
            last = rows[-1]
            ok = last.get("train/episode_success")
            val = next((r["val-core/household/success"] for r in reversed(rows) if "val-core/household/success" in r),
                       None)
            post = {"env_steps": int(last.get("explore/cumulative_env_steps", 0))}
            if ok is not None:
                post["train"] = f"{ok:.2f}"
            if val is not None:
                post["val"] = f"{val:.2f}"
            bar.set_postfix(**post)
        elif rows and done == 0:
            bar.set_postfix_str("initial validation done; first training step")
        stop.wait(2.0)
    bar.close()


def run_training(overrides_: list[str], out: Path, steps: int, label: str, env: dict | None = None,
                 unit: str = "steps") -> float:
    """Run ``python -m threespo_verl.main --config-name threespo_trainer_cpu OVERRIDES`` into ``out`` (verl's console
    output in ``out/train.log``) with a progress bar; returns the wall time. A failed run raises with the log's end.
    ``unit="steps"``: ``steps`` is ``trainer.total_training_steps``; ``"env steps"``: the overrides end the run at an
    env-step budget (``trainer.total_env_steps``) and ``steps`` is that budget (the progress bar's total)."""
    import os
    import subprocess
    import sys
    import threading
    import time

    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "threespo_verl.main", "--config-name", "threespo_trainer_cpu",
           f"trainer.default_local_dir={out}",
           *([f"trainer.total_training_steps={steps}"] if unit == "steps" else []), *overrides_]
    run_env = dict(os.environ, PYTHONHASHSEED="0", TOKENIZERS_PARALLELISM="false", **(env or {}))
    stop = threading.Event()
    watcher = threading.Thread(target=_follow, args=(out / "metrics.jsonl", steps, label, stop, unit), daemon=True)
    t0 = time.time()
    with open(out / "train.log", "w") as logf:
        logf.write(" ".join(cmd) + "\n")
        logf.flush()
        watcher.start()
        proc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, env=run_env, cwd=out)
    stop.set()
    watcher.join()
    if proc.returncode != 0:
        tail = (out / "train.log").read_text(errors="replace").splitlines()[-25:]
        raise RuntimeError(f"the {label} run failed (exit {proc.returncode}); last lines of {out / 'train.log'}:\n"
                           + "\n".join(tail))
    return time.time() - t0
