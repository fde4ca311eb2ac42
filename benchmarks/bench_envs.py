"""Environment speed, side by side in one run.

    python benchmarks/bench_envs.py [--games 8] [--data DIR]
    python benchmarks/bench_envs.py --workers [--games 8] [--group 2] [--max-workers N]
    python benchmarks/bench_envs.py --branching [--tasks 4] [--max-steps 20] [--group 8] [--data DIR]

1. ALFWorld: our ``AlfWorldEnv`` against the stock ``AlfredTWEnv`` text env on the same valid_seen games, each
   playing the game's stored walkthrough. The stock env is measured as verl-agent builds it for RL (train mode with
   the DAgger expert attached) and in its eval mode (no expert). Reset time and env steps per second; the ratio
   ours / stock-RL on its own line (goal >= 1.5x).
2. Restore cost: reset + replay of a k-step prefix vs clone (household), per restore.
3. household steps/s with a random admissible policy.
4. WebShop steps/s and memory per env, when the webshop environment is installed and registered.

``--workers``: the agent loop's env throughput in episode mode (``play_episode``, the code the agent loop runs) with
a scripted policy, episodes run as concurrent sessions on one event loop, their envs in this process (every env call
blocks the loop, as before env workers) or in 1, 2, ... ``--max-workers`` env worker processes (``envs/pool.py``):
first household (4 x ``--games`` tasks x ``--group``, zero latency: the case of the in-process default), then
``--games`` x ``--group`` ALFWorld episodes with a zero-latency policy and with ``--latency`` seconds per reply (a
stand-in for generation, to show env work overlapping it). Ends with ``episode throughput 2 workers / 1 worker X.XX``
(ALFWorld, zero latency).

``--data`` is an ALFWorld data folder (default: the data home; ``threespo-verl setup alfworld`` installs it).

``--branching``: instead, what search-tree restores cost on ALFWorld. 3SPO's tree exploration and GRPO's episodes on
the first ``--tasks`` valid_seen games, with the zero-latency scripted policy at the same env-step budget per task
(G x H), exactly as ``bench_exploration.py --env alfworld`` runs them (its task and plan setup, ``rollout/local.py``).
3SPO runs twice: "before", an ``AlfWorldEnv`` with cloning switched off (``EnvCache`` restores every node by reset +
replay of its action prefix), and "after", the shipped env (nodes restored by ``clone``). GRPO never restores a
node, so one run serves both. Env time is the wall time inside env calls (reset, which loads games, step, clone),
timed around every env the run creates; with a zero-latency policy it is nearly all of the run. The policy is
seeded, so before and after build the same trees (checked). The last two lines: replayed env steps per real one
and 3SPO / GRPO env time, before and after.
"""

from __future__ import annotations

import argparse
import gc
import random
import shutil
import tempfile
import time
from pathlib import Path

from threespo_verl.data import archives_dir, data_dir
from threespo_verl.envs import available, make
from threespo_verl.envs.alfworld import AlfWorldEnv
from threespo_verl.envs.base import TextEnv


def resolve_data(kind: str, given: Path | None, scratch: Path) -> Path | None:
    """``given``, else the data home if installed, else an install from ``$THREESPO_DATA_ARCHIVES`` into ``scratch``."""
    if given is not None:
        return given
    home = data_dir(kind)
    if home.exists() and any(home.iterdir()):
        return home
    archives = archives_dir(kind)
    if archives is None:
        return None
    if kind == "alfworld":
        from threespo_verl.envs.alfworld_setup import install

        return install(source=archives, dest=scratch / kind, splits=("valid_seen", "valid_unseen"))
    from threespo_verl.envs.webshop.setup import install

    return install(source=archives, dest=scratch / kind)


