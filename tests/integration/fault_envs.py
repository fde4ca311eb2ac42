"""Household games that fail on purpose, for the fault-tolerance tests (named by import path, so the agent loop's env
worker processes import them). ``data_dir`` is a folder of marker files that switch the faults on:

* ``kill``: the next step in any process deletes the marker and SIGKILLs its own process (once);
* ``fail``: every first step of an episode raises (for as long as the marker exists).

Cloning is off, so every branch of an expansion runs on an environment of this class (reset + replay)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from threespo_verl.envs.household import HouseholdEnv


class FaultyHousehold(HouseholdEnv):
    supports_clone = False

    def __init__(self, max_steps: int = 30, data_dir=None, **kwargs) -> None:
        super().__init__(max_steps=max_steps, **kwargs)
        self._markers = Path(data_dir) if data_dir else None

    def step(self, action):
        if self._markers is not None:
            kill = self._markers / "kill"
            if kill.exists():
                kill.unlink()
                os.kill(os.getpid(), signal.SIGKILL)
            if (self._markers / "fail").exists() and self._steps == 0:
                raise RuntimeError("injected engine failure")
        return super().step(action)
