"""Fixed evaluation panels: the same tasks in the same order for every seed, worker count and run.

| env       | panel          | tasks                                                        |
|-----------|----------------|--------------------------------------------------------------|
| household | `test`         | the 64 test tasks                                             |
| household | `easy_test`    | the 32 held-out tasks of the CPU learning testbed (easy split)|
| alfworld  | `valid_seen`   | the 140 valid_seen games (in-distribution), sorted by path    |
| alfworld  | `valid_unseen` | the 134 valid_unseen games (out-of-distribution)              |
| webshop   | `test`         | goals 0-499 of the seed-233 shuffle                           |
| webshop   | `test128`      | goals 0-127 of that shuffle (the first 128 test goals)        |

Any other environment (a user-defined one, named by its import path) has no fixed panel: its panel ``name`` is one
of its splits, every task in the env's canonical order.

Each panel carries a sha256 over its task ids, in order; log it with every evaluation so two numbers can be
compared only when they come from the same panel.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

from threespo_verl.envs import make
from threespo_verl.envs.base import Task

#: (env, panel) -> (split passed to env.tasks, number of leading tasks to keep or None for all)
PANELS: dict[tuple[str, str], tuple[str, int | None]] = {
    ("household", "test"): ("test", None),
    ("household", "easy_test"): ("easy_test", None),
    ("alfworld", "valid_seen"): ("valid_seen", None),
    ("alfworld", "valid_unseen"): ("valid_unseen", None),
    ("webshop", "test"): ("test", None),
    ("webshop", "test128"): ("test", 128),
}


@dataclasses.dataclass(frozen=True)
class Panel:
    env_name: str
    name: str
    tasks: tuple[Task, ...]
    sha256: str

    def __len__(self) -> int:
        return len(self.tasks)


def panel_hash(tasks) -> str:
    return hashlib.sha256("\n".join(t.task_id for t in tasks).encode()).hexdigest()


def panel(env_name: str, name: str, **env_kwargs: Any) -> Panel:
    """The fixed panel ``name`` of ``env_name`` (env_kwargs such as ``data_dir`` go to the environment); for an
    environment without fixed panels, the whole split ``name``."""
    if (env_name, name) in PANELS:
        split, keep = PANELS[(env_name, name)]
    elif env_name not in {e for e, _ in PANELS}:
        split, keep = name, None
    else:
        valid = ", ".join(f"{e}:{p}" for e, p in PANELS)
        raise ValueError(f"unknown panel {env_name}:{name}; valid: {valid}")
    env = make(env_name, **env_kwargs)
    try:
        tasks = tuple(env.tasks(split))
    finally:
        env.close()
    if keep is not None:
        tasks = tasks[:keep]
    return Panel(env_name=env_name, name=name, tasks=tasks, sha256=panel_hash(tasks))
