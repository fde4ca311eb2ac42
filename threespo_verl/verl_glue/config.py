"""Typed configuration of the plugin: ``config.algorithm`` and ``config.env``, resolved once into dataclasses.

verl turns ``config.algorithm`` into a dataclass through its ``_target_``. The stock ``AlgoConfig`` rejects unknown
keys, so the YAML of this package points ``algorithm._target_`` at ``ThreeSPOAlgoConfig``: verl's ``AlgoConfig``
plus one sub-config per algorithm of this package. Every 3SPO constant of DESIGN §2 is a field of
``ThreeSPOConfig`` (Hydra key ``algorithm.threespo.<field>``). ``EnvConfig`` is the ``env`` node (its YAML group
``config/env/<name>.yaml`` overrides some defaults per environment). ``resolve_algorithm`` / ``resolve_env`` turn a
config node (or an already resolved dataclass) into these types; code reads the typed fields, never the raw node.

The ``#:`` comment above a field is its documentation: ``config_reference.py`` generates the README's configuration
reference from them, and a test checks that the dataclass defaults and the composed YAML agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from verl.base_config import BaseConfig
from verl.trainer.config.algorithm import AlgoConfig

STEP_ADV_NORMS = ("mean_std", "mean")
SCORE_DIFFS = ("untruncated", "literal")
STATE_SCOPES = ("task", "global")
UPDATE_MODES = ("post_step", "post_step_own_round", "post_trajectory")  # = rollout.release.UPDATE_MODES
REWARD_STATS = ("round", "update")
#: the advantage estimators each algorithm trains with, its default first (its config group,
#: config/algorithm/NAME.yaml, sets the default); the trajectory algorithms also take verl's token-level `gae`
ADV_ESTIMATORS = {"3spo": ("3spo",), "grpo": ("grpo",), "gigpo": ("gigpo",), "spa": ("spa",),
                  "ppo": ("turn_gae", "gae"), "spa_ppo": ("turn_gae", "gae")}
GIGPO_MODES = ("mean_std_norm", "mean_norm")
OUTCOMES = ("won", "score")  # = threespo_verl.rollout.expand.OUTCOMES
SPA_GUARDS = ("normalized", "state_change", "cap")  # = threespo_verl.algos.spa.GUARD_MODES


@dataclass
class ThreeSPOConfig(BaseConfig):
    """3SPO constants (DESIGN §2); Eq.1-4 defaults are the paper's."""

    #: Eq.1: lambda(t) = alpha * log(t), t = 1 + completed trajectories
    alpha: float = 50.0
    #: Eq.1: S(s) = 0 unless N_fail(s) < xi or SR(s) > zeta
    xi: float = 10.0
    #: Eq.1: success-rate threshold of the truncation indicator
    zeta: float = 0.1
    #: Eq.1: SR = N_success / (N_total + eps)
    eps: float = 1e-6
    #: Eq.2: novelty weight w = 0.5 * exp(-omega_k * N_total(s_t)); the invalid-action penalty is
    #: `env.invalid_action_penalty`
    omega_k: float = 0.1
    #: Eq.2: the score in S(s_t) - S(s_t+1): `untruncated` exp(-lambda SR) (the truncation gates branching only, so
    #: entering a dead end earns no bonus) or `literal` (the truncated S; ablation)
    score_diff: str = "untruncated"
    #: Eq.2's statistics: `update` (those committed when the update's advantages are computed, N_total in w
    #: included; a group released once its subtree closed sees every trajectory through its children, so a step on a
    #: path that later succeeded is credited at once) or `round` (the snapshot before the expansion round, the
    #: paper's)
    reward_stats: str = "update"
    #: statistics per (task, state) (`task`) or pooled over tasks (`global`; ablation: on WebShop every task starts
    #: on the same page, so pooled statistics prune every root)
    state_scope: str = "task"
    #: Eq.3: n(s) = ceil(g_max * S(s)); 0 prunes, 1 follows without an update row
    g_max: int = 8
    #: Eq.4: `mean_std` = (R - mean) / (std + eps), `mean` = R - mean, within one node's children
    step_adv_norm: str = "mean_std"
    #: Eq.4: eps of `mean_std`
    adv_eps: float = 1e-6
    #: pool the groups whose parents share a state key within one task over the update's rows (needs updates that
    #: hold several groups of a task: `update_mode=post_trajectory` or `min_update_rows` > 1)
    merge_identical_states: bool = False
    #: per-task budget in env steps; null = g_max x env.max_steps (GRPO's spend with rollout.n = g_max)
    env_step_budget: int | None = None
    #: per-task cap on finished trajectories in one tree
    max_trajectories_per_task: int = 32
    #: when an expanded node's group is trained (DESIGN §2.7): `post_step`, an update after every expansion round
    #: with the groups whose subtree closed in it (no descendant left to expand, or the tree done; Eq.2 rescored
    #: then, old log-probs of sampling time); `post_step_own_round`, an update after every round with the groups it
    #: sampled (the paper's literal form; pair it with `reward_stats=round`); `post_trajectory`, one update once the
    #: batch's trees are done
    update_mode: str = "post_step"
    #: accumulate released groups over rounds until an update has at least this many rows (per-update costs: GPU
    #: recipes)
    min_update_rows: int = 1
    #: safety stop: expansion rounds one update may take (0 = 10 x the per-task budget)
    max_rounds_per_update: int = 0
    #: seed of each reply's sampling, from (sample_seed, tree, node, reply); null = unseeded
    sample_seed: int | None = None
    #: name of the state store's Ray actor
    store_name: str = "threespo_state_store"

    def __post_init__(self):
        if self.step_adv_norm not in STEP_ADV_NORMS:
            raise ValueError(f"algorithm.threespo.step_adv_norm={self.step_adv_norm!r}; valid: {STEP_ADV_NORMS}")
        if self.update_mode not in UPDATE_MODES:
            raise ValueError(f"algorithm.threespo.update_mode={self.update_mode!r}; valid: {UPDATE_MODES}")
        if self.score_diff not in SCORE_DIFFS:
            raise ValueError(f"algorithm.threespo.score_diff={self.score_diff!r}; valid: {SCORE_DIFFS}")
        if self.reward_stats not in REWARD_STATS:
            raise ValueError(f"algorithm.threespo.reward_stats={self.reward_stats!r}; valid: {REWARD_STATS}")
        if self.state_scope not in STATE_SCOPES:
            raise ValueError(f"algorithm.threespo.state_scope={self.state_scope!r}; valid: {STATE_SCOPES}")
        if self.g_max < 1:
            raise ValueError(f"algorithm.threespo.g_max must be >= 1, got {self.g_max}")


