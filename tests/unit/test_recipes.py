"""Every recipe shell under recipes/ composes into a valid configuration that follows the published protocol.

Each shell runs with THREESPO_RECIPE_PRINT=1 (recipes/common.sh prints the final override list instead of
launching); the list is composed with Hydra exactly as ``python -m threespo_verl.main`` would, resolved, and read
back key by key."""

from __future__ import annotations

import os
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from threespo_verl.main import validate_overrides

ROOT = Path(__file__).resolve().parents[2]
SHELLS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "recipes").rglob("*.sh") if p.name != "common.sh")
H = {"alfworld": 50, "webshop": 15}


def train_split_size(cfg) -> int:
    """Tasks in the run's training split, as TaskDataset (threespo_verl/verl_glue/dataset.py) serves them to verl:
    the env's train split, cut to data.train_max_samples when that is > 0."""
    from threespo_verl.envs.alfworld_setup import GAME_COUNTS
    from threespo_verl.envs.household import SPLITS
    from threespo_verl.envs.webshop.catalog import N_TEST

    split = cfg.env.train_split
    n = {"alfworld": lambda: GAME_COUNTS[split],
         "webshop": lambda: {"train": 6910 - N_TEST}[split],  # 6,910 synthetic goals (tests/unit/test_webshop_env.py)
         "household": lambda: SPLITS[split]}[cfg.env.name]()
    cap = cfg.data.get("train_max_samples", -1)
    return min(n, cap) if cap is not None and cap > 0 else n


def verl_steps_before_epoch_cap(cfg) -> int:
    """verl 0.9.1 (trainer/ppo/v1/trainer_base.py): steps_per_epoch = len(train_dataset) // data.train_batch_size and
    ``fit`` runs step g only while (g - 1) // steps_per_epoch < trainer.total_epochs, i.e. g <= total_epochs x
    steps_per_epoch, whatever trainer.total_training_steps says."""
    steps_per_epoch = train_split_size(cfg) // cfg.data.train_batch_size
    assert steps_per_epoch >= 1, "a training split smaller than data.train_batch_size: verl divides by zero"
    return cfg.trainer.total_epochs * steps_per_epoch


def recipe_args(shell: str, *extra: str, **env: str) -> list[str]:
    out = subprocess.run(["bash", shell, *extra], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "THREESPO_RECIPE_PRINT": "1", **env})
    return [a for a in out.stdout.splitlines() if a]


def compose_recipe(args: list[str]):
    config_name = "threespo_trainer"
    if args and args[0] == "--config-name":
        config_name, args = args[1], args[2:]
    validate_overrides(args)
    with initialize_config_module(config_module="threespo_verl.config", version_base=None):
        cfg = compose(config_name=config_name, overrides=args)
    OmegaConf.resolve(cfg)  # every interpolation resolves
    return cfg


def test_every_env_algorithm_size_has_a_shell():
    for env in ("alfworld", "webshop"):
        for algo in ("3spo", "grpo", "gigpo", "spa", "ppo"):
            for size in ("1.5b", "7b"):
                assert f"recipes/{env}/{algo}_qwen2.5-{size}.sh" in SHELLS
    assert any(s.startswith("recipes/multinode/") for s in SHELLS)
    assert any(s.startswith("recipes/cpu/") for s in SHELLS)


