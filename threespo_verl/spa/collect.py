"""SPA stage 2 (DESIGN §3): M rollouts per training task with the current policy, one JSONL line per trajectory.

Episodes are played by the same ``play_episode`` the GRPO/GiGPO rollout uses (same prompts, parser, environments);
``sample`` is any ``SampleFn`` (``VLLMSampler.sample`` for a model, ``scripted_sampler`` for tests). A line::

    {"format": 1, "task_id": ..., "env_name": ..., "task_type": ..., "rollout": k, "goal": ...,
     "history_length": 2, "n_steps": T, "reward": R, "won": ..., "timeout": ...,
     "steps": [{"messages": [...], "reply": ..., "action": ... | null, "valid": ..., "parse_reason": ...,
                "admissible_actions": [...], "observation": ..., "state_changed": ..., "done": ...}, ...]}

``messages`` are the chat messages the policy was prompted with at that step, ``observation`` the environment's
text after the step (feedback + view), ``state_changed`` whether the step changed the canonical state (as the env's
``info["state_changed"]``), ``reward`` the environment's final score R in [0, 1].

Append-safe: each trajectory is one ``write`` of one line, flushed and fsynced; on start a torn last line (a killed
run) is cut off, and (task_id, rollout) pairs already in the file are skipped, so running the same command again
resumes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from threespo_verl.envs.actions import DEFAULT_PARSER, ActionParser
from threespo_verl.envs.base import Task, TextEnv
from threespo_verl.envs.prompts import render_prompt
from threespo_verl.io_utils import read_jsonl, repair_jsonl_tail
from threespo_verl.rollout.expand import SampleFn, play_episode

FORMAT = 1


@dataclasses.dataclass
class CollectStats:
    written: int  # trajectories written by this call
    skipped: int  # (task, rollout) pairs already in the file
    cut_bytes: int  # bytes of a torn last line removed before appending
    env_steps: int
    won: int
    mean_reward: float  # over the trajectories written by this call


def read_trajectories(path: str | Path) -> list[dict[str, Any]]:
    """All complete lines of a collect file (a torn last line is skipped with a warning; a damaged line elsewhere
    raises ValueError)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no trajectory file at {path}")
    return read_jsonl(path)


def _done_pairs(path: Path) -> set[tuple[str, int]]:
    if not path.exists():
        return set()
    return {(r["task_id"], int(r["rollout"])) for r in read_trajectories(path)}


def trajectory_record(task: Task, rollout: int, steps, prompts: list[tuple[list[dict], tuple[str, ...]]],
                      history_length: int) -> dict[str, Any]:
    """The JSONL record of one played episode (``steps`` from ``play_episode``, ``prompts`` the (messages,
    admissible actions) the policy saw at each step)."""
    if len(prompts) != len(steps):
        raise RuntimeError(f"{len(steps)} steps but {len(prompts)} recorded prompts")
    last = steps[-1].branch
    reward = float(last.env_reward)
    if not 0.0 <= reward <= 1.0:
        raise ValueError(f"final reward {reward} of {task.task_id} is outside [0, 1]")
    return {
        "format": FORMAT, "task_id": task.task_id, "env_name": task.env_name, "task_type": task.task_type,
        "rollout": int(rollout), "history_length": int(history_length), "n_steps": len(steps), "reward": reward,
        "won": bool(last.won), "timeout": bool(last.timeout),
        "steps": [{
            "messages": messages, "reply": s.branch.sample.text, "action": s.branch.action,
            "valid": bool(s.branch.valid), "parse_reason": s.branch.parse_reason,
            "admissible_actions": list(admissible), "observation": s.branch.obs_text,
            "state_changed": s.branch.state_key != s.state_key, "done": bool(s.branch.done),
        } for s, (messages, admissible) in zip(steps, prompts)],
    }


