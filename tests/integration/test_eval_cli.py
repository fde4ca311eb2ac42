"""``threespo-verl eval`` end to end with a real model served by vLLM's CPU build: the household panel and a few
ALFWorld valid_seen games, the per-type table, the protocol card, and a resume that replays nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def tiny_model() -> Path:
    from threespo_verl import models

    return models.install(name="tiny-qwen2-actions")


def _eval(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONHASHSEED="0", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="2")
    return subprocess.run([sys.executable, "-m", "threespo_verl.cli", "eval", *args], env=env, capture_output=True,
                          text=True, timeout=900)


def test_eval_household_per_type_table_card_and_resume(tiny_model, tmp_path):
    out = tmp_path / "ev"
    args = ["--model", str(tiny_model), "--env", "household", "--split", "test", "--seeds", "2", "--limit", "6",
            "--max-steps", "4", "--history-length", "1", "--no-reasoning", "--constrain-actions", "--out", str(out)]
    r = _eval(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    card, summ = res["protocol"], res["summary"]
    assert card["n_tasks"] == 6 and card["panel_tasks"] == 64 and "first 6 of 64" in card["limit"]
    assert card["seeds"] == [0, 1] and card["max_steps"] == 4 and card["temperature"] == 0.4
    assert len(card["panel_sha256"]) == 64 and card["model"] == str(tiny_model)
    eps = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert sorted((e["seed"], e["task_id"]) for e in eps) == sorted({(e["seed"], e["task_id"]) for e in eps})
    assert len(eps) == 12 and not any(e.get("error") for e in eps), r.stderr[-6000:]
    # constrained decoding: every action is an admissible one
    assert all(e["invalid"] == 0 for e in eps)
    types = {e["task_type"] for e in eps}
    assert set(summ) == {"all"} | types and summ["all"]["n_tasks"] == 6
    for t in types | {"all"}:  # the table printed on stdout has a line per type
        assert any(line.startswith(t) for line in r.stdout.splitlines()), r.stdout
    assert res["run"]["generated_tokens"] > 0 and res["run"]["rollout_tokens_per_s"] > 0
    md = (out / "results.md").read_text()
    assert "| all | 6 |" in md and "Protocol card" in md
    # resume: the same command finds every episode done and plays none
    r2 = _eval(*args)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "12 already in" in r2.stdout
    assert len((out / "episodes.jsonl").read_text().splitlines()) == 12


def test_eval_alfworld_valid_seen_games(tiny_model, alfworld_data, tmp_path):
    out = tmp_path / "ev"
    r = _eval("--model", str(tiny_model), "--env", "alfworld", "--split", "in", "--seeds", "1", "--limit", "3",
              "--max-steps", "3", "--history-length", "1", "--no-reasoning", "--constrain-actions",
              "--data-dir", str(alfworld_data), "--concurrency", "3", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["protocol"]["panel"] == "valid_seen" and res["protocol"]["panel_tasks"] == 140
    assert isinstance(res["protocol"]["data"], dict)  # the installer's marker: archives and sha256
    assert res["summary"]["all"]["n_tasks"] == 3
    assert "Wilson over 3 tasks" in res["summary"]["all"]["success"]["ci_method"]
    eps = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert len(eps) == 3 and all(1 <= e["steps"] <= 3 for e in eps) and not any(e.get("error") for e in eps), \
        r.stderr[-6000:]
    assert "success %" in r.stdout
