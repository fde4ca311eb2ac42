"""SFT data for behaviour cloning (SPA's stage 1, DESIGN §3): expert trajectories as multi-turn chat examples in the
format of verl's ``MultiTurnSFTDataset`` (a ``messages`` column; its loss covers the assistant turns only).

Sources:

* ``expert``: the environment's own expert, played through the environment so that every prompt is exactly the RL
  prompt: ALFWorld's walkthrough (stored in every game file), the household oracle (``HouseholdEnv.oracle_actions``),
  WebShop's oracle buyer (``envs/webshop/oracle.py``). A trajectory is kept when its final reward R >= ``min_reward``
  (default 1: solved); one that is not (a walkthrough cut by ``max_steps``, a product the buyer never found) is
  recorded and counted, never cloned.
* ``jsonl``: trajectories recorded by ``threespo-verl spa collect`` (its JSONL format, so a user can clone their own
  policy's or anyone's), kept when ``reward >= min_reward``; the prompts and replies are taken as recorded.

One example per trajectory (``layout="trajectory"``, the default)::

    messages = [u_0, a_0, u_1, a_1, ..., u_T-1, a_T-1]
    u_t = render_prompt(env, obs_t, history_t, history_length, few_shot, reasoning)   (step t's RL prompt)
    a_t = "<action>A_t</action>"                                    (reasoning=False)
        | "<think>The task is to G. The next step is: A_t.</think><action>A_t</action>"

(the experts give no reasoning: with ``reasoning=True`` the thought is that fixed sentence, so the clone learns the
format). This is the sequence the trajectory rows of ``algorithm=ppo | spa_ppo`` and SPA's progress estimator read.
``layout="step"`` gives one single-turn example ``[u_t, a_t]`` per step instead: exactly what the step-row algorithms
(3SPO, GRPO, GiGPO, SPA) prompt.

Files in ``out_dir``: ``examples.jsonl`` (one line per trajectory, appended one fsynced write at a time; a torn last
line is cut and the tasks already there are skipped, so the same call resumes), then ``train.parquet`` and
``val.parquet`` written from it in task order (every run of the same settings gives the same files) and
``sft_data.json`` (settings and counts). Validation holds ``val_fraction`` of the kept trajectories, spread evenly
over the task order (their steps too, with ``layout="step"``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from threespo_verl.io_utils import atomic_write

SOURCES = ("expert", "jsonl")
LAYOUTS = ("trajectory", "step")
EXAMPLES = "examples.jsonl"
TRAIN = "train.parquet"
VAL = "val.parquet"
MANIFEST = "sft_data.json"
FORMAT = 1
EXPERT_NAMES = {"household": "household-oracle", "alfworld": "alfworld-walkthrough", "webshop": "webshop-oracle"}


@dataclasses.dataclass(frozen=True)
class SFTData:
    """What ``build_sft_data`` wrote (paths) and counted."""

    folder: Path
    train: Path
    val: Path | None
    n_train: int  # examples in train.parquet (trajectories, or steps with layout="step")
    n_val: int
    kept: int  # trajectories cloned (R >= min_reward)
    not_kept: int  # trajectories below min_reward (expert failures, unsuccessful recordings)
    written: int  # trajectories this call added to examples.jsonl (the others were already there)
    settings: dict[str, Any]


def expert_actions(env_name: str, env, task) -> list[str]:
    """The expert's command list for ``task`` (computed without touching ``env``'s episode)."""
    if env_name == "household":
        return env.oracle_actions(task)
    if env_name == "alfworld":
        return env.walkthrough(task)
    if env_name == "webshop":
        from threespo_verl.envs.webshop.oracle import oracle_actions

        return oracle_actions(env, task)
    raise ValueError(f"no expert for env {env_name!r}; known: {', '.join(EXPERT_NAMES)}")


def expert_reply(goal: str, action: str, reasoning: bool) -> str:
    """The assistant turn of one expert step (see the module docstring)."""
    if not reasoning:
        return f"<action>{action}</action>"
    thought = f"The task is to {goal.strip().rstrip('.')}. The next step is: {action}."
    return f"<think>{thought}</think><action>{action}</action>"


def play_expert(env_name: str, env, task, *, history_length: int = 2, few_shot: bool = False,
                reasoning: bool = False) -> dict[str, Any]:
    """Play the expert's commands for ``task`` in ``env`` with the RL prompts; returns the examples.jsonl record."""
    from threespo_verl.envs.prompts import render_prompt

    actions = expert_actions(env_name, env, task)
    obs, _info = env.reset(task)
    history: list[tuple[str, str]] = []
    messages: list[dict[str, str]] = []
    won, reward, steps, invalid = False, 0.0, 0, 0
    for action in actions:
        messages += render_prompt(env_name, obs, history, history_length=history_length, few_shot=few_shot,
                                  reasoning=reasoning)
        messages.append({"role": "assistant", "content": expert_reply(obs.goal, action, reasoning)})
        nobs, r, terminated, truncated, info = env.step(action)
        steps += 1
        invalid += not info["valid"]
        history.append((obs.text, action))
        obs, won, reward = nobs, bool(info["won"]), float(r)
        if terminated or truncated:
            break
    return {"format": FORMAT, "source": EXPERT_NAMES[env_name], "task_id": task.task_id, "env_name": env_name,
            "task_type": task.task_type, "rollout": 0, "won": won, "reward": reward, "n_steps": steps,
            "invalid_steps": invalid, "messages": messages}