@pytest.mark.parametrize("shell", SHELLS)
def test_recipe_composes_and_follows_the_protocol(shell):
    cfg = compose_recipe(recipe_args(shell))
    a, t = cfg.actor_rollout_ref, cfg.trainer
    env = cfg.env.name
    assert cfg.algorithm.name in ("3spo", "grpo", "gigpo", "spa", "ppo", "spa_ppo")
    critic_based = cfg.algorithm.name in ("ppo", "spa_ppo")
    assert cfg.algorithm.adv_estimator == ("turn_gae" if critic_based else cfg.algorithm.name)
    # DESIGN §2 item 8, every shell: the same outcome and invalid-action penalty for every algorithm, one optimizer
    # step per the same number of env steps, and a run that ends on its env-step budget, validated at env-step
    # checkpoints (total_training_steps a cap that verl's epoch cap never undercuts)
    assert cfg.env.outcome == "won" and cfg.env.invalid_action_penalty == 0.1
    assert cfg.algorithm.env_steps_per_optimizer_step == (16 if shell.startswith("recipes/cpu/") else 256)
    assert t.total_env_steps and t.val_every_env_steps and t.test_freq == -1
    assert t.total_training_steps is not None
    assert verl_steps_before_epoch_cap(cfg) >= t.total_training_steps
    if shell.startswith("recipes/cpu/"):
        assert t.device == "cpu" and env == "household" and cfg.env.constrain_actions
        return
    assert env in shell
    assert cfg.env.max_steps == H[env]
    assert cfg.data.train_batch_size == 16
    assert a.actor.optim.lr == 1e-6
    assert a.actor.use_kl_loss and a.actor.kl_loss_coef == 0.01 and a.actor.kl_loss_type == "low_var_kl"
    assert not cfg.algorithm.use_kl_in_reward
    assert a.rollout.val_kwargs.temperature == 0.4 and a.rollout.val_kwargs.do_sample
    assert a.rollout.name == "vllm" and t.v1.trainer_mode == "threespo"
    size = "7b" if "7b" in shell else "1.5b"
    if "/spa_" in shell:  # SPA's RL starts from its stage-1 clone of the base model (test_spa_recipes_run_stage_1)
        assert a.model.path.endswith(f"runs/spa-{env}-{size}/sft/model") and Path(a.model.path).is_absolute()
    else:
        assert a.model.path == {"1.5b": "Qwen/Qwen2.5-1.5B-Instruct", "7b": "Qwen/Qwen2.5-7B-Instruct"}[size]
    assert t.n_gpus_per_node == {"1.5b": 2, "7b": 8}[size]
    assert t.nnodes == (2 if "multinode" in shell else 1)
    # the same env-step budget per task: 3SPO's tree budget g_max x H = GRPO's rollout.n episodes of <= H steps
    if cfg.algorithm.name == "3spo":
        tt = cfg.algorithm.threespo
        assert tt.g_max == 8 and a.rollout.n == 1 and tt.env_step_budget is None
    else:
        assert a.rollout.n == 8
    if critic_based:  # one row per episode: the whole episode's budget, verl-agent's critic (DESIGN §3)
        budget = cfg.data.max_prompt_length + cfg.data.max_response_length
        assert budget == 32768 and cfg.env.max_tokens_per_step == 512 and cfg.env.history_length == 2
        for node, key in ((a.actor, "ppo_max_token_len_per_gpu"), (a.rollout, "log_prob_max_token_len_per_gpu"),
                          (a.ref, "log_prob_max_token_len_per_gpu"), (cfg.critic, "ppo_max_token_len_per_gpu")):
            assert node[key] >= budget  # one row fits a micro-batch (dynamic batch sizes)
        assert a.actor.use_dynamic_bsz and cfg.critic.use_dynamic_bsz
        # the critic at 10x the actor's lr (verl-agent's PPO; SPA-RL's value head trains at its policy's 1e-5) and
        # the algorithm group's warm-up (the actor's first update at step 3)
        assert cfg.critic.model.path == a.model.path and cfg.critic.optim.lr == 1e-5 == pytest.approx(10 * a.actor.optim.lr)
        assert cfg.critic.enable and cfg.trainer.critic_warmup == 3
        assert cfg.critic.fsdp.param_offload == (size == "7b")
        # GAE over turns: gamma and lambda per step (verl-agent's PPO 1/1, the SPA-RL paper's 0.99/0.95)
        gae = {"ppo": (1.0, 1.0), "spa_ppo": (0.99, 0.95)}[cfg.algorithm.name]
        assert (cfg.algorithm.gamma, cfg.algorithm.lam) == gae
    if cfg.algorithm.name in ("spa", "spa_ppo"):  # the RL stage reads the estimator the shell's offline stages wrote
        assert cfg.algorithm.spa.estimator_path.endswith(f"runs/spa-{env}-{size}/pe")
        assert Path(cfg.algorithm.spa.estimator_path).is_absolute()
        assert (cfg.algorithm.spa.alpha_p, cfg.algorithm.spa.beta) == (1.0, 0.5)
        assert cfg.algorithm.spa.grounding_guard == "normalized"  # the guard that cannot be farmed (DESIGN §3)


def test_three_spo_gets_the_env_steps_and_checkpoints_of_grpo():
    # post_step (the default): an update after every round that released >= min_update_rows rows; the run's length
    # and its validations are in env steps, the same as GRPO's: TRAIN_STEPS x 16 tasks x 8 episodes x H
    for env, min_rows in (("alfworld", 512), ("webshop", 256)):
        c3 = compose_recipe(recipe_args(f"recipes/{env}/3spo_qwen2.5-1.5b.sh"))
        cg = compose_recipe(recipe_args(f"recipes/{env}/grpo_qwen2.5-1.5b.sh"))
        t = c3.algorithm.threespo
        assert (t.update_mode, t.reward_stats, t.min_update_rows) == ("post_step", "update", min_rows)
        assert c3.trainer.total_env_steps == cg.trainer.total_env_steps == 150 * 16 * 8 * H[env]
        assert c3.trainer.val_every_env_steps == cg.trainer.val_every_env_steps == 5 * 16 * 8 * H[env]
        # the update cap leaves room for ~H updates per GRPO-step equivalent
        assert c3.trainer.total_training_steps >= 150 * H[env] and cg.trainer.total_training_steps >= 150


