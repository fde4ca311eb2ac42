"""Training entry point: ``python -m threespo_verl.main algorithm=3spo env=household ...``.

Composes ``threespo_trainer`` (verl's ``ppo_trainer`` + this package's groups) and hands the config to verl's own
``verl.trainer.main_ppo.main`` (platform detection, config validation, Ray, the v1 TaskRunner). Equivalent to
``python -m verl.trainer.main_ppo --config-name threespo_trainer ...`` except that an unknown ``algorithm=`` or
``env=`` value fails before anything starts, with the list of valid names.
"""

from __future__ import annotations

import sys
from importlib import resources

import hydra
from omegaconf import DictConfig

CONFIG_GROUPS = ("algorithm", "env")


def group_options(group: str) -> list[str]:
    """The option names of one of this package's config groups (``algorithm``: 3spo, gigpo, grpo, ...)."""
    folder = resources.files("threespo_verl.config") / group
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def validate_overrides(argv: list[str]) -> None:
    """Reject ``algorithm=X`` / ``env=X`` with an unknown X, naming the valid values."""
    for arg in argv:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+~")
        if sep and key in CONFIG_GROUPS:
            valid = group_options(key)
            if value not in valid:
                raise SystemExit(f"error: unknown {key} {value!r}; valid values: {', '.join(valid)}")


@hydra.main(config_path="config", config_name="threespo_trainer", version_base=None)
def _hydra_main(config: DictConfig) -> None:
    import threespo_verl.plugin  # noqa: F401  (registers estimators in the driver even if verl loaded first)
    from verl.trainer.main_ppo import main as verl_main

    verl_main(config)


def main() -> None:
    validate_overrides(sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
