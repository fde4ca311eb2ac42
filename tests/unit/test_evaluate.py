"""threespo-verl eval: the statistics (hand-computed), the panel bookkeeping, the checkpoint lookup and the CLI's
errors. The run with a real model through vLLM is tests/integration/test_eval_cli.py."""

import json
import math

import pytest

from threespo_verl import eval_stats as es
from threespo_verl import evaluate as ev


def test_wilson_interval_hand_computed():
    # k=3, n=4, z=1.96: p=0.75, den=1+3.8416/4=1.9604, mid=(0.75+0.4802)/1.9604=0.62753,
    # half=1.96*sqrt(0.046875+0.060025)/1.9604=0.32682 -> [0.3007, 0.9544]
    lo, hi = es.wilson(3, 4)
    assert lo == pytest.approx(0.30071, abs=1e-4)
    assert hi == pytest.approx(0.95435, abs=1e-4)
    assert es.wilson(0, 0) == (0.0, 1.0)


def test_seed_stats_t_interval_hand_computed():
    st = es.seed_stats([0.5, 0.75, 1.0], n_tasks=4)
    # mean 0.75, std 0.25, half = 4.303 * 0.25 / sqrt(3) = 0.62108
    assert st["mean"] == pytest.approx(0.75)
    assert st["std"] == pytest.approx(0.25)
    assert st["ci95"] == pytest.approx([0.75 - 0.621085, 0.75 + 0.621085], abs=1e-5)
    one = es.seed_stats([0.75], n_tasks=4)
    assert one["std"] == 0.0 and one["ci95"] == pytest.approx(list(es.wilson(3, 4)))
    assert "Wilson" in one["ci_method"]


def test_summarize_per_type_and_every_task_once():
    types = {"a": "pick", "b": "pick", "c": "heat"}
    eps = [{"seed": s, "task_id": t, "won": w, "score": float(w)} for s, t, w in [
        (0, "a", True), (0, "b", False), (0, "c", True), (1, "a", True), (1, "b", True), (1, "c", False)]]
    out = es.summarize(eps, [0, 1], types)
    assert list(out) == ["all", "pick", "heat"]
    assert out["all"]["success"]["per_seed"] == pytest.approx([2 / 3, 2 / 3])
    assert out["pick"]["success"]["per_seed"] == [0.5, 1.0]
    assert out["heat"]["success"]["per_seed"] == [1.0, 0.0]
    assert out["heat"]["success"]["std"] == pytest.approx(math.sqrt(0.5))
    with pytest.raises(ValueError, match="no episode"):
        es.summarize(eps[:-1], [0, 1], types)
    with pytest.raises(ValueError, match="two episodes"):
        es.summarize(eps + [eps[0]], [0, 1], types)


def test_failed_episode_is_recorded_not_dropped():
    from threespo_verl.envs.base import Task

    rec = ev.episode_record(2, Task("x", "pick", "household"), None, error="RuntimeError: boom")
    assert rec["won"] is False and rec["score"] == 0.0 and rec["error"].startswith("RuntimeError")


def test_play_panel_runs_every_task_once_per_seed_and_skips_done():
    """The panel driver with the scripted policy (a labelled stand-in for the model; the model run is the
    integration test): each (seed, task) exactly once, already-finished pairs not replayed."""
    import asyncio

    from threespo_verl.envs import make
    from threespo_verl.envs.panels import panel
    from threespo_verl.testing import ScriptedPolicy, scripted_sampler

    tasks = list(panel("household", "test").tasks[:5])
    recs = []
    done = {(0, tasks[0].task_id)}
    asyncio.run(ev.play_panel(tasks, [0, 1], lambda: make("household", max_steps=8),
                              lambda s: scripted_sampler(ScriptedPolicy(), s), history_length=1, few_shot=False,
                              reasoning=False, concurrency=3, done=done, on_episode=recs.append))
    pairs = sorted((r["seed"], r["task_id"]) for r in recs)
    assert pairs == sorted({(s, t.task_id) for s in (0, 1) for t in tasks} - done)
    assert all(1 <= r["steps"] <= 8 and "error" not in r for r in recs)


