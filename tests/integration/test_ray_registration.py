"""Fresh Ray worker processes find the plugin's components registered (verl loads the entry point there)."""

from __future__ import annotations

import os

import pytest

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=16, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONHASHSEED": "0"}})
    yield
    ray.shutdown()


def _probe():
    """Runs inside a Ray worker: import verl only, as verl's own workers do, and report what it sees."""
    import os as _os
    import sys

    already = "threespo_verl.plugin" in sys.modules
    import verl  # noqa: F401
    from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY

    from threespo_verl.plugin import check_registration

    check_registration()
    return {"pid": _os.getpid(), "plugin_loaded_before_verl": already,
            "estimators": sorted(k for k in ADV_ESTIMATOR_REGISTRY if k in ("3spo", "gigpo"))}


def test_worker_processes_see_the_estimators(ray_cluster):
    probe = ray.remote(num_cpus=1, max_calls=1)(_probe)  # max_calls=1: every call is a fresh worker process
    results = ray.get([probe.remote() for _ in range(2)])
    for r in results:
        assert r["pid"] != os.getpid()
        assert r["plugin_loaded_before_verl"] is False  # registration came from verl's entry-point loading
        assert r["estimators"] == ["3spo", "gigpo"]
    assert len({r["pid"] for r in results}) == 2