def bench_ours(data: Path, tasks) -> tuple[float, float, int, float]:
    env = make("alfworld", data_dir=data, max_steps=200)
    reset_s = step_s = rereset_s = 0.0
    steps = 0
    for task in tasks:
        t0 = time.perf_counter()
        env.reset(task)
        reset_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        env.reset(task)  # the same game again: the loaded game is cached in the env
        rereset_s += time.perf_counter() - t0
        for action in env.walkthrough(task):
            t0 = time.perf_counter()
            _obs, _r, terminated, truncated, info = env.step(action)
            step_s += time.perf_counter() - t0
            steps += 1
        assert info["won"], task.task_id
    env.close()
    return reset_s / len(tasks), steps / step_s, steps, rereset_s / len(tasks)


def bench_stock(data: Path, tasks, game_files, train_mode: bool) -> tuple[float, float, int]:
    from alfworld.agents.environment.alfred_tw_env import AlfredTWEnv

    split = str(data / "json_2.1.1" / "valid_seen")
    config = {
        "env": {"goal_desc_human_anns_prob": 0, "task_types": [1, 2, 3, 4, 5, 6], "domain_randomization": False,
                "expert_type": "handcoded"},
        "dataset": {"data_path": split, "eval_id_data_path": split, "eval_ood_data_path": split,
                    "num_train_games": -1, "num_eval_games": -1},
        "logic": {"domain": str(data / "logic" / "alfred.pddl"), "grammar": str(data / "logic" / "alfred.twl2")},
        "general": {"training_method": "dagger"},
        "dagger": {"training": {"max_nb_steps_per_episode": 200}},
    }
    reader = make("alfworld", data_dir=data)  # reads the walkthroughs only; loads no game
    walkthroughs = {t.task_id: reader.walkthrough(t) for t in tasks}
    reset_s = step_s = 0.0
    steps = 0
    for task, game in zip(tasks, game_files):
        tw = AlfredTWEnv(config, train_eval="train" if train_mode else "eval_in_distribution")
        tw.game_files = [str(game)]
        tw.num_games = 1
        env = tw.init_env(batch_size=1)
        t0 = time.perf_counter()
        _obs, infos = env.reset()
        reset_s += time.perf_counter() - t0
        for action in walkthroughs[task.task_id]:
            t0 = time.perf_counter()
            _obs, _scores, _dones, infos = env.step([action])
            step_s += time.perf_counter() - t0
            steps += 1
        assert infos["won"][0], task.task_id
        env.close()
    return reset_s / len(tasks), steps / step_s, steps


def bench_restore(k: int = 8, repeats: int = 200) -> tuple[float, float]:
    env = make("household", max_steps=100)
    task = env.tasks("train")[0]
    rng = random.Random(0)
    env.reset(task)
    prefix = []
    for _ in range(k):
        a = rng.choice([x for x in env.admissible_actions if x.startswith("go to ")])
        prefix.append(a)
        env.step(a)
    t0 = time.perf_counter()
    for _ in range(repeats):
        e = make("household", max_steps=100)
        e.reset(task)
        for a in prefix:
            e.step(a)
    replay = (time.perf_counter() - t0) / repeats
    t0 = time.perf_counter()
    for _ in range(repeats):
        env.clone()
    clone = (time.perf_counter() - t0) / repeats
    return replay, clone


def bench_random_policy(name: str, episodes: int, **kwargs) -> float:
    env = make(name, **kwargs)
    rng = random.Random(0)
    steps, elapsed = 0, 0.0
    for task in env.tasks(env.splits[0])[:episodes]:
        env.reset(task)
        done = False
        while not done:
            acts = env.admissible_actions
            t0 = time.perf_counter()
            _o, _r, terminated, truncated, _i = env.step(rng.choice(acts) if acts else None)
            done = terminated or truncated
            elapsed += time.perf_counter() - t0
            steps += 1
    return steps / elapsed


def webshop_memory_per_env(n: int = 50, **kwargs) -> float:
    import psutil

    proc = psutil.Process()
    first = make("webshop", **kwargs)  # loads the shared catalog and index once
    first.reset(first.tasks("test")[0])
    gc.collect()
    before = proc.memory_info().rss
    envs = [make("webshop", **kwargs) for _ in range(n)]
    for i, e in enumerate(envs):
        e.reset(e.tasks("test")[i])
    gc.collect()
    return (proc.memory_info().rss - before) / n


