"""The named store actor is shared: separate Ray worker processes see each other's committed records."""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")

from threespo_verl.store import key_hash  # noqa: E402
from threespo_verl.store.actor import get_or_create_store  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=16, include_dashboard=False, log_to_driver=False, namespace="threespo-test")
    yield
    ray.shutdown()


@ray.remote(num_cpus=1, max_calls=1)
def _worker_records(name: str, path_keys: list[str], success: bool) -> int:
    import os

    from threespo_verl.store import key_hash
    from threespo_verl.store.actor import get_or_create_store

    store = get_or_create_store(name)
    ray.get(store.record_trajectories.remote([key_hash(path_keys)], [success]))
    return os.getpid()


@ray.remote(num_cpus=1, max_calls=1)
def _worker_reads(name: str, keys: list[str]):
    from threespo_verl.store import key_hash
    from threespo_verl.store.actor import get_or_create_store

    store = get_or_create_store(name)
    n_total, n_success = ray.get(store.lookup.remote(key_hash(keys)))
    return n_total.tolist(), n_success.tolist(), ray.get(store.t.remote())


def test_workers_share_one_named_store(ray_cluster, tmp_path):
    store = get_or_create_store("shared-store")
    assert get_or_create_store("shared-store")._actor_id == store._actor_id  # get-if-exists: same actor
    pids = ray.get([_worker_records.remote("shared-store", ["A", "B"], True),
                    _worker_records.remote("shared-store", ["A", "C"], False)])
    assert len(set(pids)) == 2
    # recorded but not committed: another worker still reads the old snapshot
    assert ray.get(_worker_reads.remote("shared-store", ["A", "B", "C"])) == ([0, 0, 0], [0, 0, 0], 1)
    assert ray.get(store.commit.remote())["trajectories"] == 2
    assert ray.get(_worker_reads.remote("shared-store", ["A", "B", "C"])) == ([2, 1, 1], [1, 1, 0], 3)
    # persistence through the actor, and a fresh actor created from the saved file
    path = ray.get(store.save.remote(str(tmp_path / "store.npz")))
    other = get_or_create_store("restored-store", path=path)
    assert ray.get(other.lookup.remote(key_hash(["A"])))[0].tolist() == [2]
    assert ray.get(other.stats.remote())["t"] == 3
