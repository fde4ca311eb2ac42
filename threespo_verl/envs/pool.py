"""Awaitable environments for the agent loop: in this process, or in env worker processes (DESIGN §4).

The agent loop serves many sessions on one asyncio event loop. An environment call that runs on that loop blocks
every other session of the worker while it runs (an ALFWorld reset takes 1-2 s), so the agent loop makes every env
call through an ``AsyncEnv``, the ``TextEnv`` protocol with awaitable methods::

    workers = EnvPool("alfworld", {"max_steps": 50}, num_workers=2)
    env = workers.env()                       # or LocalEnv(make("household")): same protocol, in-process
    obs, info = await env.reset(task)         # reset(task, prefix) also replays an action prefix, in one call
    obs, reward, terminated, truncated, info = await env.step("go to desk 1")
    twin = await env.clone()                  # where the engine can clone (``supports_clone``)
    env.close()

``EnvPool`` runs ``num_workers`` spawned processes. A new environment goes to the worker with the fewest live
environments; a clone stays on its original's worker. Requests from all sessions are multiplexed onto the workers
(one pipe each, request ids, a reader thread per worker resolving the awaiting futures), so env work runs on other
cores while the event loop goes on generating.

Faults (both kinds of ``AsyncEnv``): every environment records its task and the actions taken since reset. A call
that raises inside the environment, or whose worker dies (killed, out of memory, a native crash) or does not answer
within ``timeout`` seconds, is retried once: the worker is restarted if it died, the environment is rebuilt by
reset + replay of its recorded prefix (every other environment of a dead worker is rebuilt the same way when next
used), and the call is made again. A call that fails twice raises ``EnvFailure``; the agent loop turns that into a
failed, counted step (``env_failed``), never a lost row. ``max_worker_mb``: a worker whose resident memory exceeds
the budget is restarted the same way before a new environment is built on it, if it has nothing in flight
(engines such as TextWorld's can grow).
``stats`` counts calls, retries, failures, restarts and replayed env steps.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing as mp
import threading
from collections.abc import Sequence
from typing import Any

from threespo_verl.envs.base import Observation, ResetReturn, StepReturn, Task, TextEnv

logger = logging.getLogger("threespo_verl.envs")


class EnvFailure(RuntimeError):
    """An environment call failed twice (it raised, or its worker died or hung); the branch or episode ends here."""


class WorkerCrashed(RuntimeError):
    """An env worker process died or did not answer in time (retried once by the caller)."""


class EnvError(RuntimeError):
    """The environment raised inside its worker (retried once by the caller, on a rebuilt environment)."""


def _new_stats() -> dict[str, int]:
    return {"calls": 0, "retries": 0, "failures": 0, "restarts": 0, "replayed_steps": 0}


#: raised when replaying a node's action prefix ends the episode before the node
PREFIX_ENDED = ("replaying a node's action prefix ended the episode early; the prefix is not a non-terminal node of "
                "this task (is the environment deterministic?)")


def _replay(env: TextEnv, task: Task, prefix: Sequence[str | None]) -> ResetReturn:
    """Reset ``env`` to ``task`` and step through ``prefix`` (a non-terminal node: raises if the episode ends)."""
    obs, info = env.reset(task)
    for action in prefix:
        obs, _r, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            raise RuntimeError(PREFIX_ENDED)
    return obs, info


class AsyncEnv:
    """The awaitable environment protocol (see module docstring). ``observation`` is the last observation."""

    supports_clone: bool = False
    observation: Observation

    async def reset(self, task: Task, prefix: Sequence[str | None] = ()) -> ResetReturn:
        raise NotImplementedError

    async def step(self, action: str | None) -> StepReturn:
        raise NotImplementedError

    async def clone(self) -> "AsyncEnv":
        raise NotImplementedError(f"{type(self).__name__} cannot clone; restore by reset + replay")

    def close(self) -> None:
        raise NotImplementedError


class LocalEnv(AsyncEnv):
    """A ``TextEnv`` in this process behind the ``AsyncEnv`` protocol, with the same retry-once rule (an env that
    raises is rebuilt by reset + replay and the call made again). For cheap engines (household) where a process
    round trip costs more than the step."""

    def __init__(self, env: TextEnv, stats: dict[str, int] | None = None) -> None:
        self._env = env
        self.supports_clone = bool(env.supports_clone)
        self.stats = stats if stats is not None else _new_stats()
        self._task: Task | None = None
        self._prefix: list[str | None] = []

    @property
    def observation(self) -> Observation:
        return self._env.observation

    @property
    def unwrapped(self) -> TextEnv:
        return self._env

    async def reset(self, task: Task, prefix: Sequence[str | None] = ()) -> ResetReturn:
        out = self._retrying(lambda: _replay(self._env, task, prefix), rebuild=False)
        self._task, self._prefix = task, list(prefix)
        return out

    async def step(self, action: str | None) -> StepReturn:
        out = self._retrying(lambda: self._env.step(action), rebuild=True)
        self._prefix.append(action)
        return out

    async def clone(self) -> "LocalEnv":
        twin = LocalEnv(self._env.clone(), self.stats)
        twin._task, twin._prefix = self._task, list(self._prefix)
        return twin

    def close(self) -> None:
        self._env.close()

    def _retrying(self, call, rebuild: bool):
        self.stats["calls"] += 1
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - an engine error costs one retry, then one counted failure
            self.stats["retries"] += 1
            logger.warning("environment call failed (%s: %s); rebuilding the environment and retrying once",
                           type(exc).__name__, exc)
        try:
            if rebuild and self._task is not None:
                _replay(self._env, self._task, self._prefix)
                self.stats["replayed_steps"] += len(self._prefix)
            return call()
        except Exception as exc:  # noqa: BLE001
            self.stats["failures"] += 1
            raise EnvFailure(f"{type(exc).__name__}: {exc}") from exc


# ---- env worker processes ------------------------------------------------------------------------------------------
#: released environments an env worker keeps for reuse: a reset of a game the env already loaded skips parsing it
#: (an ALFWorld game load takes 1-2 s, a reset of a loaded one milliseconds); ``reset`` is deterministic in the task
#: whatever the env played before (``envs/base.py``), so reuse changes no observation
IDLE_ENVS = 16


def _worker_main(conn, env_name: str, env_kwargs: dict) -> None:
    """Serve requests ``(rid, op, handle, *args)`` one at a time; answer ``(rid, "ok" | "error", payload)``."""
    from collections import OrderedDict

    from threespo_verl.envs import make

    envs: dict[int, TextEnv] = {}
    idle: OrderedDict[int, tuple[str, TextEnv]] = OrderedDict()  # released envs: id -> (last task id, env)
    last_task: dict[int, str] = {}

    def fresh(task: Task) -> TextEnv:
        """An idle env that last played ``task`` (its game is loaded), else the most recently released one, else a
        new one."""
        pick = next((k for k, (tid, _e) in reversed(idle.items()) if tid == task.task_id), None)
        if pick is None and idle:
            pick = next(reversed(idle))
        return idle.pop(pick)[1] if pick is not None else make(env_name, **env_kwargs)

    while True:
        try:
            rid, op, handle, *args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            if op == "reset":  # (task, prefix): the handle's env at the node (a rebuild drops the env it had)
                task, prefix = args
                old = envs.pop(handle, None)
                if old is not None:
                    old.close()
                envs[handle] = env = fresh(task)
                last_task[handle] = task.task_id
                out = _replay(env, task, prefix)
            elif op == "step":
                out = envs[handle].step(args[0])
            elif op == "clone":  # (source handle,)
                envs[handle] = envs[args[0]].clone()
                last_task[handle] = last_task.get(args[0], "")
                out = None
            elif op == "ping":  # start-up done (``EnvPool.ready``)
                out = None
            elif op == "release":
                env = envs.pop(handle, None)
                if env is not None:
                    idle[id(env)] = (last_task.pop(handle, ""), env)
                    while len(idle) > IDLE_ENVS:
                        idle.popitem(last=False)[1][1].close()
                continue  # fire and forget: no answer
            else:
                raise ValueError(f"unknown env worker request {op!r}")
            conn.send((rid, "ok", out))
        except Exception as exc:  # noqa: BLE001 - one bad env must not take the others down
            conn.send((rid, "error", f"{type(exc).__name__}: {exc}"))


class _Worker:
    """One env worker process, its pipe and the reader thread resolving its requests' futures."""

    def __init__(self, ctx, spec, pending: dict, lock: threading.Lock, generation: int) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, *spec), daemon=True)
        self.proc.start()
        child.close()
        self.generation = generation
        self.alive = True
        self._pending, self._lock = pending, lock
        self.rids: set[int] = set()
        self.reader = threading.Thread(target=self._read, name=f"env-worker-{self.proc.pid}", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                rid, status, payload = self.conn.recv()
            except (EOFError, OSError):
                break
            with self._lock:
                fut = self._pending.pop(rid, None)
                self.rids.discard(rid)
            exc = None if status == "ok" else EnvError(payload)
            _resolve(fut, payload, exc)
        with self._lock:
            self.alive = False
            lost = [self._pending.pop(rid, None) for rid in list(self.rids)]
            self.rids.clear()
        for fut in lost:
            _resolve(fut, None, WorkerCrashed(f"env worker {self.proc.pid} died"))

    def kill(self) -> None:
        self.alive = False
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=10)
        self.conn.close()