async def _concurrent_episodes(tasks, group: int, source, policy, latency: float) -> tuple[int, int, float]:
    """``group`` episodes of every task as concurrent sessions, each on a new env from ``source`` (as the agent loop
    does); returns (episodes, env steps, wall seconds)."""
    import asyncio

    from threespo_verl.rollout.expand import play_episode
    from threespo_verl.testing import scripted_sampler

    async def one(task, g: int) -> int:
        scripted = scripted_sampler(policy, seed=g)

        async def sample(messages, n, choices=()):
            if latency:
                await asyncio.sleep(latency)
            return await scripted(messages, n, choices)

        env = source()
        try:
            return len(await play_episode(task, env, sample))
        finally:
            env.close()

    t0 = time.perf_counter()
    steps = await asyncio.gather(*[one(t, g) for t in tasks for g in range(group)])
    return len(steps), sum(steps), time.perf_counter() - t0


def bench_workers(env_name: str, kw: dict, tasks, plans, group: int, max_workers: int, latency: float) -> None:
    import asyncio

    from threespo_verl.envs.pool import EnvPool
    from threespo_verl.testing import ScriptedPolicy

    policy = ScriptedPolicy(plans=plans, p_malformed=0.05)
    print(f"{env_name} episode mode: {len(tasks)} tasks x {group} episodes as concurrent sessions, "
          f"H={kw['max_steps']}, scripted policy; a new env per episode (as the agent loop)")
    print(f"  {'envs':18s} {'latency':>8s} {'episodes':>8s} {'env steps':>9s} {'wall s':>7s} {'episodes/s':>10s} "
          f"{'steps/s':>8s}")
    rate: dict[tuple[str, float], float] = {}
    for lat in sorted({0.0, latency}):
        for n in range(0, max_workers + 1):
            pool = EnvPool(env_name, kw, num_workers=n) if n else None
            if pool:
                asyncio.run(pool.ready())  # process start-up is not env work
            source = pool.env if pool else (lambda: make(env_name, **kw))
            name = f"{n} env worker{'s' if n > 1 else ''}" if n else "in-process"
            try:
                eps, steps, wall = asyncio.run(_concurrent_episodes(tasks, group, source, policy, lat))
            finally:
                if pool:
                    pool.close()
            rate[(name, lat)] = eps / wall
            print(f"  {name:18s} {lat:8.2f} {eps:8d} {steps:9d} {wall:7.1f} {eps / wall:10.2f} {steps / wall:8.1f}")
    for lat in sorted({0.0, latency}):
        base = rate[("in-process", lat)]
        print(f"  latency {lat:.2f} s: " + ", ".join(f"{k} / in-process {v / base:.2f}" for (k, la), v in rate.items()
                                                    if la == lat and k != "in-process"))
    one, two = rate[("1 env worker", 0.0)], rate.get(("2 env workers", 0.0))
    if two is not None:
        print(f"{env_name}: 1 env worker / in-process {one / rate[('in-process', 0.0)]:.2f}")
        print(f"episode throughput 2 workers / 1 worker {two / one:.2f}")


class ReplayAlfWorldEnv(AlfWorldEnv):
    """ALFWorld with cloning switched off: ``EnvCache`` restores every search-tree node by reset + replay."""

    supports_clone = False