def recorded_example(rec: dict[str, Any]) -> dict[str, Any]:
    """An examples.jsonl record from one ``spa collect`` line (prompts and replies as recorded)."""
    messages: list[dict[str, str]] = []
    for step in rec["steps"]:
        messages += [dict(m) for m in step["messages"]]
        messages.append({"role": "assistant", "content": str(step["reply"])})
    return {"format": FORMAT, "source": "recorded", "task_id": rec["task_id"], "env_name": rec["env_name"],
            "task_type": rec.get("task_type", ""), "rollout": int(rec.get("rollout", 0)), "won": bool(rec["won"]),
            "reward": float(rec["reward"]), "n_steps": int(rec["n_steps"]),
            "invalid_steps": sum(not s.get("valid", True) for s in rec["steps"]), "messages": messages}


# ---- expert episodes in worker processes ---------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _init_worker(env_name: str, kwargs: dict[str, Any]) -> None:
    from threespo_verl.envs import make

    _WORKER["env"] = make(env_name, **kwargs)
    _WORKER["name"] = env_name


def _play_job(job) -> dict[str, Any]:
    task, opts = job
    return play_expert(_WORKER["name"], _WORKER["env"], task, **opts)


def _append(f, rec: dict[str, Any]) -> None:
    f.write(json.dumps(rec, ensure_ascii=False) + "\n")  # one write per line
    f.flush()
    os.fsync(f.fileno())


def _val_positions(n: int, val_fraction: float) -> set[int]:
    """Validation trajectories among ``n`` (in task order): every k-th, k = round(1 / val_fraction); at least one
    when val_fraction > 0 and n >= 2, never all."""
    if val_fraction <= 0 or n < 2:
        return set()
    n_val = min(n - 1, max(1, math.floor(n * val_fraction)))
    k = n / n_val
    return {min(n - 1, int((i + 1) * k) - 1) for i in range(n_val)}


