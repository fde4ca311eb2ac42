"""The counting game: a complete user-defined environment (walked through in docs/custom_env.md).

The counter starts at 0; the task names a target. ``add 1`` and ``add 2`` raise the counter, ``subtract 1`` lowers
it (not below 0). Reaching the target wins (reward 1); going past it loses for good (reward 0); both end the episode
(``terminated``). After ``max_steps`` steps without either, the episode is ``truncated``.

Train with it by its import path (every process that builds it imports this module itself)::

    threespo-verl train env=household env.name=examples.custom_env.counting_env:CountingEnv \\
        env.train_split=train env.eval_panel=test env.max_steps=8
"""

from __future__ import annotations

import copy
from typing import Any

from threespo_verl.envs import Observation, ResetReturn, StepReturn, Task, TextEnv, make_info
from threespo_verl.envs.base import normalize_command

#: split -> number of tasks
SPLITS = {"train": 32, "test": 8}


class CountingEnv(TextEnv):
    name = "counting"
    splits = tuple(SPLITS)
    supports_clone = True

    def __init__(self, max_steps: int = 10, **kwargs: Any) -> None:
        super().__init__(max_steps=max_steps)
        self._task: Task | None = None
        self._obs: Observation | None = None
        self._count = self._target = self._steps = 0
        self._done = False

    def tasks(self, split: str) -> list[Task]:
        if split not in SPLITS:
            raise ValueError(f"counting has no split {split!r}; valid: {', '.join(SPLITS)}")
        offset = 0 if split == "train" else 1000
        out = []
        for i in range(SPLITS[split]):
            target = 2 + (i + offset) * 3 % 7  # 2..8, the same for every run
            out.append(Task(task_id=f"counting/{split}/{i:03d}", task_type="short" if target <= 4 else "long",
                            env_name=self.name, payload={"target": target}))
        return out

    def reset(self, task: Task) -> ResetReturn:
        self._task, self._target = task, int(task.payload["target"])
        self._count, self._steps, self._done = 0, 0, False
        self._observe("You look at the counter.")
        return self._obs, {}

    def step(self, action: str | None) -> StepReturn:
        if self._obs is None:
            raise RuntimeError("call reset(task) before step()")
        if self._done:
            raise RuntimeError("episode is over; call reset(task)")
        self._steps += 1
        before = self._obs.state_key
        valid = self.is_valid(action)
        if valid:
            self._count += {"add 1": 1, "add 2": 2, "subtract 1": -1}[normalize_command(action)]
        won = self._count == self._target
        terminated = won or self._count > self._target  # won, or lost for good
        truncated = not terminated and self._steps >= self.max_steps  # the step limit cut the episode
        self._done = terminated or truncated
        self._observe("You press the button." if valid else "Nothing happens.")
        info = make_info(won=won, score=float(won), valid=valid, state_changed=self._obs.state_key != before,
                         timeout=truncated, steps=self._steps)
        return self._obs, float(won), terminated, truncated, info

    def is_valid(self, action: str | None) -> bool:
        return self._obs is not None and normalize_command(action) in self._obs.admissible_actions

    def clone(self) -> "CountingEnv":
        return copy.copy(self)  # every field is immutable

    def _observe(self, feedback: str) -> None:
        actions = () if self._done else ("add 1", "add 2", *(("subtract 1",) if self._count > 0 else ()))
        self._obs = Observation(text=f"{feedback} The counter shows {self._count}.", state_key=f"count={self._count}",
                                admissible_actions=actions, task_id=self._task.task_id,
                                task_type=self._task.task_type, goal=f"make the counter show {self._target}.")
