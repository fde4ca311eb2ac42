"""Typed configuration of the plugin's algorithms, as verl sees ``config.algorithm``.

verl turns ``config.algorithm`` into a dataclass through its ``_target_``. The stock ``AlgoConfig`` rejects unknown
keys, so the YAML of this package points ``algorithm._target_`` at ``ThreeSPOAlgoConfig``: verl's ``AlgoConfig``
plus one sub-config per algorithm of this package. Every 3SPO constant of DESIGN §2 is a field of
``ThreeSPOConfig`` (Hydra key ``algorithm.threespo.<field>``) with the paper's default.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from verl.base_config import BaseConfig
from verl.trainer.config.algorithm import AlgoConfig

STEP_ADV_NORMS = ("mean_std", "mean")
SCORE_DIFFS = ("untruncated", "literal")
STATE_SCOPES = ("task", "global")
UPDATE_MODES = ("post_step", "post_trajectory")
REWARD_STATS = ("round", "update")
#: the advantage estimator of each algorithm (its config group, config/algorithm/NAME.yaml, sets both keys)
ADV_ESTIMATORS = {"3spo": "3spo", "grpo": "grpo", "gigpo": "gigpo", "spa": "spa", "ppo": "gae", "spa_ppo": "gae"}
GIGPO_MODES = ("mean_std_norm", "mean_norm")
SPA_GUARDS = ("normalized", "state_change", "cap")  # = threespo_verl.algos.spa.GUARD_MODES


@dataclass
class ThreeSPOConfig(BaseConfig):
    """3SPO constants (DESIGN §2); defaults are the paper's."""

    # Eq.1 state score S(s) = exp(-lambda(t) SR(s)) * 1{N_fail < xi or SR > zeta}, lambda(t) = alpha log t
    alpha: float = 50.0
    xi: float = 10.0
    zeta: float = 0.1
    eps: float = 1e-6
    # Eq.2 step reward: w = 0.5 exp(-omega_k N_total(s_t)); the invalid-action penalty is env.invalid_action_penalty
    omega_k: float = 0.1
    # Eq.2 difference term: "untruncated" exp(-lambda SR) (default) or "literal" (the truncated S of Eq.1)
    score_diff: str = "untruncated"
    # Eq.2's statistics: "update" (those committed when the update's advantages are computed: with post_trajectory,
    # every trajectory of the update's trees; default) or "round" (the snapshot before the expansion round, the paper's)
    reward_stats: str = "update"
    # statistics per (task, state) ("task", default) or pooled over tasks ("global", an ablation)
    state_scope: str = "task"
    # Eq.3 branching n(s) = ceil(G_max S(s))
    g_max: int = 8
    # Eq.4 step advantage within the children of one expanded node
    step_adv_norm: str = "mean_std"
    adv_eps: float = 1e-6
    merge_identical_states: bool = False
    # §2.5 exploration budget per task: env steps (null -> G x H = rollout.n x env.max_steps) and trajectories
    env_step_budget: int | None = None
    max_trajectories_per_task: int = 32
    # §2.7 one actor update per finished batch of trees (post_trajectory, default) or per expansion round (post_step,
    # the paper's)
    update_mode: str = "post_trajectory"
    min_update_rows: int = 1
    # safety stop: rounds one update may take before giving up (0 = 10 x the per-task budget)
    max_rounds_per_update: int = 0
    # seed of each branch's sampling, derived from (sample_seed, task, node, branch); null = unseeded
    sample_seed: int | None = None
    # name of the state store's Ray actor
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

    # discount of the step returns used by the anchor-state groups
    gamma: float = 0.95
    # weight w of the step advantage: A = A_episode + w * A_step
    step_advantage_w: float = 1.0
    # "mean_std_norm": (x - mean) / (std + eps); "mean_norm": x - mean
    mode: str = "mean_std_norm"
    eps: float = 1e-6

    def __post_init__(self):
        if self.mode not in GIGPO_MODES:
            raise ValueError(f"algorithm.gigpo.mode={self.mode!r}; valid: {GIGPO_MODES}")


@dataclass
class SPAConfig(BaseConfig):
    """SPA-RL (DESIGN §3): step reward r_t = alpha_p * c_t + beta * g_t, c_t from the progress estimator."""

    # folder of the progress estimator (`threespo-verl spa train-estimator --out`); required for algorithm=spa
    estimator_path: str | None = None
    # weight of the estimator's progress c_t
    alpha_p: float = 1.0
    # weight of the grounding bonus g_t (the action was executable)
    beta: float = 0.5
    # anti-farming guard of g_t (threespo_verl.algos.spa.guarded_grounding): "normalized" (default: paid on a state
    # change, divided by the episode's length, so an episode earns at most beta and, while beta < alpha_p, every
    # success's first-step advantage exceeds every failure's), "state_change" (paid on every state change: long
    # failures outscore short successes, navigation always changes the state) or "cap" (the first grounding_cap)
    grounding_guard: str = "normalized"
    # with grounding_guard=cap: grounded steps paid per episode (the ordering above needs beta * cap < alpha_p)
    grounding_cap: int = 5
    # token window of the estimator's serialized trajectory (old turns are dropped whole beyond it)
    max_length: int = 4096
    # name of the estimator's Ray actor
    worker_name: str = "threespo_spa_progress"
    # GPUs of the estimator's Ray actor (fractions allowed; 0 = CPU); on a GPU the estimator runs in bf16
    estimator_num_gpus: float = 0.0

    def __post_init__(self):
        if self.grounding_guard not in SPA_GUARDS:
            raise ValueError(f"algorithm.spa.grounding_guard={self.grounding_guard!r}; valid: {SPA_GUARDS}")
        if not self.estimator_num_gpus >= 0:
            raise ValueError(f"algorithm.spa.estimator_num_gpus must be >= 0, got {self.estimator_num_gpus}")


@dataclass
class ThreeSPOAlgoConfig(AlgoConfig):
    """verl's AlgoConfig plus this package's algorithm sections (``algorithm.threespo``, ``algorithm.gigpo``)."""

    #: which of this package's algorithms the run uses: 3spo | grpo | gigpo | spa | ppo | spa_ppo
    name: str = "grpo"
    #: verl's advantage estimator; must be the one ``ADV_ESTIMATORS`` pairs with ``name`` (the group sets both)
    adv_estimator: str = "grpo"
    #: rows per optimizer step for every algorithm: an update of R rows takes ceil(R / mini_batch_rows) steps
    mini_batch_rows: int = 256
    threespo: ThreeSPOConfig = field(default_factory=ThreeSPOConfig)
    gigpo: GiGPOConfig = field(default_factory=GiGPOConfig)
    spa: SPAConfig = field(default_factory=SPAConfig)

    def __post_init__(self):
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()
        want = ADV_ESTIMATORS.get(self.name)
        if want is None:
            raise ValueError(f"algorithm.name={self.name!r}; valid: {', '.join(ADV_ESTIMATORS)}")
        got = str(getattr(self.adv_estimator, "value", self.adv_estimator))
        if got != want:
            raise ValueError(f"algorithm.name={self.name} trains with algorithm.adv_estimator={want}, got {got}: "
                             f"select the algorithm with the config group algorithm={self.name}, which sets both, "
                             f"instead of overriding one of them")
