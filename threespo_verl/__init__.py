"""threespo_verl: 3SPO, SPA, GRPO and GiGPO for multi-turn LLM agents, as a plugin for verl 0.9.x.

Importing this package is cheap (no verl, Ray or torch import); verl loads ``threespo_verl.plugin`` through its
``verl.plugins`` entry point in every process that imports verl.
"""

__version__ = "0.1.0"
