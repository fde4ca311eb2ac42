"""Composition of ``threespo_trainer`` with each algorithm / env option, read back key by key."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from threespo_verl.main import group_options, validate_overrides
from threespo_verl.verl_glue.config import GiGPOConfig, SPAConfig, ThreeSPOAlgoConfig, ThreeSPOConfig


def _compose(*overrides: str):
    # verl's config module as the primary path: proves the search-path plugin makes ours visible to verl's app
    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        return compose(config_name="threespo_trainer", overrides=list(overrides))


@pytest.mark.parametrize(
    "algo, estimator",
    [("3spo", "3spo"), ("grpo", "grpo"), ("gigpo", "gigpo"), ("spa", "spa"), ("ppo", "turn_gae"),
     ("spa_ppo", "turn_gae")]
)
def test_algorithm_group_sets_name_and_estimator(algo, estimator):
    cfg = _compose(f"algorithm={algo}")
    assert cfg.algorithm.name == algo
    assert cfg.algorithm.adv_estimator == estimator
    # verl's own algorithm keys survive next to ours
    # (ppo: verl's GAE defaults, as verl-agent's PPO baseline; spa_ppo: the SPA-RL paper's; both per step)
    gae = {"spa_ppo": (0.99, 0.95)}.get(algo, (1.0, 1.0))
    assert (cfg.algorithm.gamma, cfg.algorithm.lam) == gae
    # the trajectory algorithms start a critic (verl starts one for its own gae only) and warm it up: the actor's
    # first update is at step 3; every other algorithm keeps verl's defaults
    trajectory = algo in ("ppo", "spa_ppo")
    assert cfg.critic.enable == (True if trajectory else None)
    assert cfg.trainer.critic_warmup == (3 if trajectory else 0)
    assert "kl_ctrl" in cfg.algorithm and "rollout_correction" in cfg.algorithm
    # every 3SPO constant of DESIGN §2 is a key under algorithm.threespo, with the paper's default
    t = cfg.algorithm.threespo
    assert (t.alpha, t.xi, t.zeta, t.eps, t.omega_k, t.g_max, t.score_diff, t.state_scope) == (
        50.0, 10.0, 0.1, 1e-6, 0.1, 8, "untruncated", "task"
    )
    # one objective for every algorithm (DESIGN §2.8)
    assert (cfg.env.outcome, cfg.env.invalid_action_penalty, cfg.algorithm.mini_batch_rows) == ("won", 0.1, 256)
    assert (t.step_adv_norm, t.merge_identical_states, t.update_mode, t.reward_stats, t.max_trajectories_per_task) == (
        "mean_std", False, "post_step", "update", 32
    )
    assert t.env_step_budget is None and t.min_update_rows == 1


def test_yaml_keys_equal_dataclass_fields():
    cfg = _compose("algorithm=3spo")
    fields = lambda dc: {f for f in dc.__dataclass_fields__ if not f.startswith("_")}  # noqa: E731
    assert set(cfg.algorithm.threespo) - {"_target_"} == fields(ThreeSPOConfig)
    assert set(cfg.algorithm.gigpo) - {"_target_"} == fields(GiGPOConfig)
    assert set(cfg.algorithm.spa) - {"_target_"} == fields(SPAConfig)
    # and the defaults agree, so the YAML and the dataclass cannot drift apart
    for dc, node in ((ThreeSPOConfig(), cfg.algorithm.threespo), (GiGPOConfig(), cfg.algorithm.gigpo),
                     (SPAConfig(), cfg.algorithm.spa)):
        for key in fields(type(dc)):
            assert node[key] == getattr(dc, key), key


def test_algorithm_config_instantiates_through_verl():
    from verl.utils.config import omega_conf_to_dataclass

    cfg = _compose("algorithm=gigpo", "algorithm.gigpo.mode=mean_norm", "algorithm.threespo.g_max=4")
    algo = omega_conf_to_dataclass(cfg.algorithm)
    assert isinstance(algo, ThreeSPOAlgoConfig)
    assert isinstance(algo.threespo, ThreeSPOConfig) and algo.threespo.g_max == 4
    assert isinstance(algo.gigpo, GiGPOConfig) and algo.gigpo.mode == "mean_norm"
    assert algo.adv_estimator == "gigpo"


def test_bad_enum_value_is_rejected_with_valid_values():
    from verl.utils.config import omega_conf_to_dataclass

    cfg = _compose("algorithm.threespo.step_adv_norm=median")
    with pytest.raises(Exception, match="mean_std"):
        omega_conf_to_dataclass(cfg.algorithm)
    cfg = _compose("algorithm=spa", "algorithm.spa.grounding_guard=never")
    with pytest.raises(Exception, match="state_change"):
        omega_conf_to_dataclass(cfg.algorithm)


@pytest.mark.parametrize("algo", ["3spo", "grpo", "gigpo", "spa", "ppo", "spa_ppo"])
def test_algorithm_name_and_estimator_agree(algo):
    from verl.utils.config import omega_conf_to_dataclass

    assert omega_conf_to_dataclass(_compose(f"algorithm={algo}").algorithm).name == algo
    wrong = "gae" if algo in ("3spo", "grpo", "gigpo", "spa") else "grpo"
    with pytest.raises(Exception, match=f"algorithm={algo}"):
        omega_conf_to_dataclass(_compose(f"algorithm={algo}", f"algorithm.adv_estimator={wrong}").algorithm)


@pytest.mark.parametrize("algo", ["ppo", "spa_ppo"])
def test_trajectory_algorithms_also_take_verls_token_level_gae(algo):
    from verl.utils.config import omega_conf_to_dataclass

    cfg = _compose(f"algorithm={algo}", "algorithm.adv_estimator=gae")
    assert omega_conf_to_dataclass(cfg.algorithm).adv_estimator == "gae" and cfg.critic.enable
    with pytest.raises(Exception, match=r"adv_estimator=turn_gae or gae .*got grpo.*algorithm.adv_estimator=gae"):
        omega_conf_to_dataclass(_compose(f"algorithm={algo}", "algorithm.adv_estimator=grpo").algorithm)


@pytest.mark.parametrize("env, steps", [("household", 30), ("alfworld", 50), ("webshop", 15)])
def test_env_group(env, steps):
    cfg = _compose(f"env={env}")
    assert cfg.env.name == env and cfg.env.max_steps == steps and cfg.env.history_length == 2


def test_group_options_and_unknown_names():
    assert group_options("algorithm") == ["3spo", "gigpo", "grpo", "ppo", "spa", "spa_ppo"]
    assert group_options("env") == ["alfworld", "household", "webshop"]
    validate_overrides(["algorithm=3spo", "env=webshop", "trainer.total_training_steps=3"])
    with pytest.raises(SystemExit, match=r"unknown algorithm 'dqn'; valid values: 3spo, gigpo, grpo, ppo, spa, spa_"):
        validate_overrides(["algorithm=dqn"])
    with pytest.raises(SystemExit, match=r"unknown env 'minigrid'; valid values: alfworld, household, webshop"):
        validate_overrides(["env=minigrid"])


def test_main_rejects_unknown_algorithm_in_a_subprocess():
    proc = subprocess.run(
        [sys.executable, "-m", "threespo_verl.main", "algorithm=dqn"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    assert "unknown algorithm 'dqn'; valid values: 3spo, gigpo, grpo, ppo, spa, spa_ppo" in proc.stderr


def test_verl_entry_point_composes_threespo_trainer():
    """`python -m verl.trainer.main_ppo --config-name threespo_trainer` resolves through the search-path plugin."""
    proc = subprocess.run(
        [sys.executable, "-m", "verl.trainer.main_ppo", "--config-name", "threespo_trainer", "algorithm=gigpo",
         "env=alfworld", "--cfg", "job", "--resolve"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    job = OmegaConf.create(proc.stdout)
    assert job.algorithm.adv_estimator == "gigpo" and job.env.name == "alfworld"
    assert job.algorithm.threespo.alpha == 50.0


@pytest.mark.parametrize("bypass, constrained, warns", [
    (True, True, True), (True, False, False), (False, True, False), (False, False, False)])
def test_bypass_with_constrained_decoding_warns(bypass, constrained, warns):
    from threespo_verl.verl_glue.trainer import bypass_with_constrained_decoding

    cfg = _compose("algorithm=grpo", f"algorithm.rollout_correction.bypass_mode={str(bypass).lower()}",
                   f"env.constrain_actions={str(constrained).lower()}")
    note = bypass_with_constrained_decoding(cfg)
    assert (note is not None) == warns
    if warns:
        assert "env.constrain_actions=false" in note and "bypass_mode=false" in note
