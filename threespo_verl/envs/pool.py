"""Parallel environment stepping in worker processes, under an explicit CPU and memory budget (DESIGN §4).

    with EnvPool("alfworld", {"data_dir": ...}, num_workers=4, max_worker_mb=2048) as pool:
        h, obs = pool.reset(task)
        results = pool.step_many([(h, "go to desk 1"), (h2, "look")])      # one StepResult per request, in order

* ``num_workers`` processes (spawned, so no fork-inherited locks or engine state), each holding the environments of
  its handles; handles are spread over workers by load. Steps of different workers run in parallel.
* The pool records every handle's task and action prefix. When a worker dies (killed, out of memory, a native crash)
  it is restarted, its environments are rebuilt by reset + replay of their prefixes, and the in-flight steps are
  retried once. A step that fails again comes back as a ``StepResult`` with ``error`` set: nothing is lost silently.
* ``max_worker_mb``: after each ``step_many`` a worker whose resident memory exceeds the budget is restarted the same
  way (engines such as TextWorld's planner can grow).
* ``stats``: steps, restarts, retried and failed steps, replayed env steps.
"""

from __future__ import annotations

import dataclasses
import itertools
import multiprocessing as mp
from collections.abc import Callable, Sequence
from typing import Any

from threespo_verl.envs.base import Observation, Task


@dataclasses.dataclass
class StepResult:
    """One environment step (``TextEnv.step``'s five values), or an ``error`` (then ``truncated`` is True: the
    episode cannot go on)."""

    observation: Observation | None
    reward: float
    terminated: bool
    truncated: bool
    info: dict[str, Any]
    error: str | None = None
    retried: bool = False

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated


class WorkerCrashed(RuntimeError):
    pass


def _worker_main(conn, env_name: str | None, env_kwargs: dict, factory: Callable | None) -> None:
    from threespo_verl.envs import make

    envs: dict[int, Any] = {}

    def new_env():
        return factory(**env_kwargs) if factory is not None else make(env_name, **env_kwargs)

    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        kind = msg[0]
        try:
            if kind == "reset":  # ("reset", handle, task, prefix)
                _, handle, task, prefix = msg
                env = envs.get(handle) or new_env()
                envs[handle] = env
                obs, _info = env.reset(task)
                for action in prefix:
                    obs = env.step(action)[0]
                conn.send(("ok", obs))
            elif kind == "step":  # ("step", [(handle, action), ...])
                out = []
                for handle, action in msg[1]:
                    try:
                        out.append(("ok", envs[handle].step(action)))
                    except Exception as exc:  # noqa: BLE001 - one bad env must not take the others down
                        out.append(("error", f"{type(exc).__name__}: {exc}"))
                conn.send(("ok", out))
            elif kind == "release":
                env = envs.pop(msg[1], None)
                if env is not None:
                    env.close()
                conn.send(("ok", None))
            elif kind == "stop":
                for env in envs.values():
                    env.close()
                conn.send(("ok", None))
                return
        except Exception as exc:  # noqa: BLE001
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class _Worker:
    def __init__(self, ctx, env_name, env_kwargs, factory):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, env_name, env_kwargs, factory), daemon=True)
        self.proc.start()
        child.close()

    def send(self, msg) -> None:
        try:
            self.conn.send(msg)
        except (BrokenPipeError, ConnectionResetError, OSError) as exc:
            raise WorkerCrashed(f"worker {self.proc.pid} died: {exc!r}") from exc

    def recv(self, timeout: float | None):
        try:
            if not self.conn.poll(timeout):
                raise WorkerCrashed(f"worker {self.proc.pid} did not answer within {timeout} s")
            status, payload = self.conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError, OSError) as exc:
            raise WorkerCrashed(f"worker {self.proc.pid} died: {exc!r}") from exc
        if status != "ok":
            raise RuntimeError(payload)
        return payload

    def call(self, msg, timeout: float | None):
        self.send(msg)
        return self.recv(timeout)

    def rss_mb(self) -> float:
        import psutil

        try:
            return psutil.Process(self.proc.pid).memory_info().rss / 2**20
        except psutil.Error:
            return 0.0

    def kill(self):
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=10)
        self.conn.close()


