"""``threespo-verl eval``: a policy on a fixed panel, every task exactly once per seed, with a protocol card.

    threespo-verl eval --model PATH --env alfworld --split in --seeds 3
    threespo-verl eval --ckpt checkpoints/run/global_step_40 --env webshop --split test
    threespo-verl eval --ckpt checkpoints/run --env household --split test     # the latest checkpoint of a run

Splits: ``household`` test (64 tasks); ``alfworld`` in = valid_seen (140 games), out = valid_unseen (134);
``webshop`` test (goals 0-499), test128 (the first 128). ``--limit N`` keeps the panel's first N tasks and says so in
the card; nothing else is ever dropped: an episode whose environment raises is recorded as a failure with its error
(and played again on resume); if the vLLM engine itself fails the run stops, keeps what finished, and resumes.

Episodes are played by the same code as training's validation (prompt, parser, history, environment) with vLLM in
process (``rollout/vllm_sampler.py``: the GPU engine, or the CPU build without CUDA). A verl FSDP checkpoint is first
merged into a Hugging Face folder with ``python -m verl.model_merger`` (kept next to the results).

Output in ``--out`` (default ``runs/eval-<env>-<split>-<time>``): ``episodes.jsonl`` (one line per finished
episode, appended as they finish: a killed eval resumes where it stopped with the same command), ``results.json``
and ``results.md``: success (and WebShop's score) overall and per task type, mean +- std over seeds and a 95%
interval (Student t over seeds when there are several, else a Wilson interval over the panel's tasks); those
statistics and their rendering are in ``eval_stats.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from threespo_verl.eval_stats import print_table, render_markdown, summarize
from threespo_verl.io_utils import read_jsonl, repair_jsonl_tail

#: (env, --split) -> panel name in ``envs.panels``
SPLITS: dict[tuple[str, str], str] = {
    ("household", "test"): "test",
    ("alfworld", "in"): "valid_seen",
    ("alfworld", "out"): "valid_unseen",
    ("webshop", "test"): "test",
    ("webshop", "test128"): "test128",
}

# ------------------------------------------------------------------------------------------------ model / checkpoint
def resolve_checkpoint(ckpt: Path) -> tuple[Path, int]:
    """A ``global_step_N`` folder, or a run folder whose ``latest_checkpointed_iteration.txt`` names one."""
    ckpt = ckpt.resolve()
    if not ckpt.name.startswith("global_step_"):
        tracker = ckpt / "latest_checkpointed_iteration.txt"
        if not tracker.exists():
            raise FileNotFoundError(f"{ckpt} is neither a global_step_N folder nor a run folder with "
                                    f"latest_checkpointed_iteration.txt")
        ckpt = ckpt / f"global_step_{int(tracker.read_text().strip())}"
    if not (ckpt / "actor").is_dir():
        raise FileNotFoundError(f"{ckpt} has no actor/ folder (a verl FSDP checkpoint is expected)")
    return ckpt, int(ckpt.name.split("_")[-1])


def merge_checkpoint(ckpt: Path, target: Path) -> Path:
    """verl's own merger (FSDP shards -> Hugging Face folder); skipped if ``target`` already holds the merge."""
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    cmd = [sys.executable, "-m", "verl.model_merger", "merge", "--backend", "fsdp", "--local_dir",
           str(ckpt / "actor"), "--target_dir", str(target)]
    print(f"eval: merging {ckpt / 'actor'} -> {target}", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"verl.model_merger failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    return target


def _dir_fingerprint(folder: Path) -> str:
    """sha256 over the names and sizes of a model folder's files (cheap; identifies a build, not a proof)."""
    h = hashlib.sha256()
    for p in sorted(folder.glob("*")):
        if p.is_file():
            h.update(f"{p.name}:{p.stat().st_size}\n".encode())
    return h.hexdigest()[:16]


def data_card(env_name: str, folder: str | None = None) -> dict[str, Any]:
    """Data versions of the environment: the installer's marker (archives and their sha256) when there is one."""
    if env_name == "household":
        from threespo_verl import __version__

        return {"data": f"built into threespo_verl {__version__} (procedural)"}
    from threespo_verl.data import data_dir

    folder = Path(folder) if folder else data_dir(env_name)
    for marker in sorted(folder.glob(".threespo_installed*.json")):
        try:
            return {"data_dir": str(folder), "data": json.loads(marker.read_text())}
        except (OSError, json.JSONDecodeError):
            pass
    return {"data_dir": str(folder), "data": "no install marker found"}


# ------------------------------------------------------------------------------------------------ episodes
def episode_record(seed: int, task, steps, error: str | None = None) -> dict[str, Any]:
    if error is not None or not steps:
        return {"seed": seed, "task_id": task.task_id, "task_type": task.task_type, "won": False, "score": 0.0,
                "steps": len(steps or ()), "invalid": 0, "error": error or "no step"}
    last = steps[-1].branch
    return {"seed": seed, "task_id": task.task_id, "task_type": task.task_type, "won": bool(last.won),
            "score": float(last.env_reward), "steps": len(steps),
            "invalid": sum(not s.branch.valid for s in steps), "actions": [s.branch.action_text for s in steps]}


async def play_panel(tasks, seeds: list[int], env_factory, sampler_for_seed, *, history_length: int, few_shot: bool,
                     reasoning: bool, concurrency: int, done: set[tuple[int, str]], on_episode) -> None:
    """Every (seed, task) not in ``done`` once, ``concurrency`` episodes at a time; ``on_episode(record)`` as each
    ends. An environment is reused by the next episode of the same worker slot."""
    from threespo_verl.rollout.expand import play_episode
    from threespo_verl.rollout.vllm_sampler import SamplerError

    todo = [(s, t) for s in seeds for t in tasks if (s, t.task_id) not in done]
    queue: asyncio.Queue = asyncio.Queue()
    for item in todo:
        queue.put_nowait(item)

    async def worker():
        env = None
        try:
            while not queue.empty():
                seed, task = queue.get_nowait()
                if env is None:
                    env = await asyncio.to_thread(env_factory)
                try:
                    steps = await play_episode(task, env, sampler_for_seed(seed), history_length=history_length,
                                               few_shot=few_shot, reasoning=reasoning)
                    rec = episode_record(seed, task, steps)
                except SamplerError:
                    raise  # the engine died: stop; the finished episodes are on disk and a rerun resumes
                except Exception as exc:  # noqa: BLE001 - recorded as a failed episode, never dropped
                    rec = episode_record(seed, task, None, error=f"{type(exc).__name__}: {exc}")
                    if env is not None:
                        env.close()
                    env = None
                on_episode(rec)
        finally:
            if env is not None:
                env.close()

    await asyncio.gather(*[worker() for _ in range(max(1, min(concurrency, len(todo))))])


# ------------------------------------------------------------------------------------------------ CLI
def _env_defaults(env_name: str) -> dict[str, Any]:
    from omegaconf import OmegaConf

    path = Path(__file__).parent / "config" / "env" / f"{env_name}.yaml"
    return OmegaConf.to_container(OmegaConf.load(path))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="threespo-verl eval",
        description="Evaluate a policy on a fixed panel, every task exactly once per seed, with a protocol card. "
                    "Splits: household test; alfworld in (valid_seen) | out (valid_unseen); webshop test | test128.")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", type=Path, help="a Hugging Face model folder (e.g. merged weights)")
    src.add_argument("--ckpt", type=Path, help="a verl checkpoint: global_step_N, or a run folder (latest step)")
    ap.add_argument("--env", required=True, help="household | alfworld | webshop")
    ap.add_argument("--split", required=True, help="household: test; alfworld: in | out; webshop: test | test128")
    ap.add_argument("--seeds", type=int, default=3, help="number of seeds (0..N-1); each task once per seed")
    ap.add_argument("--limit", type=int, default=None, help="keep only the panel's first N tasks (stated in the card)")
    ap.add_argument("--max-steps", type=int, default=None, help="episode horizon (default: the env config's)")
    ap.add_argument("--history-length", type=int, default=None, help="turns of history (default: the env config's)")
    ap.add_argument("--temperature", type=float, default=0.4)
    ap.add_argument("--max-tokens", type=int, default=None, help="tokens per reply (default 512, 48 w/o reasoning)")
    ap.add_argument("--reasoning", action=argparse.BooleanOptionalAction, default=None,
                    help="ask for <think> before the action (default: the env config's)")
    ap.add_argument("--few-shot", action=argparse.BooleanOptionalAction, default=None,
                    help="prepend the worked example to every prompt (default: the env config's)")
    ap.add_argument("--constrain-actions", action="store_true",
                    help="decode only admissible <action>A</action> replies (for very small models)")
    ap.add_argument("--concurrency", type=int, default=16, help="episodes in flight")
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument("--algorithm", default=None, help="for the card when --model is used (else from the ckpt)")
    ap.add_argument("--data-dir", default=None, help="environment data folder (default: the data home)")
    ap.add_argument("--out", type=Path, default=None)
    return ap


