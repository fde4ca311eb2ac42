"""SPA (Stepwise Progress Attribution, arXiv 2505.20732; DESIGN §3): the math, pure numpy, no verl.

A progress estimator reads one scalar c_t at the last token of every action turn of a serialized trajectory and is
trained so that the contributions add up to the final reward R in [0, 1]::

    L(tau) = (R - sum_t c_t)^2                                                     (progress loss)

Online RL then uses a dense step reward, a grounding bonus g_t in {0, 1} for executable actions (guarded so that it
cannot be farmed: ``guarded_grounding``), and a group baseline at each step index::

    r_t  = alpha_p * c_t + beta * g_t                    [alpha_p = 1, beta = 0.5]   (step reward)
    G_t  = sum_{k >= t} r_k                              (reward-to-go within the trajectory)
    A_t  = G_t - mean_{tau' in task, has step t} G_t(tau')                           (``spa`` advantage)

The torch side (estimator, serialization, training) lives in ``threespo_verl.spa.progress``.
"""

from __future__ import annotations

import re

import numpy as np

from threespo_verl.algos.gigpo import discounted_returns
from threespo_verl.algos.grouping import combine_ids, group_normalize
from threespo_verl.envs.base import normalize_command

#: environments ``grounding`` knows
GROUNDING_ENVS = ("alfworld", "household", "webshop")
#: ALFWorld's feedback for a command the engine did not execute
NOTHING_HAPPENS = "Nothing happens."
#: the admissible-action entry of WebShop's search page (any non-empty ``search[...]`` is available there);
#: the same text as ``threespo_verl.envs.webshop.env.SEARCH_PLACEHOLDER`` (checked by a test)
WEBSHOP_SEARCH_PLACEHOLDER = "search[<your query>]"
_WEBSHOP_ACTION = re.compile(r"^(search|click)\[(.*)\]$", re.IGNORECASE | re.DOTALL)
#: anti-farming guards of the grounding bonus (``algorithm.spa.grounding_guard``); the first is the default
GUARD_MODES = ("normalized", "state_change", "cap")
DEFAULT_GUARD = GUARD_MODES[0]


def readout_positions(assistant_mask) -> np.ndarray:
    """Token index of the last token of each contiguous run of 1s in a 0/1 ``assistant_mask`` (one serialized
    trajectory): ``{i : m_i = 1 and (i = n-1 or m_{i+1} = 0)}``, ascending. With the mask covering exactly the
    assistant turns this is one readout per action turn; the estimator reads c_t there."""
    m = np.asarray(assistant_mask)
    if m.ndim != 1:
        raise ValueError(f"assistant_mask must be 1-D (one trajectory), got shape {m.shape}")
    if m.size and not np.isin(m, (0, 1)).all():
        raise ValueError("assistant_mask must hold only 0 and 1")
    m = m.astype(bool)
    nxt = np.r_[m[1:], False]
    return np.flatnonzero(m & ~nxt)


def progress_loss(c, R: float) -> float:
    """L = (R - sum_t c_t)^2 for one trajectory's per-step contributions ``c`` and final reward ``R``."""
    c = np.asarray(c, dtype=np.float64)
    if c.ndim != 1:
        raise ValueError(f"c must be 1-D (one value per step), got shape {c.shape}")
    return float((float(R) - c.sum()) ** 2)


def grounding(env_name: str, action: str | None, feedback_text: str, admissible_actions, valid: bool) -> float:
    """g_t in {0, 1}: whether the step's action was executable (DESIGN §3).

    * ``household``: the action is one of the state's admissible actions (compared as the env compares them,
      lower case, single spaces);
    * ``alfworld``: the feedback is not ``"Nothing happens."`` (the paper's test, as in SPA's released code);
    * ``webshop``: the action is available on the page: a listed ``click[...]`` (case- and space-insensitive, as
      WebShop matches clickables), or a non-empty ``search[...]`` where the search box is listed.

    ``g = 0`` whenever the environment reported the step invalid (``valid=False``) or the reply had no action
    (``action=None``), whatever the test says. ``admissible_actions`` are those of the state the action was taken in.
    """
    if env_name not in GROUNDING_ENVS:
        raise ValueError(f"no grounding rule for env {env_name!r}; known: {', '.join(GROUNDING_ENVS)}")
    if action is None or not valid:
        return 0.0
    if env_name == "alfworld":
        return float(str(feedback_text).strip() != NOTHING_HAPPENS)
    if env_name == "household":
        return float(normalize_command(action) in {normalize_command(a) for a in admissible_actions})
    return float(_webshop_available(action, admissible_actions))


