"""The CPU learning testbed's parts (threespo_verl/testbed.py): the household easy splits, the recovering expert,
the noisy demonstrations the warm start clones, and the overrides that put a run on the testbed."""

from __future__ import annotations

import random

import pytest

from threespo_verl import testbed
from threespo_verl.envs import make
from threespo_verl.envs.household import EASY_MAX_PLAN
from threespo_verl.envs.panels import panel


def test_easy_splits_are_fixed_short_look_tasks_and_disjoint():
    env = make("household")
    train, test = env.tasks("easy_train"), env.tasks("easy_test")
    assert (len(train), len(test)) == (512, 128)
    assert not {t.task_id for t in train} & {t.task_id for t in test}
    for t in [*train[:64], *test]:
        plan = env.oracle_actions(t)
        assert t.task_type == "look" and len(plan) <= EASY_MAX_PLAN
        assert plan[0] == "go to desk 1" and plan[-1] == "use desklamp 1"
    assert [t.task_id for t in make("household").tasks("easy_test")] == [t.task_id for t in test]
    assert panel("household", "easy_test").tasks == tuple(test)


@pytest.mark.parametrize("split", ["train", "easy_train"])
def test_plan_recovers_from_detours(split):
    env = make("household", max_steps=60)
    rng = random.Random(0)
    for task in env.tasks(split)[:150]:
        (obs, _info), done = env.reset(task), False
        for _ in range(rng.randrange(0, 6)):
            obs, _r, terminated, truncated, info = env.step(rng.choice(obs.admissible_actions))
            done = terminated or truncated
            if done:
                break
        if done:
            continue
        for action in env.plan():
            assert action in obs.admissible_actions, (task.task_id, action)
            obs, _r, terminated, truncated, info = env.step(action)
        assert info["won"], task.task_id
    with pytest.raises(RuntimeError, match="reset"):
        make("household").plan()


def test_noisy_demonstrations_are_deterministic_and_noisy_as_asked():
    a = testbed.expert_demonstrations(300, noise=0.5, seed=3)
    assert a == testbed.expert_demonstrations(300, noise=0.5, seed=3)
    clean = testbed.expert_demonstrations(300, noise=0.0, seed=3)
    assert all(r.startswith("<action>") and r.endswith("</action>") for _, r in a)
    # without noise every first step is the expert's; with noise 0.5 about half of all steps are random
    firsts = [r for m, r in clean if "Prior to this step" not in m[0]["content"]]
    assert firsts and set(firsts) == {"<action>go to desk 1</action>"}
    env = make("household", max_steps=5)
    expert = 0
    for msgs, reply in a[:200]:
        expert += reply in {"<action>go to desk 1</action>", "<action>use desklamp 1</action>"} or "take " in reply
    assert 0.4 < expert / 200 < 0.9  # expert moves plus the random ones that happen to match
    del env


def test_overrides_compose_with_the_cpu_config():
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="threespo_verl.config", version_base=None):
        cfg = compose(config_name="threespo_trainer_cpu",
                      overrides=[*testbed.overrides(), *testbed.algorithm_overrides("3spo", 8)])
    assert (cfg.env.train_split, cfg.env.eval_panel, cfg.env.max_steps) == ("easy_train", "easy_test", 5)
    assert cfg.env.constrain_actions is True and cfg.env.reasoning is False
    assert cfg.algorithm.threespo.g_max == 8 and cfg.actor_rollout_ref.rollout.n == 1
    assert cfg.actor_rollout_ref.rollout.val_kwargs.temperature == 1.0


def test_demo_caps_micro_batches_for_models_larger_than_the_testbed_policy():
    from threespo_verl.demo import micro_batch_tokens

    assert micro_batch_tokens("tiny-qwen2-bc") == 4096
    assert micro_batch_tokens("/models/tiny-qwen2-bc") == 4096
    # 4,096 was killed for memory on a 24 GB machine; the cap still holds the longest row the testbed allows
    assert micro_batch_tokens("smollm2-135m") == 1024 + 48
    cfg = testbed.overrides(32, micro_batch_tokens("smollm2-135m"))
    assert "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=1072" in cfg
    assert {"data.max_prompt_length=1024", "data.max_response_length=48"} <= set(cfg)
