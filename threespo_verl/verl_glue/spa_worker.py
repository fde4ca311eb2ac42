"""SPA's progress estimator in its own Ray worker: the agent loops send each finished episode's record and get
one c_t per step back (``algorithm=spa``). The estimator is frozen during RL (DESIGN §3, stage 4); the trainer
creates the worker before the rollout starts, agent-loop workers look it up by name."""

from __future__ import annotations

from typing import Any

import ray


class ProgressWorker:
    def __init__(self, path: str, max_length: int | None = None, device: str | None = None) -> None:
        import torch

        from threespo_verl.spa.progress import ProgressEstimator

        torch.set_num_threads(1)
        self.path = path
        self.pe = ProgressEstimator.from_pretrained(path, max_length=max_length, device=device)
        self.calls = 0

    def predict(self, record: dict[str, Any]) -> list[float]:
        """c_t for every step of one trajectory record (``spa.collect.trajectory_record``)."""
        self.calls += 1
        return [float(x) for x in self.pe.predict(record)]

    def stats(self) -> dict[str, Any]:
        return {"calls": self.calls, **self.pe.stats}


def get_or_create_progress_worker(name: str, path: str, max_length: int | None = None):
    """The named estimator worker, created on the first call (CPU unless CUDA is visible to it)."""
    actor = ray.remote(num_cpus=0)(ProgressWorker)
    return actor.options(name=name, get_if_exists=True).remote(path, max_length)


def get_progress_worker(name: str):
    try:
        return ray.get_actor(name)
    except ValueError as exc:
        raise LookupError(f"no SPA progress-estimator worker named {name!r}: the threespo trainer creates it for "
                          f"algorithm=spa (algorithm.spa.estimator_path)") from exc
