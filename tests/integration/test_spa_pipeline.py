"""SPA's offline stages as a user runs them: ``spa collect`` with a real model served by vLLM's CPU build, then
``spa train-pe`` on what it wrote; the estimator folder is what ``algorithm=spa`` loads
(tests/integration/test_threespo_rollout.py::test_spa_rows_rewards_and_advantages runs the RL stage)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONHASHSEED="0", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="2")
    return subprocess.run([sys.executable, "-m", "threespo_verl.cli", "spa", *args], env=env, capture_output=True,
                          text=True, timeout=900)


def test_collect_with_vllm_then_train_the_estimator(tmp_path):
    from threespo_verl import models
    from threespo_verl.spa.progress import ProgressEstimator

    model = models.install(name="tiny-qwen2-actions")
    data = tmp_path / "traj.jsonl"
    r = _cli("collect", "--env", "household", "--tasks", "4", "--m", "2", "--model", str(model), "--max-steps", "3",
             "--history-length", "1", "--no-reasoning", "--max-tokens", "32", "--out", str(data), "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    recs = [json.loads(line) for line in data.read_text().splitlines()]
    assert len(recs) == 8 and {(x["task_id"], x["rollout"]) for x in recs} == {
        (x["task_id"], k) for x in recs for k in (0, 1)}
    assert all(1 <= x["n_steps"] <= 3 and 0.0 <= x["reward"] <= 1.0 and "vLLM" in x["policy"] for x in recs)
    # the same command again: every (task, rollout) is there, nothing is played twice
    r2 = _cli("collect", "--env", "household", "--tasks", "4", "--m", "2", "--model", str(model), "--max-steps", "3",
              "--history-length", "1", "--no-reasoning", "--max-tokens", "32", "--out", str(data), "--quiet")
    assert r2.returncode == 0 and "0 trajectories written" in r2.stdout and len(data.read_text().splitlines()) == 8

    pe_dir = tmp_path / "pe"
    t = _cli("train-pe", "--data", str(data), "--base", str(model), "--out", str(pe_dir), "--epochs", "1",
             "--batch-size", "4", "--heldout", "0.25", "--device", "cpu", "--quiet")
    assert t.returncode == 0, t.stderr[-3000:]
    assert "held-out sum_t c_t vs R" in t.stdout
    pe = ProgressEstimator.from_pretrained(pe_dir, device="cpu")
    c = pe.predict(recs[0])
    assert c.shape == (recs[0]["n_steps"],)  # one c_t per step