class _Refused(Exception):
    """A usage error ``main`` reports as ``threespo-verl eval: error: ...`` with exit status 2."""


def _settings(a: argparse.Namespace) -> dict[str, Any]:
    """The prompt and episode settings: the options given, else the env config's defaults."""
    defaults = _env_defaults(a.env)
    reasoning = defaults.get("reasoning", True) if a.reasoning is None else a.reasoning
    max_steps = a.max_steps or int(defaults["max_steps"])
    return {"max_steps": max_steps,
            "history_length": a.history_length if a.history_length is not None else int(defaults["history_length"]),
            "reasoning": reasoning,
            "few_shot": defaults.get("few_shot", False) if a.few_shot is None else a.few_shot,
            "max_tokens": a.max_tokens or (512 if reasoning else 48),
            "env_kwargs": {"max_steps": max_steps} | ({"data_dir": a.data_dir} if a.data_dir else {})}


def _check_env_and_split(a: argparse.Namespace) -> None:
    from threespo_verl.envs import available

    if a.env not in available():
        raise _Refused(f"unknown env {a.env!r}; available: {', '.join(available())}")
    if (a.env, a.split) not in SPLITS:
        valid = ", ".join(s for e, s in SPLITS if e == a.env)
        raise _Refused(f"unknown split {a.split!r} for {a.env}; valid: {valid}")


