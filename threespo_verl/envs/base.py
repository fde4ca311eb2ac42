"""The one environment protocol every text environment implements (DESIGN §4).

In Gymnasium's shape, text in and text out::

    env = make("household", max_steps=30)
    task = env.tasks("train")[0]
    obs, info = env.reset(task)                 # Observation, {} (env-specific extras)
    obs, reward, terminated, truncated, info = env.step("go to countertop 1")
    done = terminated or truncated

Rules every environment follows (``threespo_verl.envs.check_env`` checks them; the unit tests run it on every
shipped environment):

* ``reset`` is deterministic in the task: the same task gives the same first observation, whatever happened before.
* ``step`` is deterministic in (task, action prefix).
* ``action=None`` (a malformed model reply) or an action the engine rejects is an *invalid* step: it consumes a step,
  never raises, reports ``info["valid"] = False`` and leaves the state key unchanged.
* ``Observation.state_key`` is canonical: the current situation without history or step counters. Feedback that
  changes nothing (``Nothing happens.``, an invalid action) maps to the previous key.
* ``reward`` is the task score after the step, in [0, 1] (ALFWorld: won; WebShop: the purchase score, 0 before
  buying); ``info["won"]`` is the success flag used as ``R_success`` by 3SPO.
* ``terminated`` is True when the task is won or lost for good (ALFWorld and household: won; WebShop: bought).
  ``truncated`` is True when the environment's own step limit cut the episode: ``max_steps`` steps were taken and it
  was not terminated by that step (``info["timeout"]`` carries the same flag). Never both; an environment without a
  step limit always returns ``truncated=False``. After either, ``step`` raises until the next ``reset``.
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


#: what ``reset`` returns: the first observation and an info dict (env-specific extras; may be empty)
ResetReturn = tuple[Observation, dict[str, Any]]
#: what ``step`` returns: (observation, reward, terminated, truncated, info)
StepReturn = tuple[Observation, float, bool, bool, dict[str, Any]]

#: keys every ``info`` dict returned by ``step`` carries (``timeout`` equals the ``truncated`` flag)
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
    def reset(self, task: Task) -> ResetReturn:
        """Start ``task`` from its initial state. Returns (obs, info)."""

    @abc.abstractmethod
    def step(self, action: str | None) -> StepReturn:
        """Apply one action (``None`` = malformed reply, an invalid step). Returns (obs, reward, terminated,
        truncated, info); the episode is over when ``terminated or truncated``."""

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