def _rows(recs: Sequence[dict[str, Any]], layout: str) -> list[dict[str, Any]]:
    out = []
    for r in recs:
        base = {k: r[k] for k in ("task_id", "env_name", "task_type", "source", "rollout", "reward", "n_steps")}
        if layout == "trajectory":
            out.append({**base, "step": -1, "messages": r["messages"]})
            continue
        for t in range(len(r["messages"]) // 2):
            out.append({**base, "step": t, "messages": r["messages"][2 * t: 2 * t + 2]})
    return out


def _write_parquet(rows: list[dict[str, Any]], path: Path) -> None:
    import pandas as pd

    with atomic_write(path, "wb") as f:
        pd.DataFrame(rows).to_parquet(f, index=False)


def build_sft_data(env: str, out_dir: str | Path, *, source: str = "expert", trajectories: str | Path | None = None,
                   split: str = "train", tasks: int | None = None, task_offset: int = 0, max_steps: int | None = None,
                   data_dir: str | Path | None = None, history_length: int = 2, reasoning: bool = False,
                   few_shot: bool = False, min_reward: float = 1.0, layout: str = "trajectory",
                   val_fraction: float = 0.05, workers: int = 1, progress: bool = True) -> SFTData:
    """Build (or resume building) the SFT data of ``env`` in ``out_dir`` (see the module docstring).

    ``source="expert"`` plays the expert on ``tasks`` tasks of ``split`` from ``task_offset`` (None: all) with the
    env's horizon ``max_steps`` (None: the env's default) in ``workers`` processes; ``source="jsonl"`` reads
    ``trajectories`` (a ``spa collect`` file). The prompt settings (``history_length``, ``reasoning``,
    ``few_shot``) must be those of the RL runs the clone starts. Returns the paths and counts (``SFTData``).
    """
    if source not in SOURCES:
        raise ValueError(f"source={source!r}; valid: {SOURCES}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}; valid: {LAYOUTS}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    from threespo_verl.io_utils import repair_jsonl_tail
    from threespo_verl.spa.collect import read_trajectories

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / EXAMPLES
    repair_jsonl_tail(path)
    done = {(r["task_id"], int(r["rollout"])): r for r in (read_trajectories(path) if path.exists() else [])}
    settings = {"env": env, "source": source, "split": split, "tasks": tasks, "task_offset": task_offset,
                "max_steps": max_steps, "history_length": history_length, "reasoning": reasoning,
                "few_shot": few_shot, "min_reward": min_reward, "layout": layout, "val_fraction": val_fraction,
                "trajectories": str(trajectories) if trajectories is not None else None}
    _check_settings(out, settings)
    written = 0
    if source == "jsonl":
        if trajectories is None:
            raise ValueError("source='jsonl' needs trajectories= (a file written by threespo-verl spa collect)")
        recorded = [recorded_example(r) for r in read_trajectories(trajectories) if r.get("env_name") == env]
        order = [(r["task_id"], r["rollout"]) for r in recorded]
        with open(path, "a", encoding="utf-8") as f:
            for r in recorded:
                if (r["task_id"], r["rollout"]) not in done:
                    _append(f, r)
                    done[(r["task_id"], r["rollout"])] = r
                    written += 1
    else:
        written, order = _play_experts(env, path, done, split=split, tasks=tasks, task_offset=task_offset,
                                       max_steps=max_steps, data_dir=data_dir, workers=workers, progress=progress,
                                       opts={"history_length": history_length, "few_shot": few_shot,
                                             "reasoning": reasoning})
    recs = [done[k] for k in order if k in done]
    kept = [r for r in recs if float(r["reward"]) >= min_reward]
    val_pos = _val_positions(len(kept), val_fraction)
    train_rows = _rows([r for i, r in enumerate(kept) if i not in val_pos], layout)
    val_rows = _rows([r for i, r in enumerate(kept) if i in val_pos], layout)
    if not train_rows:
        raise ValueError(f"no trajectory with reward >= {min_reward} among {len(recs)} ({source}, {env}): nothing "
                         "to clone")
    _write_parquet(train_rows, out / TRAIN)
    val = None
    if val_rows:
        val = out / VAL
        _write_parquet(val_rows, val)
    elif (out / VAL).exists():
        (out / VAL).unlink()
    result = SFTData(folder=out, train=out / TRAIN, val=val, n_train=len(train_rows), n_val=len(val_rows),
                     kept=len(kept), not_kept=len(recs) - len(kept), written=written, settings=settings)
    manifest = {"format": FORMAT, "settings": settings, "n_train": result.n_train, "n_val": result.n_val,
                "kept": result.kept, "not_kept": result.not_kept, "trajectories_in_examples": len(done)}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return result


def _check_settings(out: Path, settings: dict[str, Any]) -> None:
    """A folder holds one data set: resuming with other prompt settings would mix two formats."""
    try:
        old = json.loads((out / MANIFEST).read_text())["settings"]
    except (OSError, ValueError, KeyError):
        return
    keys = ("env", "source", "max_steps", "history_length", "reasoning", "few_shot")
    changed = [k for k in keys if old.get(k) != settings.get(k)]
    if changed:
        was = ", ".join(f"{k}={old.get(k)!r}" for k in changed)
        raise ValueError(f"{out} holds SFT data built with other settings ({was}); use another folder")


def _play_experts(env: str, path: Path, done: dict, *, split, tasks, task_offset, max_steps, data_dir, workers,
                  progress, opts) -> tuple[int, list[tuple[str, int]]]:
    from tqdm.auto import tqdm

    from threespo_verl.envs import make

    kwargs: dict[str, Any] = {}
    if max_steps is not None:
        kwargs["max_steps"] = int(max_steps)
    if data_dir is not None:
        kwargs["data_dir"] = str(data_dir)
    probe = make(env, **kwargs)
    try:
        all_tasks = probe.tasks(split)
    finally:
        probe.close()
    chosen = all_tasks[task_offset: None if tasks is None else task_offset + int(tasks)]
    if not chosen:
        raise ValueError(f"no tasks in {env}:{split} from offset {task_offset}")
    order = [(t.task_id, 0) for t in chosen]
    jobs = [(t, opts) for t in chosen if (t.task_id, 0) not in done]
    written = 0
    bar = tqdm(total=len(jobs), desc=f"sft data ({EXPERT_NAMES[env]})", unit="traj", disable=not progress)
    with open(path, "a", encoding="utf-8") as f:
        if workers <= 1:
            _init_worker(env, kwargs)
            try:
                results = map(_play_job, jobs)
                for rec in results:
                    _append(f, rec)
                    done[(rec["task_id"], 0)] = rec
                    written += 1
                    bar.update(1)
            finally:
                _WORKER.pop("env").close()
        else:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(max_workers=int(workers), initializer=_init_worker,
                                     initargs=(env, kwargs)) as ex:
                for rec in ex.map(_play_job, jobs, chunksize=4):  # in task order
                    _append(f, rec)
                    done[(rec["task_id"], 0)] = rec
                    written += 1
                    bar.update(1)
    bar.close()
    return written, order
