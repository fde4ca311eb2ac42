"""``check_env(env)``: does an environment follow the protocol of ``envs/base.py``? (DESIGN §4)

Run it on a new environment before training with it::

    from threespo_verl.envs import check_env
    check_env(MyEnv(max_steps=10))               # raises EnvCheckError naming the broken rule

It plays a few tasks of the environment's first split (or the ``task`` given) with seeded random actions, so it
resets and steps ``env`` (leaving it in some later state), and checks:

* ``tasks(split)`` returns ``Task`` objects whose ``env_name`` is ``env.name``; an unknown split raises ValueError;
* ``reset(task)`` returns ``(Observation, dict)``; the observation names the task, has a goal and a state key, and
  every admissible action passes ``is_valid``;
* ``step(action)`` returns ``(Observation, reward, terminated, truncated, info)``: reward in [0, 1], two bools never
  both True, ``info`` with ``INFO_KEYS``, ``info["steps"]`` counting steps, ``info["timeout"] == truncated``;
* reset and step are deterministic: the same task and actions give the same results, whatever happened before;
* ``None`` and garbage actions are invalid steps: ``is_valid`` is False, ``step`` does not raise, reports
  ``valid=False``, ``state_changed=False``, not won, and keeps the state key (so the key holds no step counter);
* the episode is truncated exactly at ``max_steps`` steps (not before), and ``step`` after the end raises
  RuntimeError;
* where ``supports_clone``: a clone has the same observation, and a clone and its twin step alike.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from threespo_verl.envs.base import INFO_KEYS, Observation, Task, TextEnv

#: actions every environment must treat as invalid steps (None is a malformed model reply)
GARBAGE_ACTIONS: tuple[str | None, ...] = (None, "", "fly to the moon", "<action>", "go to " * 50)


class EnvCheckError(AssertionError):
    """An environment broke a rule of the protocol; the message names the environment, the rule and the values."""


def check_env(env: TextEnv, task: Task | Sequence[Task] | None = None, *, split: str | None = None,
              n_tasks: int = 3, seed: int = 0) -> None:
    """Check ``env`` against the environment protocol (see the module docstring); raise ``EnvCheckError`` on the
    first broken rule. ``task``: the task(s) to play (default: ``n_tasks`` tasks spread over ``split``, the
    environment's first split unless given)."""
    c = _Checker(env, seed)
    tasks = c.pick_tasks(task, split, n_tasks)
    for t in tasks:
        c.check_reset(t)
        c.check_determinism(t)
    first = tasks[0]
    c.check_first_step(first)
    c.check_invalid_actions(first)
    c.check_truncation(first)
    c.check_clone(first)


class _Checker:
    def __init__(self, env: TextEnv, seed: int) -> None:
        if not isinstance(env, TextEnv):
            raise EnvCheckError(f"check_env needs a TextEnv instance, got {type(env).__name__}")
        self.env = env
        self.rng = random.Random(seed)
        self.who = f"{type(env).__name__} (name {env.name!r})"

    def fail(self, rule: str) -> None:
        raise EnvCheckError(f"{self.who}: {rule}")

    # ---- catalogue -------------------------------------------------------------------------------------------------
    def pick_tasks(self, task, split, n_tasks) -> list[Task]:
        env = self.env
        if not env.name:
            self.fail("has no name: set the class attribute `name`")
        if not env.splits:
            self.fail("declares no splits: set the class attribute `splits`")
        try:
            env.tasks("no-such-split")
        except ValueError:
            pass
        else:
            self.fail("tasks('no-such-split') must raise ValueError naming the valid splits")
        if task is not None:
            tasks = [task] if isinstance(task, Task) else list(task)
        else:
            split = split or env.splits[0]
            if split not in env.splits:
                self.fail(f"split {split!r} is not in splits {env.splits}")
            every = env.tasks(split)
            if not isinstance(every, list) or not every:
                self.fail(f"tasks({split!r}) must return a non-empty list, got {type(every).__name__} "
                          f"of length {len(every) if hasattr(every, '__len__') else '?'}")
            tasks = every[:: max(1, len(every) // n_tasks)][:n_tasks]
        for t in tasks:
            if not isinstance(t, Task):
                self.fail(f"tasks() must hold Task objects, got {type(t).__name__}")
            if t.env_name != env.name:
                self.fail(f"task {t.task_id!r} has env_name {t.env_name!r}, not the env's name {env.name!r}")
        if not tasks:
            self.fail("no task to check")
        return tasks

    # ---- episode ---------------------------------------------------------------------------------------------------
    def reset(self, task: Task) -> Observation:
        out = self.env.reset(task)
        if not (isinstance(out, tuple) and len(out) == 2):
            self.fail(f"reset(task) must return (observation, info), got {_shape(out)}")
        obs, info = out
        if not isinstance(obs, Observation):
            self.fail(f"reset(task) must return an Observation first, got {type(obs).__name__}")
        if not isinstance(info, dict):
            self.fail(f"reset(task) must return an info dict second, got {type(info).__name__}")
        return obs

    def step(self, action: str | None, steps: int):
        out = self.env.step(action)
        if not (isinstance(out, tuple) and len(out) == 5):
            self.fail(f"step({action!r}) must return (observation, reward, terminated, truncated, info), "
                      f"got {_shape(out)}")
        obs, reward, terminated, truncated, info = out
        if not isinstance(obs, Observation):
            self.fail(f"step({action!r}) must return an Observation first, got {type(obs).__name__}")
        if not isinstance(reward, (int, float)) or isinstance(reward, bool) or not 0.0 <= reward <= 1.0:
            self.fail(f"step({action!r}) reward must be a number in [0, 1], got {reward!r}")
        if not (isinstance(terminated, bool) and isinstance(truncated, bool)):
            self.fail(f"step({action!r}) terminated and truncated must be bools, got {terminated!r}, {truncated!r}")
        if terminated and truncated:
            self.fail(f"step({action!r}) returned terminated and truncated both True (truncated is for the step "
                      "limit cutting an episode that did not end by itself)")
        if not isinstance(info, dict) or not set(INFO_KEYS) <= set(info):
            missing = sorted(set(INFO_KEYS) - set(info)) if isinstance(info, dict) else INFO_KEYS
            self.fail(f"step({action!r}) info must be a dict with keys {INFO_KEYS} (envs.make_info builds one); "
                      f"missing {missing}")
        if info["steps"] != steps:
            self.fail(f"step({action!r}) info['steps'] is {info['steps']!r}, expected {steps}")
        if bool(info["timeout"]) != truncated:
            self.fail(f"step({action!r}) info['timeout'] ({info['timeout']!r}) differs from truncated ({truncated!r})")
        if self.env.observation != obs:
            self.fail(f"env.observation after step({action!r}) is not the observation step returned")
        return obs, reward, terminated, truncated, info

    def play(self, task: Task, n: int) -> tuple[list[str | None], list[Any]]:
        """Reset, then up to ``n`` seeded random actions (mostly admissible, some garbage): (actions, trace)."""
        trace: list[Any] = [self.reset(task)]
        actions: list[str | None] = []
        for i in range(n):
            acts = self.env.observation.admissible_actions
            garbage = self.rng.choice([None, "fly to the moon"])
            a = self.rng.choice(acts) if acts and self.rng.random() < 0.8 else garbage
            actions.append(a)
            out = self.step(a, i + 1)
            trace.append(out)
            if out[2] or out[3]:
                break
        return actions, trace

    def replay(self, task: Task, actions) -> list[Any]:
        trace: list[Any] = [self.reset(task)]
        trace += [self.step(a, i + 1) for i, a in enumerate(actions)]
        return trace

    # ---- rules -----------------------------------------------------------------------------------------------------
    def check_reset(self, task: Task) -> None:
        obs = self.reset(task)
        if (obs.task_id, obs.task_type) != (task.task_id, task.task_type):
            self.fail(f"reset({task.task_id!r}) observation names task {obs.task_id!r}/{obs.task_type!r}")
        if not obs.goal or not isinstance(obs.goal, str):
            self.fail(f"reset({task.task_id!r}) observation has no goal text")
        if not obs.state_key or not isinstance(obs.state_key, str):
            self.fail(f"reset({task.task_id!r}) observation has no state key")
        if not isinstance(obs.admissible_actions, tuple):
            self.fail(f"admissible_actions must be a tuple, got {type(obs.admissible_actions).__name__}")
        bad = [a for a in obs.admissible_actions if not self.env.is_valid(a)]
        if bad:
            self.fail(f"is_valid is False for admissible actions {bad[:3]} after reset({task.task_id!r})")

    def check_determinism(self, task: Task) -> None:
        actions, trace = self.play(task, 8)
        self.play(task, 3)  # something else in between
        again = self.replay(task, actions)
        for i, (a, b) in enumerate(zip(trace, again)):
            if a != b:
                what = "reset" if i == 0 else f"step {i} ({actions[i - 1]!r})"
                self.fail(f"not deterministic on task {task.task_id!r}: {what} gave a different result when "
                          f"replayed after a reset")

    def check_first_step(self, task: Task) -> None:
        obs = self.reset(task)
        if not obs.admissible_actions:
            return  # open action space: nothing admissible to try
        _obs, _r, _te, _tr, info = self.step(obs.admissible_actions[0], 1)
        if not info["valid"]:
            self.fail(f"the admissible action {obs.admissible_actions[0]!r} was reported invalid")

    def check_invalid_actions(self, task: Task) -> None:
        for bad in GARBAGE_ACTIONS:
            obs = self.reset(task)
            if self.env.is_valid(bad):
                self.fail(f"is_valid({bad!r}) is True; malformed and unknown actions must be invalid")
            try:
                nobs, _r, terminated, _tr, info = self.step(bad, 1)
            except EnvCheckError:
                raise
            except Exception as exc:  # noqa: BLE001 - the rule is that invalid actions never raise
                self.fail(f"step({bad!r}) raised {type(exc).__name__}: {exc}; an invalid action is an invalid step")
            if info["valid"] or info["state_changed"] or info["won"] or terminated:
                self.fail(f"step({bad!r}) must be an invalid step (valid, state_changed, won and terminated all "
                          f"False), got valid={info['valid']}, state_changed={info['state_changed']}, "
                          f"won={info['won']}, terminated={terminated}")
            if nobs.state_key != obs.state_key:
                self.fail(f"step({bad!r}) changed the state key ({obs.state_key!r} -> {nobs.state_key!r}); an "
                          "invalid step keeps it")

    def check_truncation(self, task: Task) -> None:
        max_steps = getattr(self.env, "max_steps", None)
        if max_steps is None:
            return
        obs = self.reset(task)
        for i in range(1, int(max_steps) + 1):
            nobs, _r, _te, truncated, _info = self.step(None, i)
            if truncated != (i == max_steps):
                self.fail(f"with max_steps={max_steps}, step {i} returned truncated={truncated} (expected "
                          f"{i == max_steps}: truncated exactly when the step limit is reached)")
            if nobs.state_key != obs.state_key:
                self.fail(f"the state key changed after {i} invalid steps: the key must not count steps")
        try:
            self.env.step(None)
        except RuntimeError:
            pass
        else:
            self.fail("step() after the episode ended must raise RuntimeError (call reset first)")

    def check_clone(self, task: Task) -> None:
        if not self.env.supports_clone:
            return
        actions, trace = self.play(task, 5)
        if len(trace) > 1 and (trace[-1][2] or trace[-1][3]):
            actions = actions[:-1]  # stand in a live state
        self.replay(task, actions)
        twin = self.env.clone()
        if twin.observation != self.env.observation:
            self.fail("a clone's observation differs from the original's")
        for a in self.env.observation.admissible_actions[:3]:
            if self.env.clone().step(a) != twin.clone().step(a):
                self.fail(f"two clones of the same state gave different results for {a!r}")


def _shape(value: Any) -> str:
    if isinstance(value, tuple):
        return f"a tuple of {len(value)} ({', '.join(type(v).__name__ for v in value)})"
    return type(value).__name__
