"""Hydra search-path plugin: makes ``threespo_trainer`` and this package's config groups visible to any Hydra app.

With it, verl's own entry point composes our config::

    python -m verl.trainer.main_ppo --config-name threespo_trainer algorithm=3spo env=household

Hydra discovers plugins in the ``hydra_plugins`` namespace package; this one appends ``pkg://threespo_verl.config``
to every app's search path (and, for apps that are not verl's, verl's own config so ``ppo_trainer`` resolves).
"""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

THREESPO_CONFIG = "pkg://threespo_verl.config"
VERL_CONFIG = "pkg://verl.trainer.config"


class ThreeSPOSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="threespo_verl", path=THREESPO_CONFIG)
        search_path.append(provider="threespo_verl", path=VERL_CONFIG)
