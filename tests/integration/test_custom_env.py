"""A user-defined environment (docs/custom_env.md: examples/custom_env/counting_env.py), named only by its import
path, trains through the real verl agent loop: the Ray rollout workers import it themselves (nothing is registered
in any process). Only the model is a scripted client (``ScriptedLLMClient``)."""

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


def rig(cluster, overrides):
    model, root = cluster
    name = uuid.uuid4().hex[:8]
    return H.build(model, root / name, [f"algorithm.threespo.store_name=store-{name}", *ENV, *overrides],
                   policy=ScriptedPolicy(p_malformed=0.2))


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