class EnvPool:
    def __init__(self, env_name: str | None = None, env_kwargs: dict | None = None, num_workers: int = 2,
                 max_worker_mb: float | None = None, step_timeout: float | None = 600.0,
                 factory: Callable | None = None) -> None:
        if (env_name is None) == (factory is None):
            raise ValueError("give exactly one of env_name or factory (a picklable callable building a TextEnv)")
        if num_workers < 1:
            raise ValueError("num_workers must be >= 1")
        self._ctx = mp.get_context("spawn")
        self._spec = (env_name, dict(env_kwargs or {}), factory)
        self._max_mb = max_worker_mb
        self._timeout = step_timeout
        self._workers = [_Worker(self._ctx, *self._spec) for _ in range(num_workers)]
        self._owner: dict[int, int] = {}  # handle -> worker index
        self._task: dict[int, Task] = {}
        self._prefix: dict[int, list[str | None]] = {}
        self._ids = itertools.count()
        self.stats = {"steps": 0, "restarts": 0, "retried_steps": 0, "failed_steps": 0, "replayed_steps": 0}

    # ---- public API ----------------------------------------------------------------------------------------------
    def reset(self, task: Task, prefix: Sequence[str | None] = ()) -> tuple[int, Observation]:
        """A new handle on a worker with the fewest environments, positioned after ``prefix``."""
        handle = next(self._ids)
        load = [0] * len(self._workers)
        for w in self._owner.values():
            load[w] += 1
        w = min(range(len(self._workers)), key=load.__getitem__)
        self._owner[handle], self._task[handle], self._prefix[handle] = w, task, list(prefix)
        obs = self._call_with_restart(w, ("reset", handle, task, list(prefix)))
        return handle, obs

    def step_many(self, requests: Sequence[tuple[int, str | None]]) -> list[StepResult]:
        """Step several environments (in parallel across workers); one result per request, in order."""
        by_worker: dict[int, list[int]] = {}
        for i, (handle, _a) in enumerate(requests):
            if handle not in self._owner:
                raise KeyError(f"unknown env handle {handle}")
            by_worker.setdefault(self._owner[handle], []).append(i)
        results: list[StepResult | None] = [None] * len(requests)
        # send to every worker first, then collect: the workers step concurrently
        sent = {}
        for w, idx in by_worker.items():
            try:
                self._workers[w].send(("step", [requests[i] for i in idx]))
                sent[w] = True
            except WorkerCrashed:
                sent[w] = False
        for w, idx in by_worker.items():
            payload = None
            if sent[w]:
                try:
                    payload = self._workers[w].recv(self._timeout)
                except WorkerCrashed:
                    payload = None
            retried = payload is None
            if retried:
                self._restart(w)
                self.stats["retried_steps"] += len(idx)
                try:
                    payload = self._workers[w].call(("step", [requests[i] for i in idx]), self._timeout)
                except WorkerCrashed as exc:
                    self._restart(w)
                    payload = [("error", f"worker crashed twice on this step: {exc}")] * len(idx)
            for i, (status, value) in zip(idx, payload):
                handle, action = requests[i]
                if status == "ok":
                    obs, reward, terminated, truncated, info = value
                    self._prefix[handle].append(action)
                    results[i] = StepResult(obs, reward, terminated, truncated, info, retried=retried)
                else:
                    self.stats["failed_steps"] += 1
                    results[i] = StepResult(None, 0.0, False, True, {}, error=value, retried=retried)
        self.stats["steps"] += len(requests)
        self._enforce_memory(by_worker)
        return results  # type: ignore[return-value]

    def release(self, handle: int) -> None:
        w = self._owner.pop(handle)
        self._task.pop(handle)
        self._prefix.pop(handle)
        self._call_with_restart(w, ("release", handle))

    def worker_pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers]

    def close(self) -> None:
        for w in self._workers:
            try:
                w.call(("stop",), timeout=10)
            except (WorkerCrashed, RuntimeError):
                pass
            w.kill()
        self._workers = []

    def __enter__(self) -> "EnvPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- internals -----------------------------------------------------------------------------------------------
    def _call_with_restart(self, w: int, msg):
        try:
            return self._workers[w].call(msg, self._timeout)
        except WorkerCrashed:
            self._restart(w)
            return self._workers[w].call(msg, self._timeout)

    def _restart(self, w: int) -> None:
        """Replace worker ``w`` and rebuild its environments by reset + replay of their recorded prefixes."""
        self._workers[w].kill()
        self._workers[w] = _Worker(self._ctx, *self._spec)
        self.stats["restarts"] += 1
        for handle, owner in self._owner.items():
            if owner == w:
                prefix = self._prefix[handle]
                self._workers[w].call(("reset", handle, self._task[handle], prefix), self._timeout)
                self.stats["replayed_steps"] += len(prefix)

    def _enforce_memory(self, used: dict[int, list[int]]) -> None:
        if self._max_mb is None:
            return
        for w in used:
            if self._workers[w].rss_mb() > self._max_mb:
                self._restart(w)