def prompt_recorder(base: Callable[..., list[dict]] | None = None
                    ) -> tuple[list[tuple[list[dict], tuple[str, ...]]], Callable[..., list[dict]]]:
    """(prompts, render): ``render`` is ``base`` (default ``render_prompt``) that also appends (messages, admissible
    actions) of each step to ``prompts`` — pass it to ``play_episode(render=...)`` to build the episode's
    ``trajectory_record``."""
    prompts: list[tuple[list[dict], tuple[str, ...]]] = []
    base = base or render_prompt

    def render(env_name, obs, history, **kw):
        messages = base(env_name, obs, history, **kw)
        prompts.append((messages, tuple(obs.admissible_actions)))
        return messages

    return prompts, render


async def _play(task: Task, rollout: int, env: TextEnv, sample: SampleFn, history_length: int, few_shot: bool,
                reasoning: bool, parser: ActionParser) -> dict[str, Any]:
    prompts, render = prompt_recorder()
    steps = await play_episode(task, env, sample, history_length=history_length, few_shot=few_shot,
                               reasoning=reasoning, parser=parser, render=render)
    return trajectory_record(task, rollout, steps, prompts, history_length)


def collect(tasks: Sequence[Task], env_factory: Callable[[], TextEnv], sample: SampleFn, m: int,
            out_jsonl: str | Path, history_length: int = 2, *, few_shot: bool = False, reasoning: bool = True,
            parser: ActionParser = DEFAULT_PARSER, concurrency: int = 1, progress: bool = True,
            meta: dict[str, Any] | None = None) -> CollectStats:
    """Play ``m`` episodes of every task (rollout indices 0..m-1) and append one line per trajectory to
    ``out_jsonl`` (see the module docstring). ``concurrency`` episodes run at once, each on its own environment
    from ``env_factory`` (a model sampler batches their requests). ``meta`` (e.g. ``{"policy": ...}``) is added
    to every line."""
    if m < 1:
        raise ValueError(f"m (rollouts per task) must be >= 1, got {m}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    path = Path(out_jsonl)
    path.parent.mkdir(parents=True, exist_ok=True)
    cut = repair_jsonl_tail(path)
    done = _done_pairs(path)
    jobs = [(t, k) for t in tasks for k in range(m) if (t.task_id, k) not in done]
    skipped = len(tasks) * m - len(jobs)
    return asyncio.run(_run(jobs, env_factory, sample, path, history_length, few_shot, reasoning, parser,
                            concurrency, progress, skipped, cut, dict(meta or {})))


async def _run(jobs, env_factory, sample, path, history_length, few_shot, reasoning, parser, concurrency,
               progress, skipped, cut, meta) -> CollectStats:
    from tqdm.auto import tqdm

    queue: asyncio.Queue = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    totals = {"written": 0, "env_steps": 0, "won": 0, "reward": 0.0}
    bar = tqdm(total=len(jobs), desc="spa collect", unit="traj", disable=not progress)
    with open(path, "a", encoding="utf-8") as f:

        async def worker():
            env = env_factory()
            try:
                while not queue.empty():
                    task, k = queue.get_nowait()
                    rec = await _play(task, k, env, sample, history_length, few_shot, reasoning, parser)
                    rec.update({k2: v for k2, v in meta.items() if k2 not in rec})
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")  # one write per line
                    f.flush()
                    os.fsync(f.fileno())
                    totals["written"] += 1
                    totals["env_steps"] += rec["n_steps"]
                    totals["won"] += rec["won"]
                    totals["reward"] += rec["reward"]
                    bar.update(1)
            finally:
                env.close()

        try:
            await asyncio.gather(*(worker() for _ in range(min(concurrency, max(len(jobs), 1)))))
        finally:
            bar.close()
    n = totals["written"]
    return CollectStats(written=n, skipped=skipped, cut_bytes=cut, env_steps=totals["env_steps"], won=totals["won"],
                        mean_reward=totals["reward"] / n if n else 0.0)