def _rss_mb(pid: int) -> float:
    import psutil

    try:
        return psutil.Process(pid).memory_info().rss / 2**20
    except psutil.Error:
        return 0.0


def _resolve(fut: asyncio.Future | None, value: Any, exc: BaseException | None) -> None:
    if fut is None:
        return

    def done() -> None:
        if not fut.done():
            fut.set_exception(exc) if exc is not None else fut.set_result(value)

    try:
        fut.get_loop().call_soon_threadsafe(done)
    except RuntimeError:  # the awaiting event loop is closed: nobody waits for this answer any more
        pass


class EnvPool:
    """``num_workers`` env worker processes serving ``RemoteEnv``\\ s (see module docstring)."""

    def __init__(self, env_name: str, env_kwargs: dict[str, Any] | None = None, num_workers: int = 1,
                 timeout: float | None = 600.0, max_worker_mb: float | None = None) -> None:
        if num_workers < 1:
            raise ValueError(f"env.num_workers must be >= 1 for env worker processes, got {num_workers}")
        from threespo_verl.envs import env_class

        self.supports_clone = bool(env_class(env_name).supports_clone)
        self._spec = (env_name, dict(env_kwargs or {}))
        self._ctx = mp.get_context("spawn")  # no fork-inherited locks, threads or engine state
        self._pending: dict[int, asyncio.Future] = {}
        self._lock = threading.Lock()
        self._generations = itertools.count()
        self._workers = [self._spawn() for _ in range(num_workers)]
        self._load = [0] * num_workers  # live environments per worker
        self._rids = itertools.count()
        self._handles = itertools.count()
        self.timeout = timeout
        self.max_worker_mb = max_worker_mb
        self.stats = _new_stats()

    @property
    def num_workers(self) -> int:
        return len(self._workers)

    def env(self) -> "RemoteEnv":
        """A new environment (not yet reset) on the worker with the fewest live environments."""
        w = min(range(len(self._workers)), key=self._load.__getitem__)
        return RemoteEnv(self, w, next(self._handles))

    def worker_pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers]

    def __enter__(self) -> "EnvPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    async def ready(self) -> None:
        """Wait until every worker process has started and answers (spawning imports the package: ~0.3 s)."""
        await asyncio.gather(*[self._request(w, "ping", -1) for w in range(len(self._workers))])

    def close(self) -> None:
        for w in self._workers:
            w.kill()
        self._workers = []

    # ---- internals ---------------------------------------------------------------------------------------------
    def _spawn(self) -> _Worker:
        return _Worker(self._ctx, self._spec, self._pending, self._lock, next(self._generations))

    def _worker(self, w: int) -> _Worker:
        """Worker ``w``, restarted first if it died (its environments are rebuilt when next used)."""
        worker = self._workers[w]
        if not worker.alive or not worker.proc.is_alive():
            worker.kill()
            self._workers[w] = worker = self._spawn()
            self.stats["restarts"] += 1
            logger.warning("env worker %d died; restarted it (pid %d)", w, worker.proc.pid)
        return worker

    def _recycle_if_large(self, w: int) -> None:
        """Restart worker ``w`` if it is idle and over ``max_worker_mb`` (checked before a new environment is built
        there; its other environments are rebuilt when next used)."""
        worker = self._workers[w]
        if (self.max_worker_mb is not None and worker.alive and not worker.rids
                and _rss_mb(worker.proc.pid) > self.max_worker_mb):
            logger.warning("env worker %d holds more than env.max_worker_mb=%s MB; restarting it", w,
                           self.max_worker_mb)
            worker.kill()

    async def _request(self, w: int, op: str, handle: int, *args, generation: int | None = None) -> Any:
        """Send one request to worker ``w`` and await its answer. ``generation``: the worker generation the handle
        lives in; a restarted worker does not hold it (``WorkerCrashed``, so the caller rebuilds and retries)."""
        worker = self._worker(w)
        if generation is not None and worker.generation != generation:
            raise WorkerCrashed(f"env worker {w} was restarted since this environment was built")
        rid = next(self._rids)
        fut = asyncio.get_running_loop().create_future()
        with self._lock:
            if not worker.alive:
                raise WorkerCrashed(f"env worker {worker.proc.pid} died")
            self._pending[rid] = fut
            worker.rids.add(rid)
        try:
            worker.conn.send((rid, op, handle, *args))
        except (BrokenPipeError, ConnectionResetError, OSError) as exc:
            with self._lock:
                self._pending.pop(rid, None)
                worker.rids.discard(rid)
            worker.kill()
            raise WorkerCrashed(f"env worker {worker.proc.pid} died: {exc!r}") from exc
        try:
            out = await asyncio.wait_for(fut, self.timeout)
        except asyncio.TimeoutError as exc:
            worker.kill()  # a hung engine: its reader fails the worker's other requests; all are retried
            raise WorkerCrashed(f"env worker {worker.proc.pid} did not answer within {self.timeout} s") from exc
        return out

    def _release(self, w: int, handle: int) -> None:
        self._load[w] -= 1
        worker = self._workers[w] if w < len(self._workers) else None
        if worker is not None and worker.alive:
            try:
                worker.conn.send((-1, "release", handle))
            except (BrokenPipeError, ConnectionResetError, OSError):
                pass