def test_every_shell_of_an_env_shares_outcome_penalty_and_mini_batch_rows():
    """The comparability settings (DESIGN §2 item 8) are one value per env across algorithms, sizes and node counts."""
    seen = defaultdict(set)
    for shell in SHELLS:
        cfg = compose_recipe(recipe_args(shell))
        seen[cfg.env.name].add((cfg.env.outcome, cfg.env.invalid_action_penalty,
                                cfg.algorithm.env_steps_per_optimizer_step))
    assert set(seen) == {"alfworld", "webshop", "household"}
    assert all(len(v) == 1 for v in seen.values()), dict(seen)


@pytest.mark.parametrize("steps", ["1000", "20000"])
def test_longer_runs_still_end_on_their_env_step_budget(steps):
    """TRAIN_STEPS scales every recipe's env-step budget; neither the update cap nor verl's epoch cap comes first."""
    for shell, h in (("recipes/alfworld/3spo_qwen2.5-7b.sh", 50), ("recipes/webshop/grpo_qwen2.5-1.5b.sh", 15)):
        cfg = compose_recipe(recipe_args(shell, TRAIN_STEPS=steps))
        assert cfg.trainer.total_env_steps == int(steps) * 16 * 8 * h
        assert verl_steps_before_epoch_cap(cfg) >= cfg.trainer.total_training_steps >= int(steps)


def test_user_overrides_and_env_vars_win():
    args = recipe_args("recipes/alfworld/grpo_qwen2.5-7b.sh", "trainer.total_env_steps=3000",
                       MODEL_PATH="/models/q7", N_GPUS="4", MIN_UPDATE_ROWS="64")
    cfg = compose_recipe(args)
    assert cfg.trainer.total_env_steps == 3000
    assert compose_recipe(recipe_args("recipes/alfworld/3spo_qwen2.5-1.5b.sh", MIN_UPDATE_ROWS="64")).algorithm.threespo.min_update_rows == 64
    assert cfg.actor_rollout_ref.model.path == "/models/q7" and cfg.trainer.n_gpus_per_node == 4


def test_unknown_names_fail_with_the_valid_ones(tmp_path):
    shell = tmp_path / "bad.sh"
    shell.write_text(f'source "{ROOT}/recipes/common.sh"\nrun_recipe alfworld dqn 1.5b\n')
    # PYTHON=false: if the recipe got as far as launching, the launcher would exit 1 instead of starting verl
    out = subprocess.run(["bash", str(shell)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHON": "false"})
    assert out.returncode == 2 and "unknown algorithm 'dqn' (3spo | grpo | gigpo | spa | ppo | spa_ppo)" in out.stderr


@pytest.mark.parametrize("env", ["alfworld", "webshop"])
def test_spa_recipes_run_stage_1_before_collection(env):
    """SPA's pipeline in one shell: behaviour cloning of the base model on the env's expert trajectories (verl's SFT
    trainer, the RL prompts and horizon), then collection and the estimator on the clone, then spa_ppo from it;
    SPA_ALGO=spa keeps the critic-free variant."""
    out = subprocess.run(["bash", f"recipes/{env}/spa_qwen2.5-1.5b.sh"], cwd=ROOT, capture_output=True, text=True,
                         check=True, env={**os.environ, "THREESPO_RECIPE_PRINT": "1"})
    stages = [ln[len("stage: "):] for ln in out.stderr.splitlines() if ln.startswith("stage: ")]
    assert [s.split()[1] for s in stages] == ["sft", "spa", "spa"]
    work = str(ROOT / f"runs/spa-{env}-1.5b")
    sft, collect, pe = stages
    assert f"--env {env} --split train --model Qwen/Qwen2.5-1.5B-Instruct --out {work}/sft" in sft
    assert f"--max-steps {H[env]} --history-length 2 --reasoning" in sft and "--nproc 2" in sft
    assert collect.startswith("threespo-verl spa collect") and f"--model {work}/sft/model" in collect
    assert pe.startswith("threespo-verl spa train-estimator") and f"--model {work}/sft/model" in pe
    cfg = compose_recipe(recipe_args(f"recipes/{env}/spa_qwen2.5-1.5b.sh"))
    assert cfg.algorithm.name == "spa_ppo" and cfg.actor_rollout_ref.model.path == f"{work}/sft/model"
    assert cfg.algorithm.spa.estimator_path == f"{work}/pe"
    # the paper's GAE constants, per step (turn_gae), and a critic on the clone
    assert (cfg.algorithm.adv_estimator, cfg.algorithm.gamma, cfg.algorithm.lam) == ("turn_gae", 0.99, 0.95)
    assert cfg.critic.enable and cfg.critic.model.path == f"{work}/sft/model"
    cfg = compose_recipe(recipe_args(f"recipes/{env}/spa_qwen2.5-1.5b.sh", SPA_ALGO="spa"))
    assert cfg.algorithm.name == "spa" and cfg.algorithm.adv_estimator == "spa"
    assert cfg.data.max_response_length == 512 and cfg.env.max_tokens_per_step is None  # step rows: no row budget
