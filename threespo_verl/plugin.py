"""verl plugin entry point (``[project.entry-points."verl.plugins"] threespo = "threespo_verl.plugin"``).

verl imports this module at the end of ``import verl`` in every process (driver, TaskRunner, workers), so every
registry it fills is populated wherever verl runs. verl swallows plugin import errors at DEBUG level; this module
therefore catches each component's failure itself and logs it at WARNING with the exception, and
``check_registration()`` raises listing whatever is missing.

Components (each one obvious place):

* ``platform``   -> ``threespo_verl.platform_cpu`` (platform registry: ``cpu``, chosen with ``VERL_PLATFORM=cpu``);
  first, because importing the other components makes verl resolve its platform
* ``patches``    -> ``threespo_verl.patches`` (version-guarded changes of verl's behaviour, e.g. CPU gloo backend)
* ``cpu_engines``-> ``threespo_verl.platform_cpu`` (engine registry: verl's FSDP engines for ``device="cpu"``)
* ``estimators`` -> ``threespo_verl.verl_glue.estimators`` (``register_adv_est``: ``3spo``, ``gigpo``, ``spa``)
* ``agent_loop`` -> ``threespo_verl.verl_glue.agent_loop`` (agent loop registry: ``threespo_step``)
* ``trainer``    -> ``threespo_verl.verl_glue.trainer`` (v1 trainer registry: ``threespo``)
* ``configs``    -> ``hydra_plugins/threespo_verl_searchpath`` (``threespo_trainer`` + groups on Hydra's path)
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable

logger = logging.getLogger("threespo_verl.plugin")

#: name -> (register function, check function returning a list of missing items); filled below
_COMPONENTS: dict[str, tuple[Callable[[], None], Callable[[], list[str]]]] = {}
#: name -> repr of the exception its registration raised
_FAILURES: dict[str, str] = {}


def _component(name: str):
    def wrap(check: Callable[[], list[str]]):
        def deco(register: Callable[[], None]):
            _COMPONENTS[name] = (register, check)
            return register

        return deco

    return wrap


# ---- CPU platform (before anything that makes verl pick its platform) ------------------------------------------
def _check_platform() -> list[str]:
    from verl.plugin.platform.platform_manager import PlatformRegistry

    from threespo_verl.platform_cpu import PLATFORM_NAME, PlatformCPU

    return [] if PlatformRegistry.get(PLATFORM_NAME) is PlatformCPU else [f"verl platform {PLATFORM_NAME!r}"]


@_component("platform")(_check_platform)
def _register_platform() -> None:
    from threespo_verl.platform_cpu import register

    register()


# ---- patches of verl's behaviour (before verl's trainer/worker modules are imported) ---------------------------
def _check_patches() -> list[str]:
    import threespo_verl.patches as P

    return [f"patch {n} (needed, not applied)" for n in P.PATCHES
            if importlib.import_module(f"threespo_verl.patches.{n}").needed() and not P.status().get(n)]


@_component("patches")(_check_patches)
def _register_patches() -> None:
    from threespo_verl.patches import apply_all

    apply_all()


# ---- verl's FSDP engines for the cpu device (engine registry) ---------------------------------------------------
def _check_cpu_engines() -> list[str]:
    from threespo_verl.platform_cpu import missing_engines

    return missing_engines()


@_component("cpu_engines")(_check_cpu_engines)
def _register_cpu_engines() -> None:
    from threespo_verl.platform_cpu import register_engines

    register_engines()


# ---- estimators ------------------------------------------------------------------------------------------------
def _check_estimators() -> list[str]:
    from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY

    from threespo_verl.verl_glue.estimators import REGISTERED_ESTIMATORS

    return [f"adv estimator {n!r}" for n in REGISTERED_ESTIMATORS if n not in ADV_ESTIMATOR_REGISTRY]


@_component("estimators")(_check_estimators)
def _register_estimators() -> None:
    from threespo_verl.verl_glue.estimators import register_estimators

    register_estimators()


# ---- agent loop and trainer mode ------------------------------------------------------------------------------
def _check_agent_loop() -> list[str]:
    from threespo_verl.verl_glue.dataset import AGENT_NAME
    from threespo_verl.verl_glue.verl_compat import registry

    return [] if AGENT_NAME in registry("agent_loop") else [f"agent loop {AGENT_NAME!r}"]


@_component("agent_loop")(_check_agent_loop)
def _register_agent_loop() -> None:
    importlib.import_module("threespo_verl.verl_glue.agent_loop")  # @register("threespo_step") on import


def _check_trainer() -> list[str]:
    from threespo_verl.verl_glue.trainer import TRAINER_MODE
    from threespo_verl.verl_glue.verl_compat import registry

    return [] if TRAINER_MODE in registry("trainer") else [f"v1 trainer mode {TRAINER_MODE!r}"]


@_component("trainer")(_check_trainer)
def _register_trainer() -> None:
    importlib.import_module("threespo_verl.verl_glue.trainer")  # @register_trainer("threespo") on import


# ---- Hydra configs ---------------------------------------------------------------------------------------------
def _check_configs() -> list[str]:
    from hydra.core.plugins import Plugins
    from hydra.plugins.search_path_plugin import SearchPathPlugin

    names = {f"{p.__module__}.{p.__name__}" for p in Plugins.instance().discover(SearchPathPlugin)}
    want = "hydra_plugins.threespo_verl_searchpath.threespo_verl_searchpath.ThreeSPOSearchPathPlugin"
    missing = [] if want in names else [f"Hydra search-path plugin {want}"]
    if importlib.util.find_spec("threespo_verl.config") is None:
        missing.append("config package threespo_verl.config")
    return missing


@_component("configs")(_check_configs)
def _register_configs() -> None:
    # Hydra discovers the search-path plugin by itself (hydra_plugins namespace); importing it here surfaces
    # an installation problem (e.g. hydra_plugins not on sys.path) as a WARNING instead of a silent miss.
    importlib.import_module("hydra_plugins.threespo_verl_searchpath.threespo_verl_searchpath")


def register_all() -> dict[str, str]:
    """Register every component; log a WARNING (with the exception) for each that fails. Returns the failures."""
    for name, (register, _check) in _COMPONENTS.items():
        try:
            register()
            _FAILURES.pop(name, None)
        except Exception as exc:  # noqa: BLE001 - a plugin must never break `import verl`
            _FAILURES[name] = repr(exc)
            logger.warning("threespo_verl: registering %s failed: %r", name, exc, exc_info=True)
    return dict(_FAILURES)


class RegistrationError(RuntimeError):
    pass


def check_registration() -> None:
    """Raise ``RegistrationError`` listing every component verl cannot see (and why registration failed)."""
    missing: list[str] = []
    for name, (_register, check) in _COMPONENTS.items():
        try:
            missing += check()
        except Exception as exc:  # noqa: BLE001
            missing.append(f"{name} (check failed: {exc!r})")
        if name in _FAILURES:
            missing.append(f"{name} registration raised {_FAILURES[name]}")
    if missing:
        raise RegistrationError(
            "threespo_verl plugin is not fully registered in this process:\n  - "
            + "\n  - ".join(missing)
            + "\nIs the package installed in this Python (pip install -e .) and VERL_USE_EXTERNAL_PLUGINS not 'none'?"
        )


def components() -> list[str]:
    return list(_COMPONENTS)


register_all()