def _panel(a: argparse.Namespace, env_kwargs: dict[str, Any]):
    """The panel of ``--env``/``--split`` (raises ``_Refused`` when its data is missing)."""
    from threespo_verl.envs.panels import panel

    try:
        return panel(a.env, SPLITS[(a.env, a.split)], **env_kwargs)
    except FileNotFoundError as exc:  # missing data: the message names the setup command
        raise _Refused(str(exc)) from exc


def _model(a: argparse.Namespace, out: Path) -> tuple[Path, str, int | None, str | None]:
    """(model folder, source for the card, checkpoint step, algorithm): ``--model`` as given, or ``--ckpt`` merged
    into ``out`` (raises ``_Refused`` when neither is usable)."""
    if a.ckpt is None:
        model = a.model.resolve()
        if not (model / "config.json").exists():
            raise _Refused(f"{model} is not a Hugging Face model folder (no config.json); for a verl checkpoint use "
                           f"--ckpt")
        return model, str(model), None, a.algorithm
    try:
        ckpt, ckpt_step = resolve_checkpoint(a.ckpt)
    except FileNotFoundError as exc:
        raise _Refused(str(exc)) from exc
    algorithm = a.algorithm
    state = ckpt / "threespo_state.json"
    if state.exists() and algorithm is None:
        algorithm = json.loads(state.read_text()).get("algorithm")
    return merge_checkpoint(ckpt, out / f"merged_global_step_{ckpt_step}"), str(ckpt), ckpt_step, algorithm


def resume_records(ep_path: Path, tasks, seeds: list[int]) -> list[dict[str, Any]]:
    """The finished episodes of ``ep_path`` that belong to this run (its tasks and seeds, no error). A last line cut
    by a kill is skipped with a warning and cut off the file, so the episodes appended next start on a line of their
    own; episodes that raised are played again (their old lines stay in the file as history)."""
    recs = read_jsonl(ep_path)
    repair_jsonl_tail(ep_path)
    task_ids = {t.task_id for t in tasks}
    return [r for r in recs if r["task_id"] in task_ids and r["seed"] in seeds and not r.get("error")]


