"""Moved to ``threespo_verl.testing`` (the test doubles: ScriptedPolicy, ScriptedLLMClient, scripted_sampler, ...);
this name stays so that older imports keep working."""

from threespo_verl.testing import *  # noqa: F401,F403
from threespo_verl.testing import __all__  # noqa: F401
