"""A user-defined environment (docs/custom_env.md: examples/custom_env/counting_env.py), named only by its import
path, trains through the real verl agent loop: the Ray rollout workers import it themselves (nothing is registered
in any process). Only the model is a scripted client (``ScriptedLLMClient``).

Fault tolerance through the same loop (``tests/integration/fault_envs.py``, in env worker processes,
``env.num_workers=1``): an env worker SIGKILLed in the middle of a 3SPO round or a GRPO step costs nothing (the
rows are those of an undisturbed run, none lost or duplicated), and an env that keeps failing ends its branches and
episodes as failed, counted rows while training goes on. ALFWorld's 3SPO rounds in an env worker restore every node
by cloning the engine there, never by replay."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
tq = pytest.importorskip("transfer_queue")

from tests.integration import verl_harness as H  # noqa: E402
from threespo_verl.envs import available  # noqa: E402
from threespo_verl.testing import ScriptedPolicy  # noqa: E402

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
TARGET = "examples.custom_env.counting_env:CountingEnv"
ENV = [f"env.name={TARGET}", "env.train_split=train", "env.eval_panel=test", "env.max_steps=6"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from threespo_verl.models import build_tiny

    root = tmp_path_factory.mktemp("custom_env")
    model = root / "tiny"
    build_tiny(model)
    # the example module must be importable in the Ray workers, as a user's env module must be (installed, or on
    # their PYTHONPATH)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(num_cpus=16, include_dashboard=False, log_to_driver=False, namespace=f"threespo-{uuid.uuid4().hex}",
             runtime_env={"env_vars": {"PYTHONHASHSEED": "0", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": path}})
    cfg = H.compose_config(model, root, ENV)
    tq.init(cfg.transfer_queue)
    yield model, root
    tq.close()
    ray.shutdown()


def rig(cluster, overrides, env=ENV, p_malformed: float = 0.2):
    """A trainer over the ``env`` settings (default: the counting game) with its own state store."""
    model, root = cluster
    name = uuid.uuid4().hex[:8]
    return H.build(model, root / name, [f"algorithm.threespo.store_name=store-{name}", *env, *overrides],
                   policy=ScriptedPolicy(p_malformed=p_malformed))


extras, fetch = H.extras, H.fetch


def test_3spo_round_on_the_counting_env(cluster):
    assert "counting" not in available()
    r = rig(cluster, [])
    tr = r.trainer
    tr._refill()
    update, m = tr.run_round(tr.frontiers.requests())
    assert m["expanded"] == 2 and len(update) > 0
    es = extras(update)
    assert {e["task_id"].split("/")[0] for e in es} == {"counting"}
    assert {e["state_key"] for e in es} == {"count=0"}  # the root of both trees
    assert {e["action_text"] for e in es if e["valid_action"]} <= {"add 1", "add 2"}
    tr._compute_advantage(update, {})
    adv = np.array([float(a[0]) for a in fetch(update, "advantages")])
    assert np.isfinite(adv).all() and np.abs(adv).max() > 0
    H.shutdown(r)


def test_grpo_step_on_the_counting_env(cluster):
    r = rig(cluster, ["algorithm=grpo", "actor_rollout_ref.rollout.n=4"])
    tr = r.trainer
    tr.prepare_step()
    batch, _ = tr.replay_buffer.sample(global_steps=1, partition_id="train", batch_size=2)
    es = extras(batch)
    assert {e["task_id"].split("/")[0] for e in es} == {"counting"}
    assert any(e["won"] for e in es if e["done"]) and not all(e["won"] for e in es if e["done"])
    assert all(e["step_index"] < 6 for e in es)
    tr._compute_advantage(batch, {})
    adv = np.array([float(a[0]) for a in fetch(batch, "advantages")])
    assert np.isfinite(adv).all() and np.abs(adv).max() > 0
    H.shutdown(r)


# ---- env faults inside training ----------------------------------------------------------------------------------
FAULTY = ["env.name=tests.integration.fault_envs:FaultyHousehold", "env.train_split=train", "env.eval_panel=test",
          "env.max_steps=6", "env.num_workers=1"]


def faulty_rig(cluster, markers: Path, overrides):
    return rig(cluster, [f"env.data_dir={markers}", *overrides], env=FAULTY)


def _round(cluster, markers, kill: bool):
    r = faulty_rig(cluster, markers, [])
    tr = r.trainer
    tr._refill()
    if kill:
        (markers / "kill").touch()
    update, m = tr.run_round(tr.frontiers.requests())
    rows = sorted((e["tree_id"], e["parent_node_id"], e["reply"], e["action_text"],
                   e["child_state_key"], e["step_reward"], e["env_failed"]) for e in extras(update))
    store = ray.get(tr.store.stats.remote())
    H.shutdown(r)
    return rows, m, store


def test_env_worker_killed_mid_round_loses_no_row(cluster, tmp_path):
    calm, m0, store0 = _round(cluster, tmp_path, kill=False)
    rows, m, store = _round(cluster, tmp_path, kill=True)
    assert not (tmp_path / "kill").exists(), "the env worker was not killed"
    # the same rows as the undisturbed round: nothing lost, nothing duplicated, nothing failed
    assert rows == calm and len(rows) == len(set(rows)) > 0
    assert m["failed"] == m0["failed"] == 0 and m["env_failures"] == 0 and m["expanded"] == 2
    assert store == store0


def test_env_worker_killed_mid_grpo_step_loses_no_episode(cluster, tmp_path):
    r = faulty_rig(cluster, tmp_path, ["algorithm=grpo", "actor_rollout_ref.rollout.n=4"])
    tr = r.trainer
    (tmp_path / "kill").touch()
    tr.prepare_step()
    batch, _ = tr.replay_buffer.sample(global_steps=1, partition_id="train", batch_size=2)
    assert not (tmp_path / "kill").exists(), "the env worker was not killed"
    es = extras(batch)
    episodes = {}
    for key, e in zip(batch.keys, es):
        uid, session, idx = key.rsplit("_", 2)
        episodes.setdefault((uid, session), []).append((int(idx), e))
    assert len(episodes) == 8  # 2 tasks x rollout.n = 4 episodes, every one complete
    for rows in episodes.values():
        steps = [e["step_index"] for _, e in sorted(rows, key=lambda x: x[0])]
        assert steps == list(range(len(steps)))
        assert sorted(rows, key=lambda x: x[0])[-1][1]["done"]
    assert not any(e["env_failed"] for e in es)
    H.shutdown(r)


def test_failing_env_gives_counted_failed_rows_and_training_goes_on(cluster, tmp_path):
    (tmp_path / "fail").touch()
    r = faulty_rig(cluster, tmp_path, [])
    tr = r.trainer
    tr._refill()
    update, m = tr.run_round(tr.frontiers.requests())
    es = extras(update)
    # every first step fails twice: each root's distinct children are failed, terminal, unwon rows
    assert es and all(e["env_failed"] and e["done"] and not e["won"] for e in es)
    assert m["env_failures"] == len({(e["tree_id"], e["branch"]) for e in es}) and m["failed"] == 0
    tr._compute_advantage(update, {})
    assert np.isfinite([float(a[0]) for a in fetch(update, "advantages")]).all()
    H.shutdown(r)
    r = faulty_rig(cluster, tmp_path, ["algorithm=grpo", "actor_rollout_ref.rollout.n=4"])
    tr = r.trainer
    tr.prepare_step()
    batch, _ = tr.replay_buffer.sample(global_steps=1, partition_id="train", batch_size=2)
    es = extras(batch)
    assert len(es) == 8 and all(e["env_failed"] and e["done"] and e["step_index"] == 0 for e in es)
    assert tr._episode_metrics(batch)["env/failures"] == 8
    H.shutdown(r)


# ---- ALFWorld in env workers: nodes restored by clone inside the worker --------------------------------------------
def test_3spo_rounds_on_alfworld_in_env_workers_never_replay(cluster, alfworld_data):
    r = rig(cluster, [], env=["env=alfworld", f"env.data_dir={alfworld_data}", "env.train_split=valid_seen",
                              "env.eval_panel=valid_seen", "env.max_steps=6", "env.num_workers=1"], p_malformed=0.1)
    tr = r.trainer
    tr._refill()
    rows = []
    for _ in range(2):  # the root's children are parked clones; the second round expands them
        update, m = tr.run_round(tr.frontiers.requests())
        assert m["failed"] == 0 and m["env_failures"] == 0 and m["expanded"] >= 1
        rows += extras(update)
    assert rows and all(e["state_key"].startswith("alfworld:") for e in rows)
    assert {e["step_index"] for e in rows} >= {0, 1}
    assert sum(e["replayed_steps"] for e in rows) == 0, "an ALFWorld node was restored by replay, not by clone"
    H.shutdown(r)