@dataclass
class GiGPOConfig(BaseConfig):
    """GiGPO: episode advantage by task group + weight * anchor-state step advantage."""

    #: discount of the step returns grouped by anchor state
    gamma: float = 0.95
    #: A = A_episode + w * A_step
    step_advantage_w: float = 1.0
    #: `mean_std_norm` or `mean_norm`
    mode: str = "mean_std_norm"
    #: eps of `mean_std_norm`
    eps: float = 1e-6

    def __post_init__(self):
        if self.mode not in GIGPO_MODES:
            raise ValueError(f"algorithm.gigpo.mode={self.mode!r}; valid: {GIGPO_MODES}")


@dataclass
class SPAConfig(BaseConfig):
    """SPA-RL (DESIGN §3): step reward r_t = alpha_p * c_t + beta * g_t, c_t from the progress estimator."""

    #: progress estimator folder (`threespo-verl spa train-estimator --out`); required for `algorithm=spa`
    estimator_path: str | None = None
    #: weight of the estimator's progress c_t in r_t
    alpha_p: float = 1.0
    #: weight of the grounding bonus g_t (the action was executable)
    beta: float = 0.5
    #: g_t paid on a state change divided by the episode's length (`normalized`: at most beta per episode, so with
    #: beta < alpha_p every success's first-step advantage exceeds every failure's); `state_change` (paid on every
    #: state change: long failures outscore short successes), or `cap` (at most `grounding_cap` per episode)
    grounding_guard: str = "normalized"
    #: grounded steps paid per episode with `grounding_guard=cap` (the ordering needs beta x cap < alpha_p)
    grounding_cap: int = 5
    #: token window of the serialized trajectory the estimator reads
    max_length: int = 4096
    #: Ray actor name of the estimator worker
    worker_name: str = "threespo_spa_progress"
    #: GPUs of the estimator worker's Ray actor (fractions allowed); on a GPU it runs in bf16, with 0 on the CPU in
    #: fp32. Ray must have them outside verl's resource pools (e.g. `trainer.n_gpus_per_node` one less than the
    #: node's GPUs)
    estimator_num_gpus: float = 0

    def __post_init__(self):
        if self.grounding_guard not in SPA_GUARDS:
            raise ValueError(f"algorithm.spa.grounding_guard={self.grounding_guard!r}; valid: {SPA_GUARDS}")
        if not self.estimator_num_gpus >= 0:
            raise ValueError(f"algorithm.spa.estimator_num_gpus must be >= 0, got {self.estimator_num_gpus}")


