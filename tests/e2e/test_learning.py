"""Learning test: a few updates through verl's real loop (trainer mode, agent loop, vLLM CPU rollout, FSDP update,
weight sync) raise the held-out success of the CPU learning testbed (threespo_verl/testbed.py).

It fails when the learning signal breaks, not only when something crashes: with the advantage sign flipped or each
step reward put one token past its response (``THREESPO_TEST_MUTATION=flip_advantage`` / ``reward_off_by_one``, a
test-only switch of the trainer) the test fails.

Every run spends the same env-step budget (``trainer.total_env_steps``: 4 GRPO steps of 4 tasks x 8 episodes x H =
640 env steps) and takes one optimizer step per ``testbed.ENV_STEPS_PER_OPTIMIZER_STEP`` env steps, at least one per
update. Thresholds come from measured runs (initial success 9-25% on the 32-task panel, sampled at T=1; GRPO reached
75% after 4 updates; 3SPO's default post-step form 12.5% -> 81.2% at 643 env steps, in 56 updates) with a margin
for the panel's sampling noise (one panel pass has a standard error of about 7 points).

3SPO runs in its default form (``update_mode=post_step``: an update after every expansion round with the groups whose
subtree closed in it, Eq.2 rescored then, old log-probs from sampling time). The learning benchmark
(benchmarks/bench_learning.py) reports it beside its literal paper form and the post-trajectory variant.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

from threespo_verl import testbed
from threespo_verl.verl_glue import metrics_log

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

VAL = "val-core/household/success"
#: the env-step budget of each run, in GRPO steps of at most 4 tasks x 8 episodes x H env steps (640 env steps)
STEPS = 4
#: the trained policy must gain this much held-out success, and reach at least FLOOR
GAIN, FLOOR = 0.25, 0.5


@pytest.fixture(scope="module")
def bc_model():
    if importlib.util.find_spec("vllm") is None:
        pytest.fail("vLLM's CPU build is not installed in this environment: run bash scripts/install.sh")
    from threespo_verl import models

    # the data home's copy (built once, a few minutes; reused while its fingerprint matches)
    return models.install(name="tiny-qwen2-bc")


def _train(algo: str, model, out) -> list[dict]:
    budget = STEPS * testbed.grpo_step_env_steps(4, 8, testbed.EASY.horizon)
    overrides = [*testbed.overrides(), *testbed.algorithm_overrides(algo, 8), f"actor_rollout_ref.model.path={model}",
                 "data.train_batch_size=4", "actor_rollout_ref.actor.optim.lr=3e-4",
                 f"algorithm.env_steps_per_optimizer_step={testbed.ENV_STEPS_PER_OPTIMIZER_STEP}",
                 "trainer.save_freq=-1", "trainer.val_before_train=true", "trainer.test_freq=-1",
                 f"trainer.total_env_steps={budget}", f"trainer.val_every_env_steps={budget}",
                 "trainer.total_training_steps=1000", "data.seed=0", "algorithm.threespo.sample_seed=0"]
    testbed.run_training(overrides, out, budget, algo, unit="env steps")
    return metrics_log.read(str(out / "metrics.jsonl"))


@pytest.mark.parametrize("algo", ["3spo", "grpo"])
def test_training_raises_held_out_success(algo, bc_model, tmp_path):
    rows = _train(algo, bc_model, tmp_path / algo)
    vals = [(r["step"], r[VAL]) for r in rows if VAL in r]
    assert [s for s, _ in vals][0] == 0 and len(vals) >= 2, vals
    initial, final = vals[0][1], vals[-1][1]
    mutation = os.environ.get("THREESPO_TEST_MUTATION")
    print(f"{algo}: held-out success {initial:.3f} -> {final:.3f} (mutation: {mutation})")
    assert initial <= 0.45, f"the warm start should leave room to learn, got {initial:.2f}"
    assert final >= FLOOR and final - initial >= GAIN, (
        f"{algo}: held-out success {initial:.2f} -> {final:.2f} at the {STEPS}-GRPO-step env-step budget; expected a "
        f"gain of at least {GAIN} to at least {FLOOR}")
