"""The one environment protocol every text environment implements (DESIGN §4).

Gymnasium-shaped, text in and text out::

    env = make("household", max_steps=30)
    task = env.tasks("train")[0]
    obs = env.reset(task)                       # Observation
    obs, reward, done, info = env.step("go to countertop 1")

Rules every environment follows (the conformance suite in ``tests/unit/test_env_conformance.py`` checks them):

* ``reset`` is deterministic in the task: the same task gives the same first observation, whatever happened before.
* ``step`` is deterministic in (task, action prefix).
* ``action=None`` (a malformed model reply) or an action the engine rejects is an *invalid* step: it consumes a step,
  never raises, reports ``info["valid"] = False`` and leaves the state key unchanged.
* ``Observation.state_key`` is canonical: the current situation without history or step counters. Feedback that
  changes nothing (``Nothing happens.``, an invalid action) maps to the previous key.
* ``reward`` is the task score after the step, in [0, 1] (ALFWorld: won; WebShop: the purchase score, 0 before
  buying); ``info["won"]`` is the success flag used as ``R_success`` by 3SPO.
* The episode ends (``done=True``) when the task is won or lost for good, or when ``max_steps`` steps were taken
  (``info["timeout"] = True`` in that last case only).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar


@dataclasses.dataclass(frozen=True)
class Task:
    """A stable task identity. ``task_id`` never depends on seeds, worker counts or ordering of workers."""

    task_id: str
    task_type: str
    env_name: str
    #: environment-specific, JSON-serialisable content needed to rebuild the task (game file, goal index, seed, ...)
    payload: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False, hash=False)


@dataclasses.dataclass(frozen=True)
class Observation:
    """What the agent sees after ``reset`` or ``step``."""

    #: the feedback of the last action followed by the current view, as shown to the model
    text: str
    #: canonical state key (see module docstring)
    state_key: str
    #: actions the engine accepts now (may be empty where the action space is open)
    admissible_actions: tuple[str, ...]
    task_id: str
    task_type: str
    #: the task instruction ("put a clean mug in coffeemachine.", "i need a red dress ...")
    goal: str


#: keys every ``info`` dict returned by ``step`` carries
INFO_KEYS = ("won", "score", "valid", "state_changed", "timeout", "steps")


def normalize_command(action: str | None) -> str | None:
    """The canonical form environments compare commands in: lower case, single spaces (None stays None)."""
    return " ".join(action.strip().lower().split()) if isinstance(action, str) else None


def make_info(*, won: bool, score: float, valid: bool, state_changed: bool, timeout: bool, steps: int, **extra):
    """Build a step ``info`` dict with the required keys (and any extra env-specific ones)."""
    info = {
        "won": bool(won),
        "score": float(score),
        "valid": bool(valid),
        "state_changed": bool(state_changed),
        "timeout": bool(timeout),
        "steps": int(steps),
    }
    info.update(extra)
    return info


class TextEnv(abc.ABC):
    """Base class of all environments. Subclasses set ``name`` and implement the abstract methods."""

    name: ClassVar[str] = ""
    #: names of the task splits ``tasks`` accepts
    splits: ClassVar[tuple[str, ...]] = ()
    #: whether ``clone`` works (else restore = reset + replay)
    supports_clone: ClassVar[bool] = False

    def __init__(self, max_steps: int = 50, **kwargs: Any) -> None:
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.max_steps = int(max_steps)

    # ---- task catalogue ------------------------------------------------------------------------------------
    @abc.abstractmethod
    def tasks(self, split: str) -> list[Task]:
        """All tasks of ``split`` in a fixed, canonical order (raise ValueError naming ``splits`` if unknown)."""

    # ---- episode -------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def reset(self, task: Task) -> Observation:
        """Start ``task`` from its initial state."""

    @abc.abstractmethod
    def step(self, action: str | None) -> tuple[Observation, float, bool, dict[str, Any]]:
        """Apply one action (``None`` = malformed reply, an invalid step). Returns (obs, reward, done, info)."""

    @abc.abstractmethod
    def is_valid(self, action: str | None) -> bool:
        """Whether the engine would execute ``action`` in the current state (no side effect)."""

    @property
    def observation(self) -> Observation:
        """The current observation (after the last reset/step); subclasses keep it in ``self._obs``."""
        obs = getattr(self, "_obs", None)
        if obs is None:
            raise RuntimeError("call reset(task) first")
        return obs

    @property
    def admissible_actions(self) -> tuple[str, ...]:
        return self.observation.admissible_actions

    def state_key(self, observation: Observation | None = None) -> str:
        return (observation or self.observation).state_key

    # ---- branching -----------------------------------------------------------------------------------------
    def clone(self) -> "TextEnv":
        """An independent copy in the same state. Only where ``supports_clone``; else restore by replay."""
        raise NotImplementedError(f"{type(self).__name__} cannot clone; restore by reset + replay")

    def close(self) -> None:
        """Release engine resources."""
