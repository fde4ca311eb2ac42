"""Environment registry: ``available()``, ``make(name, **kwargs)``, ``register_env(name, "module:Class")``.

Entries are import strings so that listing or choosing an environment never imports a heavy engine
(``alfworld`` pulls TextWorld; ``webshop`` loads a search index) until it is made.
"""

from __future__ import annotations

import importlib
from typing import Any

from threespo_verl.envs.base import INFO_KEYS, Observation, Task, TextEnv, make_info

#: implemented environments (issue [envs]: household, alfworld, webshop)
_REGISTRY: dict[str, str] = {
    "household": "threespo_verl.envs.household:HouseholdEnv",
    "alfworld": "threespo_verl.envs.alfworld:AlfWorldEnv",
    "webshop": "threespo_verl.envs.webshop:WebShopEnv",
}


class UnknownEnvError(ValueError):
    pass


def available() -> list[str]:
    """Names accepted by ``make`` (and by ``env=...`` on the command line)."""
    return sorted(_REGISTRY)


def register_env(name: str, target: str) -> None:
    """Register ``"package.module:ClassName"`` under ``name`` (a subclass of ``TextEnv``)."""
    if ":" not in target:
        raise ValueError(f"env target must look like 'package.module:ClassName', got {target!r}")
    _REGISTRY[name] = target


def env_class(name: str) -> type[TextEnv]:
    if name not in _REGISTRY:
        raise UnknownEnvError(f"unknown environment {name!r}; valid names: {', '.join(available())}")
    module_name, cls_name = _REGISTRY[name].split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    if not (isinstance(cls, type) and issubclass(cls, TextEnv)):
        raise TypeError(f"{_REGISTRY[name]} registered as env {name!r} is not a TextEnv subclass")
    return cls


def make(name: str, **kwargs: Any) -> TextEnv:
    """Build environment ``name`` with its keyword config (``max_steps``, ``data_dir``, ...)."""
    return env_class(name)(**kwargs)


__all__ = [
    "INFO_KEYS",
    "Observation",
    "Task",
    "TextEnv",
    "UnknownEnvError",
    "available",
    "env_class",
    "make",
    "make_info",
    "register_env",
]
