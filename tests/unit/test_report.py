"""threespo-verl report: PNGs and the markdown table from metrics.jsonl files (synthetic logs of two runs)."""

from __future__ import annotations

from threespo_verl.report import main, write_report
from threespo_verl.verl_glue import metrics_log


def _runs(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    # the initial validation comes first, as step 0, with none of the training keys
    metrics_log.append(str(a / "metrics.jsonl"), 0, {"val-core/household/success": 0.0}, algorithm="3spo")
    for step in (1, 2, 3):
        metrics_log.append(str(a / "metrics.jsonl"), step, {
            "explore/success": 0.25 * step, "explore/cumulative_env_steps": 100 * step,
            "explore/cumulative_unique_states": 40 * step, "explore/cumulative_llm_calls": 120 * step,
            "explore/n_hist/0": 1, "explore/n_hist/8": 3, "explore/reward/r_novel_mean": 0.3,
            "explore/pruned_rate": 0.25, "explore/singleton_group_rate": 0.1, "timing_s/step": 10.0}, algorithm="3spo")
        metrics_log.append(str(b / "metrics.jsonl"), step, {
            "episode/success": 0.1 * step, "explore/cumulative_env_steps": 90 * step,
            "explore/cumulative_unique_states": 30 * step, "reward/progress_mean": 0.1 * step,
            "reward/grounding_mean": 0.2, "timing_s/step": 20.0}, algorithm="spa")
    metrics_log.append(str(a / "metrics.jsonl"), 3, {"val-core/household/success": 0.5,
                                                      "val-core/household/success/pick": 1.0}, algorithm="3spo")
    return a, b


def _ppo_run(tmp_path):
    c = tmp_path / "c"
    for step, ev in ((1, -0.4), (2, 0.1), (3, 0.35)):
        metrics_log.append(str(c / "metrics.jsonl"), step, {
            "episode/success": 0.2, "explore/cumulative_env_steps": 80 * step, "critic/vf_explained_var": ev,
            "timing_s/step": 30.0}, algorithm="spa_ppo")
    return c


def test_report_writes_plots_and_table(tmp_path):
    a, b = _runs(tmp_path)
    md = write_report([a, b], tmp_path / "out", names=["3SPO", "SPA"], title="t")
    text = md.read_text()
    for png in ("success_vs_step", "success_vs_env_steps", "unique_states", "n_hist", "reward_components",
                "pruned_rate", "spa_reward_components"):
        assert (tmp_path / "out" / f"{png}.png").stat().st_size > 1000 and f"({png}.png)" in text
    assert "| 3SPO | 3 | 300 | 360 | 120 | 75.0% | 50.0% | 100.0% | 10 |" in text
    assert "| SPA | 3 | 270 | - | 90 | 30.0% | - | - | 20 |" in text
    assert "critic" not in text  # no run with a critic: no critic column, no critic plot
    assert not (tmp_path / "out" / "critic.png").exists()


def test_report_shows_the_critics_explained_variance(tmp_path):
    a, _b = _runs(tmp_path)
    c = _ppo_run(tmp_path)
    md = write_report([a, c], tmp_path / "out", names=["3SPO", "SPA-PPO"], title="t")
    text = md.read_text()
    assert "| s/step | critic expl. var |" in text
    assert "| 3SPO | 3 | 300 | 360 | 120 | 75.0% | 50.0% | 100.0% | 10 | - |" in text
    assert "| SPA-PPO | 3 | 240 | - | - | 20.0% | - | - | 30 | 0.35 |" in text  # the last step's
    assert (tmp_path / "out" / "critic.png").stat().st_size > 1000 and "(critic.png)" in text


def test_report_cli_and_missing_log(tmp_path, capsys):
    a, _b = _runs(tmp_path)
    assert main([str(a), "--out", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "report.md").exists()
    import pytest

    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        write_report([tmp_path / "empty"], tmp_path / "x")
