"""The learning benchmark's statistics (benchmarks/bench_learning.py), on hand-computed fixtures: the README's
results table is made of these numbers."""

from __future__ import annotations

import json
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

_spec = importlib.util.spec_from_file_location(
    "bench_learning", Path(__file__).resolve().parents[2] / "benchmarks" / "bench_learning.py")
bl = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bl)

XS = np.array([0.0, 100.0, 200.0])
YS = np.array([0.1, 0.5, 0.9])


def test_mean_ci_uses_the_t_quantile_of_n_minus_1_degrees_of_freedom():
    # mean 0.3, sample sd 0.2, t(0.975, 2) = 4.303: half-width 4.303 * 0.2 / sqrt(3) = 0.49688
    m, half = bl.mean_ci([0.1, 0.3, 0.5])
    assert m == pytest.approx(0.3)
    assert half == pytest.approx(4.303 * 0.2 / math.sqrt(3))
    # a missing value (a run without validations) is left out, not counted as 0
    assert bl.mean_ci([0.1, None, float("nan"), 0.5]) == pytest.approx((0.3, 12.706 * math.sqrt(0.08) / math.sqrt(2)))
    m, half = bl.mean_ci([0.4])
    assert m == 0.4 and math.isnan(half)
    assert all(math.isnan(x) for x in bl.mean_ci([]))


def test_auc_integrates_the_step_curve_up_to_the_budget():
    # 0.1 on [0, 100), 0.5 on [100, 200), 0.9 on [200, 400]: (10 + 50 + 180) / 400
    assert bl.auc(XS, YS, 400.0) == pytest.approx(0.6)
    # a validation past the budget is clipped to it
    assert bl.auc(np.array([0.0, 500.0]), np.array([0.2, 1.0]), 400.0) == pytest.approx(0.2)


def test_steps_to_target_and_the_last_validation_at_a_checkpoint():
    assert bl.steps_to(XS, YS, 0.5, 400.0) == 100.0
    assert bl.steps_to(XS, YS, 0.95, 400.0) == 400.0  # never reached: the whole budget
    assert bl.at(XS, YS, 150.0) == 0.5
    assert bl.at(XS, YS, 200.0) == 0.9
    assert math.isnan(bl.at(XS + 10, YS, 5.0))


def test_curve_puts_the_initial_validation_at_zero_env_steps():
    rows = [{"step": 0, bl.VAL: 0.25, "explore/cumulative_env_steps": 0},
            {"step": 1, "explore/cumulative_env_steps": 120},
            {"step": 2, bl.VAL: 0.75, "explore/cumulative_env_steps": 250}]
    xs, ys = bl.curve(rows)
    assert xs.tolist() == [0.0, 250.0] and ys.tolist() == [0.25, 0.75]


def test_a_saved_spa_estimator_is_reused_only_with_the_same_settings(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(bl.subprocess, "run", lambda cmd, check: calls.append(cmd))
    pe = tmp_path / "spa" / "pe"
    pe.mkdir(parents=True)
    (pe / "spa_pe.json").write_text(json.dumps({"metrics": {"lr": 1e-4, "epochs": 3, "n_trajectories": 32}}))
    model = tmp_path / "model"
    # same lr, epochs and trajectory count (tasks x m): the saved estimator, nothing run
    assert bl.spa_estimator(model, tmp_path / "spa", tasks=8, m=4, lr=1e-4, epochs=3) == pe and calls == []
    # any other setting: collect, then train the estimator with the new settings
    for settings in ({"tasks": 8, "m": 4, "lr": 3e-4, "epochs": 3}, {"tasks": 8, "m": 4, "lr": 1e-4, "epochs": 5},
                     {"tasks": 16, "m": 4, "lr": 1e-4, "epochs": 3}):
        calls.clear()
        assert bl.spa_estimator(model, tmp_path / "spa", **settings) == pe
        (collect, train) = calls
        assert collect[3:5] == ["spa", "collect"] and ["--tasks", str(settings["tasks"])] == collect[9:11]
        assert train[3:5] == ["spa", "train-estimator"]
        assert train[train.index("--lr") + 1] == str(settings["lr"])
        assert train[train.index("--epochs") + 1] == str(settings["epochs"])