def _play(a, tasks, seeds, model: Path, cfg: dict[str, Any], ep_path: Path, done_recs: list[dict[str, Any]]):
    """Play every (seed, task) not in ``done_recs``, appending each finished episode to ``ep_path`` and
    ``done_recs``; returns the sampler (closed; its statistics stay readable) and the seconds since it was built."""
    from tqdm import tqdm

    from threespo_verl.envs import make
    from threespo_verl.rollout.vllm_sampler import VLLMSampler

    done = {(r["seed"], r["task_id"]) for r in done_recs}
    sampler = VLLMSampler(str(model), temperature=a.temperature, max_tokens=cfg["max_tokens"],
                          constrain_actions=a.constrain_actions, seed=0, max_model_len=a.max_model_len)
    bar = tqdm(total=len(tasks) * len(seeds), initial=len(done), desc="eval episodes", unit="ep", dynamic_ncols=True)
    wins = [sum(r["won"] for r in done_recs)]
    t0 = time.time()
    with open(ep_path, "a", encoding="utf-8") as f:
        def on_episode(rec):
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
            done_recs.append(rec)
            wins[0] += rec["won"]
            bar.update(1)
            bar.set_postfix(success=f"{wins[0] / len(done_recs):.2f}")

        try:
            asyncio.run(play_panel(tasks, seeds, lambda: make(a.env, **cfg["env_kwargs"]), sampler.with_seed,
                                   history_length=cfg["history_length"], few_shot=cfg["few_shot"],
                                   reasoning=cfg["reasoning"], concurrency=a.concurrency, done=done,
                                   on_episode=on_episode))
        finally:
            bar.close()
            sampler.close()
    return sampler, time.time() - t0


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        _check_env_and_split(a)
        cfg = _settings(a)
        pan = _panel(a, cfg["env_kwargs"])
        tasks = list(pan.tasks[: a.limit] if a.limit else pan.tasks)
        out = a.out or Path("runs") / f"eval-{a.env}-{a.split}-{time.strftime('%Y%m%d-%H%M%S')}"
        out.mkdir(parents=True, exist_ok=True)
        model, source, ckpt_step, algorithm = _model(a, out)
    except _Refused as exc:
        print(f"threespo-verl eval: error: {exc}", file=sys.stderr)
        return 2

    seeds = list(range(a.seeds))
    card = {
        "env": a.env, "split": a.split, "panel": pan.name, "panel_sha256": pan.sha256,
        "panel_tasks": len(pan.tasks), "n_tasks": len(tasks),
        "limit": (f"first {len(tasks)} of {len(pan.tasks)} panel tasks (--limit)" if a.limit else "none"),
        "seeds": seeds, "max_steps": cfg["max_steps"], "history_length": cfg["history_length"],
        "temperature": a.temperature, "max_tokens": cfg["max_tokens"], "reasoning": cfg["reasoning"],
        "few_shot": cfg["few_shot"], "constrain_actions": a.constrain_actions, "model": source,
        "model_fingerprint": _dir_fingerprint(model), "checkpoint_step": ckpt_step,
        "algorithm": algorithm or "unknown", **data_card(a.env, a.data_dir),
    }
    ep_path = out / "episodes.jsonl"
    done_recs = resume_records(ep_path, tasks, seeds)
    total = len(tasks) * len(seeds)
    print(f"eval: {a.env} {pan.name} ({len(tasks)} tasks{' of ' + str(len(pan.tasks)) if a.limit else ''}, panel "
          f"{pan.sha256[:12]}) x {len(seeds)} seeds = {total} episodes, {len(done_recs)} already in {ep_path}",
          flush=True)

    from threespo_verl.rollout.vllm_sampler import SamplerError

    try:
        sampler, wall_s = _play(a, tasks, seeds, model, cfg, ep_path, done_recs)
    except SamplerError as exc:
        print(f"threespo-verl eval: error: {exc}. {len(done_recs)} of {total} episodes are kept in {ep_path}; "
              f"run the same command again to resume", file=sys.stderr)
        return 1
    errors = [r for r in done_recs if r.get("error")]
    summary = summarize(done_recs, seeds, {t.task_id: t.task_type for t in tasks})
    res = {"protocol": card, "summary": summary,
           "run": {"wall_s": wall_s, "episodes": len(done_recs), "episode_errors": len(errors),
                   "rollout_tokens_per_s": sampler.tokens_per_s(), **sampler.stats}}
    (out / "results.json").write_text(json.dumps(res, indent=2))
    (out / "results.md").write_text(render_markdown(res))
    print_table(res)
    if errors:
        print(f"eval: {len(errors)} episodes raised and count as failures (see 'error' in {ep_path})", flush=True)
    print(f"eval: {out / 'results.md'}  ({sampler.tokens_per_s():.1f} generated tokens/s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
