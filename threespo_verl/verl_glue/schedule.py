"""Budgets in env steps (DESIGN §2.8): when a run validates and when it stops, the same rule for every algorithm.

A run's updates spend env steps in different amounts (a GRPO step plays whole episodes, a post-step 3SPO update one
expansion round), so comparing runs at update counts compares different amounts of experience. ``EnvStepSchedule``
decides after each update, from the run's cumulative env steps E:

* validate when E has reached the next multiple of ``val_every`` (one validation however many multiples one update
  crossed; the next checkpoint is the first multiple above E), and always at the end of an env-step budget;
* stop when E has reached ``total`` (the update that reaches it is the last one).

Pure Python with a JSON state (``state_dict``), saved with the trainer's checkpoint.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class EnvStepSchedule:
    """Validation checkpoints and the end of a run in env steps (see module docstring)."""

    total: int | None = None  # trainer.total_env_steps
    val_every: int | None = None  # trainer.val_every_env_steps
    next_val: int = 0  # the next validation checkpoint (0: none scheduled)
    stopped: bool = False

    def __post_init__(self) -> None:
        if self.val_every and not self.next_val:
            self.next_val = int(self.val_every)

    def budget_spent(self, env_steps: int) -> bool:
        """Whether ``env_steps`` reach the run's budget."""
        return self.total is not None and env_steps >= self.total

    def decide(self, env_steps: int) -> tuple[bool, bool]:
        """(validate, stop) after an update that brought the run to ``env_steps`` cumulative env steps."""
        stop = self.budget_spent(env_steps)
        validate = False
        if self.val_every and env_steps >= self.next_val:
            validate = True
            self.next_val = (int(env_steps) // int(self.val_every) + 1) * int(self.val_every)
        if stop:
            validate = validate or bool(self.val_every)
            self.stopped = True
        return validate, stop

    def checkpoints(self) -> list[int]:
        """The env-step checkpoints of a whole run: every multiple of ``val_every`` up to ``total`` (and ``total``)."""
        if not (self.val_every and self.total):
            return []
        out = list(range(int(self.val_every), int(self.total) + 1, int(self.val_every)))
        return out if out and out[-1] == self.total else [*out, int(self.total)]

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> "EnvStepSchedule":
        return cls(**d)