def _webshop_available(action: str, admissible_actions) -> bool:
    m = _WEBSHOP_ACTION.match(action.strip())
    if m is None:
        return False
    kind, arg = m.group(1).lower(), " ".join(m.group(2).lower().split())
    if kind == "search":
        return bool(arg) and WEBSHOP_SEARCH_PLACEHOLDER in admissible_actions
    listed = set()
    for a in admissible_actions:
        ma = _WEBSHOP_ACTION.match(a.strip())
        if ma and ma.group(1).lower() == "click":
            listed.add(" ".join(ma.group(2).lower().split()))
    return arg in listed


def guarded_grounding(g, state_changed=None, mode: str = DEFAULT_GUARD, cap: int | None = None) -> np.ndarray:
    """The grounding bonus g'_t of one *whole* episode's steps (T = ``len(g)`` steps), guarded against farming.

    * ``normalized`` (default): g'_t = g_t * 1{the step changed the state} / T. An episode's grounding is the
      *fraction* of its steps that were executable and changed the state, so it earns at most ``beta`` in total
      whatever its length, and executable no-ops ("look", re-clicking a selected option) earn nothing;
    * ``state_change``: g'_t = g_t * 1{the step changed the state}. Not safe: navigation ("go to X", WebShop's page
      moves) always changes the state, so the total grows with the episode's length and, with the undiscounted
      reward-to-go, long failures outscore short successes (measured: two 12-step successes get A_0 = -8.56,
      six 50-step time-outs +1.9 .. +3.4);
    * ``cap``: g'_t = g_t * 1{sum_{k <= t} g_k <= cap} (the first ``cap`` grounded steps are paid). Bounded by
      ``cap``, but safe only when ``beta * cap`` is below the outcome's weight (see below), i.e. cap <= 1 at the
      default weights.

    **First-step ordering** (the guard's guarantee, DESIGN §3). Take the episodes of one task (each with T >= 1
    steps), outcome R in {0, 1} (``env.outcome=won``), per-step contributions whose sum is within delta of R
    (|sum_t c_t - R| <= delta; delta = 0 for an exact estimator), g_t in {0, 1}, step rewards
    r_t = alpha_p c_t + beta g'_t (alpha_p > 0, beta >= 0) and the ``spa`` advantage. A_0 = G_0 - (one mean shared
    by the whole group: every episode has a step 0), so A_0 orders the episodes as G_0 = alpha_p sum_t c_t +
    beta sum_t g'_t does. Under ``normalized`` 0 <= sum_t g'_t <= 1, hence G_0(success) >= alpha_p (1 - delta) and
    G_0(failure) <= alpha_p delta + beta: **if alpha_p (1 - 2 delta) > beta, every success's first-step advantage
    exceeds every failure's**, for any lengths, progress values and grounding flags (shorter successes are not even
    needed). The defaults alpha_p = 1, beta = 0.5 satisfy it for delta < 0.25. ``cap`` gives the same with
    beta * cap in place of beta; ``state_change`` gives no bound at all. Outside this domain: with a graded outcome
    (WebShop's score) a failure's R can come arbitrarily close to 1 and no grounding weight keeps the order; an
    invalid-action penalty p on the step rows lowers a success's G_0 by p per invalid step, so the order then holds
    while p x (the success's invalid steps) < alpha_p (1 - 2 delta) - beta.
    """
    g = np.asarray(g, dtype=np.float64)
    if g.ndim != 1:
        raise ValueError(f"g must be 1-D (one episode's steps), got shape {g.shape}")
    if mode in ("state_change", "normalized"):
        if state_changed is None:
            raise ValueError(f"mode={mode!r} needs state_changed (info['state_changed'] of each step)")
        changed = np.asarray(state_changed, dtype=bool)
        if changed.shape != g.shape:
            raise ValueError(f"{g.size} grounding values but {changed.size} state_changed flags")
        paid = g * changed
        return paid / g.size if mode == "normalized" and g.size else paid
    if mode == "cap":
        if cap is None or int(cap) < 0:
            raise ValueError(f"mode='cap' needs cap >= 0 (grounded steps paid per episode), got {cap!r}")
        return g * (np.cumsum(g > 0) <= int(cap))
    raise ValueError(f"mode must be one of {GUARD_MODES}, got {mode!r}")


