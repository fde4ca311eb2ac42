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


def test_steps_to_target_interpolates_between_validations():
    assert bl.steps_to(XS, YS, 0.5, 400.0) == 100.0  # hit exactly at a validation
    # 0.7 lies halfway between 0.5 (at 100) and 0.9 (at 200): 150
    assert bl.steps_to(XS, YS, 0.7, 400.0) == pytest.approx(150.0)
    assert bl.steps_to(XS, YS, 0.05, 400.0) == 0.0  # the initial policy is already there
    assert bl.steps_to(XS, YS, 0.95, 400.0) == 400.0  # never reached: the whole budget


def test_a_checkpoint_takes_the_first_validation_at_or_past_it():
    # the trainer validates after the first update that reaches a checkpoint: for 150 that is the one at 200
    assert bl.at_checkpoint(XS, YS, 150.0) == 0.9
    assert bl.at_checkpoint(XS, YS, 100.0) == 0.5
    assert math.isnan(bl.at_checkpoint(XS, YS, 250.0))  # never reached


def test_paired_differences_use_the_seeds_both_algorithms_have():
    # seed 0: 0.8 - 0.5 = 0.3, seed 1: 0.7 - 0.6 = 0.1, seed 2: 0.9 - 0.4 = 0.5 (seed 3 has no GRPO run)
    a = {0: 0.8, 1: 0.7, 2: 0.9, 3: 0.1}
    b = {0: 0.5, 1: 0.6, 2: 0.4}
    m, half, n = bl.paired_ci(a, b)
    assert n == 3 and m == pytest.approx(0.3)
    # differences 0.3, 0.1, 0.5: sd 0.2, half-width 4.303 x 0.2 / sqrt(3)
    assert half == pytest.approx(4.303 * 0.2 / math.sqrt(3))
    assert bl.significant(m, half) is False  # 0.3 +- 0.497 includes 0
    assert bl.significant(0.3, 0.1) and not bl.significant(-0.05, 0.1) and not bl.significant(0.3, float("nan"))


def test_binomial_standard_error_of_one_validation():
    # 128 tasks at 25% success: sqrt(0.25 x 0.75 / 128) = 0.03827
    assert bl.binomial_se(0.25, 128) == pytest.approx(0.038273, abs=1e-6)
    assert bl.binomial_se(0.0, 128) == 0.0


def test_runs_are_resumable_per_algorithm_and_seed(tmp_path, monkeypatch):
    """A finished run (done.json) is reused, a killed one (no done.json) started again from scratch."""
    from argparse import Namespace

    from threespo_verl import testbed as tb

    started = []

    def fake_run(overrides, out, steps, label, unit):
        started.append((label, out.name, steps, unit, [o for o in overrides if o.startswith("trainer.")]))
        (out / "metrics.jsonl").parent.mkdir(parents=True, exist_ok=True)
        return 1.0

    monkeypatch.setattr(bl.tb, "run_training", fake_run)
    a = Namespace(report_only=False, checkpoints=8, group=8, tasks=4, env_steps_per_optimizer_step=48, tune_tasks=64)
    out = tmp_path / "easy"
    done = out / "runs" / "lr0.0003" / "grpo-seed0"
    done.mkdir(parents=True)
    (done / "done.json").write_text(json.dumps({"wall_s": 5.0}))
    killed = out / "runs" / "lr0.0003" / "grpo-seed1"
    killed.mkdir(parents=True)
    (killed / "stale.txt").write_text("a killed run's leftovers")
    runs = bl.run_grid(tb.EASY, ["grpo"], {"grpo": 3e-4}, range(2), tmp_path / "model", a, out, 1280)
    assert runs == {"grpo": {0: done, 1: killed}}
    assert [s[:4] for s in started] == [("easy grpo s1", "grpo-seed1", 1280, "env steps")]
    assert not (killed / "stale.txt").exists() and (killed / "done.json").exists()
    # every run: the env-step budget, 8 validation checkpoints (every 160 env steps), no update-count validation
    assert {"trainer.total_env_steps=1280", "trainer.val_every_env_steps=160", "trainer.test_freq=-1"} <= set(
        started[0][4])


def test_tuning_runs_validate_on_training_tasks_disjoint_from_the_held_out_panel():
    from argparse import Namespace

    from threespo_verl import testbed as tb

    a = Namespace(checkpoints=8, group=8, tasks=4, env_steps_per_optimizer_step=48, tune_tasks=64)
    held_out = bl.run_overrides(tb.EASY, "3spo", Path("m"), a, 3e-4, 0, 1280, False, None)
    tune = bl.run_overrides(tb.EASY, "3spo", Path("m"), a, 3e-4, 0, 1280, True, None)
    assert "env.eval_panel=easy_test" in held_out and "env.eval_panel=easy_train" in tune
    # the later override wins in Hydra: the tuning panel replaces the held-out one
    assert tune.index("env.eval_panel=easy_train") > tune.index("env.eval_panel=easy_test")
    assert "data.val_max_samples=64" in tune


def test_curve_puts_the_initial_validation_at_zero_env_steps():
    val = "val-core/household/success"
    rows = [{"step": 0, val: 0.25, "explore/cumulative_env_steps": 0},
            {"step": 1, "explore/cumulative_env_steps": 120},
            {"step": 2, val: 0.75, "explore/cumulative_env_steps": 250}]
    xs, ys = bl.curve(rows, val)
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
