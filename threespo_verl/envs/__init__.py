"""Environment registry: ``available()``, ``make(name, **kwargs)``, ``register_env(name, "module:Class")``,
and ``check_env(env)`` (does an environment follow the protocol of ``envs/base.py``?).

``make`` takes a registered name (``household``, ``alfworld``, ``webshop``) or an import path
``"package.module:ClassName"`` of a ``TextEnv`` subclass. The import path is resolved by whichever process builds
the environment, so it is the way to train with your own environment (``env.name=my_pkg.my_env:MyEnv``): verl's
rollout workers run in other (Ray) processes, which import the module themselves. ``register_env`` changes only the
registry of the process that calls it: use it for in-process work (scripts, tests, ``spa collect``), not training.

Entries are import strings so that listing or choosing an environment never imports a heavy engine
(``alfworld`` pulls TextWorld; ``webshop`` loads a search index) until it is made.
"""

from __future__ import annotations

import importlib
from typing import Any

from threespo_verl.envs.base import INFO_KEYS, Observation, ResetReturn, StepReturn, Task, TextEnv, make_info
from threespo_verl.envs.check import EnvCheckError, check_env

#: name -> import path: the shipped environments, plus what register_env adds in this process
_REGISTRY: dict[str, str] = {
    "household": "threespo_verl.envs.household:HouseholdEnv",
    "alfworld": "threespo_verl.envs.alfworld:AlfWorldEnv",
    "webshop": "threespo_verl.envs.webshop:WebShopEnv",
}


class UnknownEnvError(ValueError):
    pass


def available() -> list[str]:
    """Registered names accepted by ``make`` (and by ``env=...`` on the command line); an import path
    ``"package.module:ClassName"`` is accepted too."""
    return sorted(_REGISTRY)


def is_import_path(name: str) -> bool:
    """Whether ``name`` is an import path ``"package.module:ClassName"`` rather than a registered name."""
    return ":" in name


def register_env(name: str, target: str) -> None:
    """Register ``"package.module:ClassName"`` (a subclass of ``TextEnv``) under ``name`` in *this process*.

    Other processes (verl's Ray rollout workers) do not see the registration: to train, pass the import path itself
    as the environment name (``env.name=package.module:ClassName``)."""
    if not is_import_path(target):
        raise ValueError(f"env target must look like 'package.module:ClassName', got {target!r}")
    _REGISTRY[name] = target


def env_class(name: str) -> type[TextEnv]:
    """The ``TextEnv`` subclass of a registered name or of an import path ``"package.module:ClassName"``."""
    if is_import_path(name):
        target = name
    elif name in _REGISTRY:
        target = _REGISTRY[name]
    else:
        raise UnknownEnvError(f"unknown environment {name!r}; valid names: {', '.join(available())}, or an "
                              f"import path 'package.module:ClassName' of a TextEnv subclass")
    module_name, _, cls_name = target.partition(":")
    if not module_name or not cls_name or ":" in cls_name:
        raise UnknownEnvError(f"env import path must look like 'package.module:ClassName', got {target!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownEnvError(f"environment {name!r}: cannot import module {module_name!r} ({exc})") from exc
    cls = getattr(module, cls_name, None)
    if cls is None:
        raise UnknownEnvError(f"environment {name!r}: module {module_name!r} has no attribute {cls_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, TextEnv)):
        raise TypeError(f"{target} (env {name!r}) is not a TextEnv subclass")
    return cls


def make(name: str, **kwargs: Any) -> TextEnv:
    """Build environment ``name`` (a registered name or an import path ``"package.module:ClassName"``) with its
    keyword config (``max_steps``, ``data_dir``, ...)."""
    return env_class(name)(**kwargs)


__all__ = [
    "INFO_KEYS",
    "EnvCheckError",
    "Observation",
    "ResetReturn",
    "StepReturn",
    "Task",
    "TextEnv",
    "UnknownEnvError",
    "available",
    "check_env",
    "env_class",
    "is_import_path",
    "make",
    "make_info",
    "register_env",
]