class RemoteEnv(AsyncEnv):
    """An environment living in an ``EnvPool`` process (built by ``EnvPool.env``)."""

    def __init__(self, pool: EnvPool, worker: int, handle: int) -> None:
        self._pool, self._w, self._handle = pool, worker, handle
        self.supports_clone = pool.supports_clone
        self._task: Task | None = None
        self._prefix: list[str | None] = []
        self._generation = -2  # the worker generation holding this env (-2 never built, -1 lost): rebuild first
        self._obs: Observation | None = None
        self._closed = False
        pool._load[worker] += 1

    @property
    def observation(self) -> Observation:
        if self._obs is None:
            raise RuntimeError("call reset(task) first")
        return self._obs

    @property
    def worker(self) -> int:
        return self._w

    async def reset(self, task: Task, prefix: Sequence[str | None] = ()) -> ResetReturn:
        self._task, self._prefix, self._generation = task, list(prefix), -2
        obs, info = await self._retrying(None)
        return obs, info

    async def step(self, action: str | None) -> StepReturn:
        if self._task is None:
            raise RuntimeError("call reset(task) before step()")
        out = await self._retrying(("step", action))
        self._prefix.append(action)
        self._obs = out[0]
        return out

    async def clone(self) -> "RemoteEnv":
        if not self.supports_clone:
            raise NotImplementedError("this environment cannot clone; restore by reset + replay")
        twin = RemoteEnv(self._pool, self._w, next(self._pool._handles))
        twin._task, twin._prefix, twin._obs = self._task, list(self._prefix), self._obs
        try:
            await self._ensure_built()
            await self._pool._request(self._w, "clone", twin._handle, self._handle, generation=self._generation)
            twin._generation = self._generation
        except (WorkerCrashed, EnvError):  # same node, rebuilt by replay instead: a clone is only an optimisation
            self._generation = -1
            await twin.reset(twin._task, twin._prefix)
        return twin

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._pool._release(self._w, self._handle)

    # ---- internals ---------------------------------------------------------------------------------------------
    async def _rebuild(self) -> ResetReturn:
        """Reset + replay of the recorded node on this env's worker (a fault rebuild counts its replayed steps;
        the first build of a node is counted by whoever asked for the node, e.g. ``EnvCache``)."""
        if self._generation == -2:
            self._pool._recycle_if_large(self._w)
        worker = self._pool._worker(self._w)
        out = await self._pool._request(self._w, "reset", self._handle, self._task, list(self._prefix))
        if self._generation != -2:
            self._pool.stats["replayed_steps"] += len(self._prefix)
        self._generation = worker.generation
        self._obs = out[0]
        return out

    async def _ensure_built(self) -> None:
        if self._pool._worker(self._w).generation != self._generation:
            await self._rebuild()

    async def _retrying(self, call: tuple[str, Any] | None):
        """``call`` (None = reset to the recorded node), retried once on a rebuilt environment."""
        self._pool.stats["calls"] += 1
        for attempt in (0, 1):
            try:
                if call is None:
                    return await self._rebuild()
                await self._ensure_built()
                return await self._pool._request(self._w, call[0], self._handle, call[1], generation=self._generation)
            except (WorkerCrashed, EnvError) as exc:
                if attempt == 1:
                    self._pool.stats["failures"] += 1
                    raise EnvFailure(str(exc)) from exc
                self._pool.stats["retries"] += 1
                self._generation = -1  # rebuild by reset + replay before the retry
                logger.warning("environment call failed (%s); rebuilding the environment and retrying once", exc)
        raise AssertionError("unreachable")


def as_async(env: TextEnv | AsyncEnv) -> AsyncEnv:
    """``env`` behind the ``AsyncEnv`` protocol (a ``TextEnv`` runs in this process)."""
    return env if isinstance(env, AsyncEnv) else LocalEnv(env)