def spa_step_rewards(c, g, alpha_p: float = 1.0, beta: float = 0.5) -> np.ndarray:
    """r_t = alpha_p * c_t + beta * g_t   (elementwise; ``g`` is the guarded grounding bonus)."""
    c = np.asarray(c, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    if c.shape != g.shape:
        raise ValueError(f"c has shape {c.shape} but g has shape {g.shape}")
    return alpha_p * c + beta * g


def spa_advantage(step_rewards, task_ids, traj_ids, step_index, valid=None) -> np.ndarray:
    """A_t = G_t - mean(G_t over the trajectories of the same task that have a step t), G_t = sum_{k >= t} r_k.

    Rows are steps in any order and any mix of tasks and trajectories. A trajectory is (task_id, traj_id), so
    trajectory ids only need to be unique within a task; its steps are ordered by ``step_index`` (one row per step
    index). The baseline group of a row is (task_id, step_index): trajectories that ended before step t have no row
    there and take no part in it. A row alone in its group (only one trajectory of its task reached that step) gets
    A = 0: there is no baseline to compare with (as for singleton groups in GRPO/GiGPO/3SPO).

    Padding rows (``task_id`` None, or ``valid=False``) get 0 and never join a group or a trajectory's G_t.
    """
    r = np.asarray(step_rewards, dtype=np.float64)
    n = r.shape[0]
    task = np.asarray(task_ids, dtype=object)
    if task.shape != (n,):
        raise ValueError(f"{n} rewards but {task.shape[0]} task ids")
    keep = np.array([t is not None for t in task], dtype=bool)
    if valid is not None:
        keep &= np.asarray(valid, dtype=bool)
    out = np.zeros(n)
    if not keep.any():
        return out
    task_k, _ = combine_ids(task[keep])
    traj_k, _ = combine_ids(task_k, np.asarray(traj_ids)[keep])
    step_k = np.asarray(step_index)[keep]
    to_go = discounted_returns(r[keep], traj_k, step_k, gamma=1.0)
    out[keep] = group_normalize(to_go, combine_ids(task_k, step_k)[0], norm="mean")
    return out


def leave_one_out_values(final_rewards, task_ids, n_steps) -> list[np.ndarray]:
    """Ablation: the per-step values of SPA's *released code* (``prm/rl_data_org.py``), not of the paper.

    That script overwrites the estimator's per-step values of trajectory i by one number repeated on all its steps,
    its final reward minus the mean final reward of the *other* trajectories of the same task::

        v_i = R_i - mean_{j != i, task(j) = task(i)} R_j        (v_i = R_i when i is its task's only trajectory)

    (the singleton rule is the released code's; it differs from ``spa_advantage``, which gives 0). Returns one
    array of length ``n_steps[i]`` per trajectory, in input order.
    """
    R = np.asarray(final_rewards, dtype=np.float64)
    lengths = np.asarray(n_steps, dtype=np.int64)
    if R.ndim != 1 or lengths.shape != R.shape or len(task_ids) != R.size:
        raise ValueError("final_rewards, task_ids and n_steps need one entry per trajectory")
    if np.any(lengths < 0):
        raise ValueError("n_steps must be >= 0")
    task, k = combine_ids(np.asarray(task_ids, dtype=object)) if R.size else (np.zeros(0, np.int64), 0)
    sums = np.bincount(task, weights=R, minlength=k)
    counts = np.bincount(task, minlength=k)
    others = counts[task] - 1
    mean_others = np.divide(sums[task] - R, others, out=np.zeros_like(R), where=others > 0)
    v = np.where(others > 0, R - mean_others, R)
    return [np.full(int(n), float(x)) for x, n in zip(v, lengths)]