@dataclass
class ThreeSPOAlgoConfig(AlgoConfig):
    """verl's AlgoConfig plus this package's algorithm sections (``algorithm.threespo``, ``algorithm.gigpo``)."""

    #: which algorithm runs: `3spo`, `grpo`, `gigpo`, `spa`, `ppo`, `spa_ppo` (set by `algorithm=`; `ppo` and
    #: `spa_ppo` also set verl's `algorithm.adv_estimator=turn_gae`, `algorithm.gamma` and `algorithm.lam` per step:
    #: 1.0/1.0 and 0.99/0.95, `critic.enable=true` and `trainer.critic_warmup`)
    name: str = "3spo"
    #: verl's advantage estimator; one of those ``ADV_ESTIMATORS`` pairs with ``name`` (the group sets the default;
    #: `ppo`/`spa_ppo` also take verl's per-token `gae`)
    adv_estimator: str = "3spo"
    #: rows per optimizer step for every algorithm: an update of R rows takes ceil(R / mini_batch_rows) optimizer
    #: steps (x `actor.ppo_epochs`); unused when `env_steps_per_optimizer_step` is set
    mini_batch_rows: int = 256
    #: optimizer steps by env steps instead of rows, for every algorithm (DESIGN §2.8): one optimizer step per this
    #: many env steps spent, at least one per update (an update's K = max(1, floor(E_total / this) - steps so far));
    #: null = by rows (`mini_batch_rows`)
    env_steps_per_optimizer_step: int | None = None
    threespo: ThreeSPOConfig = field(default_factory=ThreeSPOConfig)
    gigpo: GiGPOConfig = field(default_factory=GiGPOConfig)
    spa: SPAConfig = field(default_factory=SPAConfig)

    def __post_init__(self):
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()
        if self.env_steps_per_optimizer_step is not None and self.env_steps_per_optimizer_step < 1:
            raise ValueError("algorithm.env_steps_per_optimizer_step must be >= 1 or null, got "
                             f"{self.env_steps_per_optimizer_step}")
        want = ADV_ESTIMATORS.get(self.name)
        if want is None:
            raise ValueError(f"algorithm.name={self.name!r}; valid: {', '.join(ADV_ESTIMATORS)}")
        got = str(getattr(self.adv_estimator, "value", self.adv_estimator))
        if got not in want:
            if len(want) == 1:
                raise ValueError(f"algorithm.name={self.name} trains with algorithm.adv_estimator={want[0]}, got "
                                 f"{got}: select the algorithm with the config group algorithm={self.name}, which "
                                 f"sets both, instead of overriding one of them")
            raise ValueError(f"algorithm.name={self.name} trains with algorithm.adv_estimator={' or '.join(want)} "
                             f"(default {want[0]}: GAE over turns; gae: verl's GAE over tokens), got {got}: select the "
                             f"algorithm with algorithm={self.name} and, for verl's, add algorithm.adv_estimator=gae")


