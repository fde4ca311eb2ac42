"""The named store actor is shared: separate Ray worker processes see each other's committed records."""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")

from threespo_verl.store import key_hash  # noqa: E402
from threespo_verl.store.actor import get_or_create_store, get_store  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=16, include_dashboard=False, log_to_driver=False, namespace="threespo-test")
    yield
    ray.shutdown()


@ray.remote(num_cpus=1, max_calls=1)
def _worker_records(name: str, path_keys: list[str], success: bool, create: bool):
    """A worker process records one trajectory; returns its pid and the actor id it talked to."""
    import os

    from threespo_verl.store import key_hash
    from threespo_verl.store.actor import get_or_create_store, get_store

    store = get_or_create_store(name) if create else get_store(name)
    ray.get(store.record_trajectories.remote([key_hash(path_keys)], [success]))
    return os.getpid(), store._actor_id.hex()


@ray.remote(num_cpus=1, max_calls=1)
def _worker_reads(name: str, keys: list[str]):
    from threespo_verl.store import key_hash
    from threespo_verl.store.actor import get_store

    store = get_store(name)
    n_total, n_success = ray.get(store.lookup.remote(key_hash(keys)))
    return n_total.tolist(), n_success.tolist(), ray.get(store.t.remote())


def test_workers_share_one_named_store(ray_cluster, tmp_path):
    store = get_or_create_store("shared-store")
    assert get_or_create_store("shared-store")._actor_id == store._actor_id  # get-if-exists: same actor
    assert get_store("shared-store")._actor_id == store._actor_id
    (pid1, id1), (pid2, id2) = ray.get([_worker_records.remote("shared-store", ["A", "B"], True, True),
                                        _worker_records.remote("shared-store", ["A", "C", "A"], False, False)])
    assert pid1 != pid2 and id1 == id2 == store._actor_id.hex()
    # recorded but not committed: another worker still reads the old snapshot
    assert ray.get(_worker_reads.remote("shared-store", ["A", "B", "C"])) == ([0, 0, 0], [0, 0, 0], 1)
    assert ray.get(store.stats.remote())["pending_t"] == 3
    assert ray.get(store.commit.remote()) == {"trajectories": 2, "new_states": 3, "states": 3}
    assert ray.get(_worker_reads.remote("shared-store", ["A", "B", "C", "D"])) == ([2, 1, 1, 0], [1, 1, 0, 0], 3)
    # scores in one round trip: unseen -> 1, and the same numbers as the local store computes
    assert ray.get(store.scores.remote(key_hash(["D"]))).tolist() == [1.0]
    # persistence through the actor, and a fresh actor created from the saved file
    path = ray.get(store.save.remote(str(tmp_path / "store.npz")))
    other = get_or_create_store("restored-store", path=path)
    assert other._actor_id != store._actor_id
    assert ray.get(other.lookup.remote(key_hash(["A", "B"])))[0].tolist() == [2, 1]
    assert ray.get(other.stats.remote())["t"] == 3
    # load into an existing actor replaces its table (and drops its pending records)
    ray.get(other.record_trajectory.remote(key_hash(["Z"]), True))
    ray.get(other.commit.remote())
    assert ray.get(other.load.remote(path))["t"] == 3
    assert ray.get(other.lookup.remote(key_hash(["Z"])))[0].tolist() == [0]


def test_get_store_does_not_create(ray_cluster):
    with pytest.raises(LookupError, match="no state store actor named 'never-created'"):
        get_store("never-created")
    with pytest.raises(ValueError):
        ray.get_actor("never-created")  # and nothing was created as a side effect
