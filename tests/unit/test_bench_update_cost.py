"""The update-cost benchmark's arithmetic (benchmarks/bench_update_cost.py) on hand-computed fixtures, and its rule
for reusing a finished run: the README's table is made of these numbers."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "bench_update_cost", Path(__file__).resolve().parents[2] / "benchmarks" / "bench_update_cost.py")
uc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(uc)


def _step(rows, old, update, sync, prompt=250.0, reply=10.0, gb=1.0):
    return {"actor/update_rows": rows, "timing_s/old_log_prob": old, "timing_s/update_actor": update,
            "timing_s/update_weights": sync, "prompt_length/mean": prompt, "response_length/mean": reply,
            "actor/perf/max_memory_allocated_gb": gb}


def test_per_row_leaves_the_warm_up_out_and_divides_each_stage_by_the_step_rows():
    rows = [
        {"val-core/household/success": 0.2},  # a validation row: no update, not a step
        _step(10, 100.0, 100.0, 100.0, gb=9.0),  # warm-up: left out of the means, but its peak memory counts
        _step(20, 10.0, 40.0, 2.0, prompt=280.0, reply=12.0),
        _step(10, 4.0, 30.0, 1.0, prompt=300.0, reply=8.0),
    ]
    r = uc.per_row(rows)
    # step means of stage / rows: old (0.5 + 0.4) / 2, update (2 + 3) / 2, sync (0.1 + 0.1) / 2; no ref stage logged
    assert r["old_log_prob"] == pytest.approx(0.45)
    assert r["update_actor"] == pytest.approx(2.5)
    assert r["update_weights"] == pytest.approx(0.1)
    assert r["ref"] == 0.0
    assert r["total"] == pytest.approx(0.45 + 2.5 + 0.1)
    assert r["rows"] == pytest.approx(15.0)
    assert r["tokens_per_row"] == pytest.approx((292.0 + 308.0) / 2)
    assert r["actor_peak_gb"] == 9.0


def test_per_row_without_a_step_after_the_warm_up_says_to_raise_steps():
    with pytest.raises(RuntimeError, match="raise --steps"):
        uc.per_row([_step(10, 1.0, 1.0, 1.0)])


def test_a_finished_run_is_reused_only_with_the_same_overrides_and_steps(tmp_path):
    run = tmp_path / "smollm2-135m-today"
    record = ["algorithm=grpo", "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=1024", "steps=3"]
    assert not uc.finished(run, record)  # nothing there
    run.mkdir()
    (run / "metrics.jsonl").write_text("{}\n")
    assert not uc.finished(run, record)  # killed before the end: no done.json
    (run / "done.json").write_text(json.dumps({"wall_s": 1.0, "overrides": record}))
    assert uc.finished(run, record)
    assert not uc.finished(run, [*record[:-1], "steps=4"])
    assert not uc.finished(run, [record[0], "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=4096", record[-1]])


def test_the_variants_add_levers_in_order():
    assert uc.VARIANTS["today"] == []
    assert set(uc.BYPASS) < set(uc.VARIANTS["levers"])
    assert uc.VARIANTS["bypass"] == uc.BYPASS
    assert any("OMP_NUM_THREADS" in o for o in uc.VARIANTS["levers"])
    assert uc.VARIANTS["bf16"][:-1] == uc.VARIANTS["levers"] and "param_dtype=bf16" in uc.VARIANTS["bf16"][-1]


def test_bf16_units_reads_the_cpu_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 fma avx512f avx512_bf16 amx_tile amx_bf16\n")
    assert uc.bf16_units(info) == ["amx_bf16", "avx512_bf16"]
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 fma\n")
    assert uc.bf16_units(info) == []
    assert uc.bf16_units(tmp_path / "missing") == []


def test_fixed_cost_fit_recovers_a_line_through_the_updates():
    """Hand-made updates whose stages cost exactly 0.5 + 0.01 x rows (update), 0.2 (sync) and 0.001 x rows (pass):
    the total is 0.7 s per update + 0.011 s per row; the first (warm-up) update is left out."""
    updates = [{"actor/update_rows": 99, "timing_s/update_actor": 50.0}]  # a warm-up outlier, skipped
    for n in (2, 10, 40, 130):
        updates.append({"actor/update_rows": n, "timing_s/update_actor": 0.5 + 0.01 * n,
                        "timing_s/update_weights": 0.2, "timing_s/round_old_log_prob": 0.001 * n})
    fit = uc.fit_fixed_and_per_row(updates)
    a, b, r2 = fit["total"]
    assert (a, b) == (pytest.approx(0.7), pytest.approx(0.011)) and r2 == pytest.approx(1.0)
    assert fit["update_weights"][:2] == (pytest.approx(0.2), pytest.approx(0.0))
    assert fit["median_rows"][0] == 25.0
    with pytest.raises(RuntimeError, match="too few"):
        uc.fit_fixed_and_per_row(updates[:3])