@dataclass
class EnvConfig(BaseConfig):
    """The ``env`` node: which environment and how the agent sees it (defaults: household's)."""

    #: `household`, `alfworld`, `webshop` (set by `env=`), or the import path `package.module:ClassName` of your own
    #: env (`docs/custom_env.md`)
    name: str = "household"
    #: episode horizon H
    max_steps: int = 30
    #: previous (observation, action) pairs in the prompt
    history_length: int = 2
    #: data folder; null = `$THREESPO_DATA/<env>`
    data_dir: str | None = None
    #: task split sampled for training
    train_split: str = "train"
    #: fixed evaluation panel: one of the env's splits (webshop also `test128`; alfworld `valid_seen`, in
    #: distribution, or `valid_unseen`, out of distribution)
    eval_panel: str = "test"
    #: prepend one worked example to every prompt (small models need it)
    few_shot: bool = False
    #: ask for `<think>` reasoning before the action; false = the action block only
    reasoning: bool = True
    #: cap on generated tokens per step (null = `rollout.response_length`); required by `ppo`/`spa_ppo`, whose
    #: `rollout.response_length` is the budget of a whole episode's row
    max_tokens_per_step: int | None = None
    #: env worker processes per agent-loop worker (env work off the event loop, on other cores; a crashed worker is
    #: restarted and its call retried once); 0 = in the agent-loop process, `auto` = the CPU cores shared among the
    #: agent-loop workers
    num_workers: Any = 0
    #: an env worker holding more resident memory (MB) is restarted when idle, before it builds a new environment
    #: (its parked environments are rebuilt by replay when next used); null = never. TextWorld's planner keeps
    #: ~3-4 MB per ALFWorld game load
    max_worker_mb: int | None = None
    #: live environments parked per agent-loop worker at search-tree nodes
    max_parked_envs: int = 1024
    #: decode only `<action>A</action>` with A admissible (vLLM structured outputs; for small models)
    constrain_actions: bool = False
    #: the outcome reward of every algorithm: `won` (task success 0/1) or `score` (the env's final score in [0, 1],
    #: WebShop's purchase score)
    outcome: str = "won"
    #: subtracted from the step reward of an invalid action, for every algorithm (3SPO's Eq.2 and the step rows of
    #: GRPO/GiGPO/SPA)
    invalid_action_penalty: float = 0.1

    def __post_init__(self):
        if self.max_steps < 1:
            raise ValueError(f"env.max_steps must be >= 1, got {self.max_steps}")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"env.outcome={self.outcome!r}; valid: {OUTCOMES}")
        if self.num_workers != "auto" and not (isinstance(self.num_workers, int) and self.num_workers >= 0):
            raise ValueError(f"env.num_workers={self.num_workers!r}: use auto, 0 (environments in the agent-loop "
                             "process) or a number of env worker processes per agent-loop worker")
        if self.max_worker_mb is not None and self.max_worker_mb <= 0:
            raise ValueError(f"env.max_worker_mb must be > 0 or null, got {self.max_worker_mb}")
        if self.max_parked_envs < 1:
            raise ValueError(f"env.max_parked_envs must be >= 1, got {self.max_parked_envs}")

    def make_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``envs.make``."""
        return {"max_steps": self.max_steps, **({"data_dir": self.data_dir} if self.data_dir else {})}


@dataclass
class RunBudget:
    """When a run validates and stops in env steps (``trainer.*`` keys of this package; DESIGN §2.8). Env steps are
    the actions taken in environments (3SPO: one per distinct child; episodes: one per step), counted the same for
    every algorithm (``explore/cumulative_env_steps``)."""

    #: stop once the run has spent this many env steps (the step that reaches it is the last; 3SPO releases every
    #: pending group in it); null = `trainer.total_training_steps` alone ends the run (it stays a cap)
    total_env_steps: int | None = None
    #: validate after the first update at or past every multiple of this many env steps (and at the end of an
    #: env-step budget); null = verl's `trainer.test_freq` (in updates)
    val_every_env_steps: int | None = None

    def __post_init__(self):
        for key in ("total_env_steps", "val_every_env_steps"):
            v = getattr(self, key)
            if v is not None and v < 1:
                raise ValueError(f"trainer.{key} must be >= 1 or null, got {v}")


def resolve_budget(trainer_node: Any) -> RunBudget:
    """``trainer.total_env_steps`` / ``trainer.val_every_env_steps`` of ``config.trainer`` as a ``RunBudget``."""
    get = trainer_node.get if hasattr(trainer_node, "get") else (lambda k, d=None: getattr(trainer_node, k, d))
    return RunBudget(**{f: get(f, None) for f in RunBudget.__dataclass_fields__})


def resolve_algorithm(node: Any) -> ThreeSPOAlgoConfig:
    """``config.algorithm`` as a ``ThreeSPOAlgoConfig`` (a node with this package's ``_target_``, or the dataclass)."""
    if isinstance(node, ThreeSPOAlgoConfig):
        return node
    from verl.utils.config import omega_conf_to_dataclass

    algo = omega_conf_to_dataclass(node)
    if not isinstance(algo, ThreeSPOAlgoConfig):
        raise TypeError(f"config.algorithm resolved to {type(algo).__name__}: compose the config with "
                        "threespo_trainer (its algorithm groups set _target_ to ThreeSPOAlgoConfig)")
    return algo


def resolve_env(node: Any) -> EnvConfig:
    """The ``env`` node (or ``data.threespo_env``, its copy for verl's workers) as an ``EnvConfig``."""
    if isinstance(node, EnvConfig):
        return node
    from omegaconf import DictConfig, OmegaConf

    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    unknown = sorted(set(values) - set(EnvConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"unknown env key(s) {unknown}; valid: {sorted(EnvConfig.__dataclass_fields__)}")
    return EnvConfig(**values)