def test_resolve_checkpoint(tmp_path):
    run = tmp_path / "run"
    (run / "global_step_3" / "actor").mkdir(parents=True)
    (run / "latest_checkpointed_iteration.txt").write_text("3")
    assert ev.resolve_checkpoint(run) == ((run / "global_step_3").resolve(), 3)
    assert ev.resolve_checkpoint(run / "global_step_3")[1] == 3
    with pytest.raises(FileNotFoundError, match="latest_checkpointed_iteration"):
        ev.resolve_checkpoint(tmp_path)


@pytest.mark.parametrize("args,msg", [
    (["--model", "x", "--env", "nosuchenv", "--split", "test"], "unknown env 'nosuchenv'"),
    (["--model", "x", "--env", "alfworld", "--split", "test"], "valid: in, out"),
])
def test_cli_errors_name_the_fix(args, msg, capsys):
    assert ev.main(args) == 2
    assert msg in capsys.readouterr().err


def test_markdown_has_table_and_card():
    res = {"protocol": {"env": "webshop", "panel": "test", "n_tasks": 2, "seeds": [0], "panel_sha256": "ab"},
           "summary": es.summarize([{"seed": 0, "task_id": "a", "won": True, "score": 1.0},
                                    {"seed": 0, "task_id": "b", "won": False, "score": 0.5}], [0],
                                   {"a": "fashion", "b": "fashion"})}
    md = es.render_markdown(res)
    assert "| all | 2 | 50.0 ± 0.0" in md and "score × 100" in md and "panel_sha256" in md
    json.dumps(res)


def test_a_dead_engine_stops_the_run_instead_of_scoring_failures():
    import asyncio

    from threespo_verl.envs import make
    from threespo_verl.envs.panels import panel
    from threespo_verl.testing import ScriptedPolicy, scripted_sampler
    from threespo_verl.rollout.vllm_sampler import SamplerError

    tasks = list(panel("household", "test").tasks[:4])
    good = scripted_sampler(ScriptedPolicy(), 0)
    calls = {"n": 0}

    async def dying(messages, n, choices=()):
        calls["n"] += 1
        if calls["n"] > 3:
            raise SamplerError("vLLM engine failed: EngineDeadError")
        return await good(messages, n, choices)

    recs = []
    with pytest.raises(SamplerError):
        asyncio.run(ev.play_panel(tasks, [0], lambda: make("household", max_steps=2), lambda s: dying,
                                  history_length=1, few_shot=False, reasoning=False, concurrency=1, done=set(),
                                  on_episode=recs.append))
    assert len(recs) == 1 and "error" not in recs[0]  # the finished episode is kept, no failure invented


def test_cli_stops_with_exit_1_and_resume_hint_when_the_engine_dies(tmp_path, monkeypatch, capsys):
    """The CLI's handling of an engine failure, with a deliberately failing engine stand-in (the real engine runs in
    tests/integration/test_eval_cli.py)."""
    from threespo_verl.rollout import vllm_sampler

    class DeadEngine:
        stats = {"requests": 0, "prompt_tokens": 0, "generated_tokens": 0, "generate_s": 0.0}

        def __init__(self, *a, **k):
            pass

        def with_seed(self, seed):
            async def sample(messages, n, choices=()):
                raise vllm_sampler.SamplerError("vLLM engine failed: EngineDeadError")
            return sample

        def close(self):
            pass

        def tokens_per_s(self):
            return 0.0

    monkeypatch.setattr(vllm_sampler, "VLLMSampler", DeadEngine)
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    out = tmp_path / "ev"
    rc = ev.main(["--model", str(model), "--env", "household", "--split", "test", "--seeds", "1", "--limit", "2",
                  "--no-reasoning", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and "EngineDeadError" in err and "run the same command again to resume" in err
    assert not (out / "results.json").exists()  # no results made of invented failures
    assert (out / "episodes.jsonl").read_text() == ""