class EnvClock:
    """Wall time and calls inside env methods (reset, step, clone), over every env made by ``factory`` (and their
    clones)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = {"reset": 0, "step": 0, "clone": 0}

    def factory(self, cls: type[TextEnv], **kwargs):
        clock = self

        def timed(name):
            method = getattr(cls, name)

            def call(env, *args):
                t0 = time.perf_counter()
                try:
                    return method(env, *args)
                finally:
                    clock.seconds += time.perf_counter() - t0
                    clock.calls[name] += 1

            return call

        timed_cls = type(f"Timed{cls.__name__}", (cls,), {n: timed(n) for n in self.calls})
        return lambda: timed_cls(**kwargs)


def bench_branching(args, data: Path, scratch: Path) -> None:
    from bench_exploration import setup

    from threespo_verl.rollout.expand import ScoreParams
    from threespo_verl.rollout.local import explore_3spo, run_episodes
    from threespo_verl.store.state_store import StateStore
    from threespo_verl.testing import ScriptedPolicy, scripted_sampler

    h, g = args.max_steps, args.group
    tasks, _factory, plans, where = setup("alfworld", args.tasks, h, data, scratch)
    policy = ScriptedPolicy(plans=plans)
    budget = g * h
    print(f"ALFWorld branching: {len(tasks)} tasks ({where}) | budget {budget} env steps per task (G={g} x H={h}) | "
          f"3SPO G_max={g} | ScriptedPolicy(goal/plan-biased), seed {args.seed}, zero latency")
    print(f"  {'run':28s} {'real steps':>10s} {'replayed':>9s} {'replayed/real':>13s} {'resets':>7s} {'clones':>7s} "
          f"{'env s':>8s} {'run s':>8s} {'states':>7s} {'solved':>6s}")
    rows = {}
    for label, cls in (("3SPO before (reset+replay)", ReplayAlfWorldEnv), ("3SPO after (clone)", AlfWorldEnv),
                       ("GRPO episodes", AlfWorldEnv)):
        clock = EnvClock()
        factory = clock.factory(cls, data_dir=data, max_steps=h)
        t0 = time.perf_counter()
        if label.startswith("3SPO"):
            r = explore_3spo(tasks, factory, scripted_sampler(policy, args.seed), StateStore(), ScoreParams(g_max=g),
                             budget=budget, max_envs=1024)
            real, replayed = r.env_steps, r.replayed_steps
            states, solved = sum(len(t.state_keys()) for t in r.trees), sum(t.solved for t in r.trees)
            shape = [sorted(t.state_keys()) for t in r.trees]
        else:
            e = run_episodes(tasks, factory, scripted_sampler(policy, args.seed), group_size=g)
            real, replayed = e.env_steps, 0
            states, solved, shape = sum(len(s) for s in e.states.values()), sum(e.solved.values()), None
        run_s = time.perf_counter() - t0
        assert clock.calls["step"] == real + replayed, (label, clock.calls, real, replayed)
        rows[label] = {"real": real, "replayed": replayed, "env_s": clock.seconds, "shape": shape}
        print(f"  {label:28s} {real:>10d} {replayed:>9d} {replayed / real:>13.2f} {clock.calls['reset']:>7d} "
              f"{clock.calls['clone']:>7d} {clock.seconds:>8.1f} {run_s:>8.1f} {states:>7d} {solved:>6d}", flush=True)
    before, after, grpo = rows.values()
    same = before["shape"] == after["shape"] and before["real"] == after["real"]
    print(f"same trees before and after (states of every tree, real steps): {'yes' if same else 'NO'}")
    per_step = {k: row["env_s"] / row["real"] for k, row in rows.items()}
    print(f"3SPO env time before / after = {before['env_s'] / after['env_s']:.1f}x; env s per real step: "
          + ", ".join(f"{k.split(' (')[0]} {v:.3f}" for k, v in per_step.items()))
    for name, row in (("alfworld 3spo before", before), ("alfworld 3spo", after)):
        print(f"{name}: replayed/real {row['replayed'] / row['real']:.2f}, "
              f"3spo/grpo env time {row['env_s'] / grpo['env_s']:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--games", type=int, default=8)
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--webshop-data", type=Path, default=None)
    ap.add_argument("--workers", action="store_true", help="env throughput in episode mode, in-process vs env workers")
    ap.add_argument("--max-workers", type=int, default=2, help="--workers: measure 1..N env workers")
    ap.add_argument("--latency", type=float, default=0.05, help="--workers: seconds per reply in the latency runs")
    ap.add_argument("--branching", action="store_true",
                    help="instead: 3SPO tree exploration vs GRPO episodes on ALFWorld, restores by replay vs clone")
    ap.add_argument("--tasks", type=int, default=4, help="--branching: valid_seen games (the first ones)")
    ap.add_argument("--max-steps", type=int, default=None, help="H (default: --branching 20, --workers 15)")
    ap.add_argument("--group", type=int, default=None,
                    help="--branching: G, GRPO's episodes per task = 3SPO's G_max (default 8); --workers: episodes "
                         "per game (default 2)")
    ap.add_argument("--seed", type=int, default=0, help="--branching: the scripted policy's seed")
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench_envs_"))
    data = resolve_data("alfworld", args.data, scratch)
    if data is None:
        raise SystemExit("no ALFWorld data: run `threespo-verl setup alfworld` or pass --data DIR")
    if args.branching:
        args.max_steps, args.group = args.max_steps or 20, args.group or 8
        bench_branching(args, data, scratch)
        shutil.rmtree(scratch, ignore_errors=True)
        return
    if args.workers:
        from threespo_verl.testing import household_plans

        group = args.group or 2
        hh = make("household").tasks("test")[: 4 * args.games]
        bench_workers("household", {"max_steps": 30}, hh, household_plans(hh), group, 2, 0.0)
        reader = make("alfworld", data_dir=data)
        seen = reader.tasks("valid_seen")
        tasks = seen[:: max(1, len(seen) // args.games)][: args.games]
        plans = {reader.reset(t)[0].goal: reader.walkthrough(t) for t in tasks}
        reader.close()
        kw = {"data_dir": str(data), "max_steps": args.max_steps or 15}
        bench_workers("alfworld", kw, tasks, plans, group, max(2, args.max_workers), args.latency)
        shutil.rmtree(scratch, ignore_errors=True)
        return

    env = make("alfworld", data_dir=data)
    seen = env.tasks("valid_seen")
    tasks = seen[:: max(1, len(seen) // args.games)][: args.games]
    games = [env.game_file(t) for t in tasks]
    print(f"ALFWorld: {len(tasks)} valid_seen games, stored walkthroughs")
    # stock first: our env memoizes TextWorld's grammar parsing process-wide once it loads a game
    s_reset, s_sps, _ = bench_stock(data, tasks, games, train_mode=True)
    e_reset, e_sps, _ = bench_stock(data, tasks, games, train_mode=False)
    o_reset, o_sps, n, o_rereset = bench_ours(data, tasks)
    print(f"  {'env':34s} {'reset (s)':>10s} {'steps/s':>9s}")
    print(f"  {'ours (AlfWorldEnv)':34s} {o_reset:10.2f} {o_sps:9.1f}")
    print(f"  {'stock AlfredTWEnv, RL mode+expert':34s} {s_reset:10.2f} {s_sps:9.1f}")
    print(f"  {'stock AlfredTWEnv, eval mode':34s} {e_reset:10.2f} {e_sps:9.1f}")
    print(f"  {'ours, reset of an already loaded game':34s} {o_rereset:10.2f}")
    print(f"  steps measured per env: {n}")

    replay, clone = bench_restore()
    print(f"household restore of an 8-step node: replay {replay * 1e6:.0f} us, clone {clone * 1e6:.0f} us "
          f"(replay/clone = {replay / clone:.1f}x)")
    print(f"household random policy: {bench_random_policy('household', 200):,.0f} steps/s")
    if "webshop" in available():
        ws = {"data_dir": resolve_data("webshop", args.webshop_data, scratch) or data_dir("webshop")}
        try:
            sps, mem = bench_random_policy("webshop", 20, **ws), webshop_memory_per_env(**ws)
            print(f"webshop random policy: {sps:,.0f} steps/s; "
                  f"memory per env (RSS growth over 50 envs, catalog shared): {mem / 1024:.1f} KiB")
        except FileNotFoundError as exc:
            print(f"webshop: skipped ({exc})")
    else:
        print("webshop: not registered in this checkout; skipped")
    print(f"ALFWorld steps/s ours / stock (RL mode) = {o_sps / s_sps:.2f}x  (goal >= 1.5x); "
          f"ours / stock (eval mode) = {o_sps / e_sps:.2f}x")
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
