"""``EnvCache``: environments positioned at search-tree nodes (a parked one, a clone, or reset + replay of the
node's action prefix) for the 3SPO expansion (DESIGN §4, §2.5).

A node is identified by its task and the action prefix that leads to it. ``EnvCache`` hands out environments
positioned at a node:

* a live environment parked at exactly that node (``release``\\ d earlier, e.g. by the branch that created the
  followed child) is returned as is: continuing the followed child never replays;
* else, where the engine can clone (``env.supports_clone``), a parked environment at the node is cloned for every
  further branch, and a parked ancestor is cloned and advanced by the missing suffix;
* else the environment is reset and the prefix replayed (``replayed_steps`` counts those env steps).

The environments are ``AsyncEnv``\\ s (``envs/pool.py``): the factory builds a ``TextEnv`` (run in this process)
or an env worker's ``RemoteEnv``, so restores and clones run where the environment lives. Usage (one expansion of
node ``prefix`` with n branches; a node is expanded once, so its parked environment is taken, not copied)::

    env = await cache.acquire(task, prefix, take=True)
    envs = [env, *await cache.siblings(task, prefix, env, n - 1)]   # clones where possible; one per branch
    for env, action in zip(envs, actions):
        await env.step(action)
        cache.release(task, (*prefix, action), env)                 # parked at the child node

The cache is an LRU bounded by ``max_envs`` parked environments (``close()``\\ d on eviction).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Sequence

from threespo_verl.envs.base import Task, TextEnv
from threespo_verl.envs.pool import PREFIX_ENDED, AsyncEnv, as_async

NodeKey = tuple[str, tuple[str | None, ...]]


class EnvCache:
    def __init__(self, factory: Callable[[], TextEnv | AsyncEnv], max_envs: int = 64) -> None:
        if max_envs < 1:
            raise ValueError("max_envs must be >= 1")
        self._factory = factory
        self._max = max_envs
        self._parked: OrderedDict[NodeKey, list[AsyncEnv]] = OrderedDict()
        self._n_parked = 0
        self.stats = {"hits": 0, "clones": 0, "replays": 0, "replayed_steps": 0, "evictions": 0, "created": 0}

    # ---- public API --------------------------------------------------------------------------------------------
    async def acquire(self, task: Task, prefix: Sequence[str | None], take: bool = False) -> AsyncEnv:
        """An environment at the node (task, prefix), owned by the caller until ``release``\\ d.

        ``take=True`` hands over a parked environment itself (a node that will not be asked for again); otherwise a
        parked environment that can clone stays parked and the caller gets a clone."""
        key = (task.task_id, tuple(prefix))
        parked = self._parked.get(key)
        if parked:
            env = parked.pop()
            self._n_parked -= 1
            if not parked:
                del self._parked[key]
            if env.supports_clone and not take:
                # keep the original parked so siblings can clone it too
                self._park(key, env)
                self.stats["clones"] += 1
                return await env.clone()
            self.stats["hits"] += 1
            return env
        # nearest parked ancestor that can be cloned and advanced
        for cut in range(len(key[1]) - 1, -1, -1):
            anc = self._parked.get((key[0], key[1][:cut]))
            if anc and anc[-1].supports_clone:
                env = await anc[-1].clone()
                self.stats["clones"] += 1
                await self._advance(env, key[1][cut:])
                return env
        return await self._replay(task, key[1])

    async def siblings(self, task: Task, prefix: Sequence[str | None], env: AsyncEnv, k: int) -> list[AsyncEnv]:
        """``k`` more environments at the node where ``env`` (not yet stepped) stands: clones of it where the engine
        can clone, else from the cache (parked ones, or reset + replay, concurrently where env workers run them)."""
        if env.supports_clone:
            self.stats["clones"] += k
            return list(await asyncio.gather(*[env.clone() for _ in range(k)]))
        return list(await asyncio.gather(*[self.acquire(task, prefix) for _ in range(k)]))

    def release(self, task: Task, prefix: Sequence[str | None], env: AsyncEnv | TextEnv) -> None:
        """Park ``env`` (positioned at the end of ``prefix``) for later ``acquire`` of that node."""
        self._park((task.task_id, tuple(prefix)), as_async(env))

    def drop_task(self, task_id: str) -> None:
        """Close every parked environment of a finished task."""
        for key in [k for k in self._parked if k[0] == task_id]:
            for env in self._parked.pop(key):
                env.close()
                self._n_parked -= 1

    def __len__(self) -> int:
        return self._n_parked

    def close(self) -> None:
        for envs in self._parked.values():
            for env in envs:
                env.close()
        self._parked.clear()
        self._n_parked = 0

    # ---- internals ---------------------------------------------------------------------------------------------
    def _park(self, key: NodeKey, env: AsyncEnv) -> None:
        self._parked.setdefault(key, []).append(env)
        self._parked.move_to_end(key)
        self._n_parked += 1
        while self._n_parked > self._max:
            old_key, envs = next(iter(self._parked.items()))
            envs.pop(0).close()
            self._n_parked -= 1
            self.stats["evictions"] += 1
            if not envs:
                del self._parked[old_key]

    async def _replay(self, task: Task, prefix: tuple[str | None, ...]) -> AsyncEnv:
        env = as_async(self._factory())
        self.stats["created"] += 1
        await env.reset(task, prefix)  # one call: where the env lives in a worker, the replay runs there
        self.stats["replays"] += 1 if prefix else 0
        self.stats["replayed_steps"] += len(prefix)
        return env

    async def _advance(self, env: AsyncEnv, actions: Sequence[str | None]) -> None:
        for action in actions:
            _obs, _r, terminated, truncated, _info = await env.step(action)
            self.stats["replayed_steps"] += 1
            if terminated or truncated:
                raise RuntimeError(PREFIX_ENDED)
