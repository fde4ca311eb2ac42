"""How many optimizer steps an update takes, by one rule for every algorithm (DESIGN §2.8), its rows split evenly into
K mini-batches of whole micro-batches (the critic's the same K x b):

* by rows (default): K = ceil(R / ``algorithm.mini_batch_rows``) for an update of R rows (``minibatch_plan``);
* by env steps (``algorithm.env_steps_per_optimizer_step`` = E): K = max(1, floor(E_total / E) - S), with E_total
  the run's env steps including this update's and S the optimizer steps taken so far (``steps_by_env_steps``), so
  every algorithm takes one optimizer step per E env steps, and an update at least one.

(x ``actor.ppo_epochs``.)"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

from transfer_queue import KVBatchMeta

from threespo_verl.verl_glue.verl_compat import mini_batch_size


def minibatch_plan(rows: int, rows_per_step: int, unit: int = 1) -> tuple[int, int]:
    """(K, b): an update of ``rows`` real rows takes K = ceil(rows / rows_per_step) optimizer steps over mini-batches
    of b rows, b = ceil(rows / K) rounded up to a multiple of ``unit`` (dp x micro-batch x rollout.n); the batch is
    padded to K x b rows (padding rows carry no loss). ``rows_per_step`` is ``algorithm.mini_batch_rows``; when
    ``unit`` exceeds it, b = unit (a mini-batch cannot be smaller than one micro-batch per rank).

    >>> minibatch_plan(600, 256), minibatch_plan(2, 256), minibatch_plan(256, 256), minibatch_plan(5, 256, 4)
    ((3, 200), (1, 2), (1, 256), (1, 8))
    """
    if rows_per_step < 1 or unit < 1:
        raise ValueError(f"mini_batch_rows and the batch unit must be >= 1, got {rows_per_step}, {unit}")
    rows = max(int(rows), 1)
    k = -(-rows // int(rows_per_step))
    b = -(-rows // k)
    b = -(-b // unit) * unit
    return k, b


def steps_by_env_steps(env_steps_total: int, steps_so_far: int, env_steps_per_step: int) -> int:
    """K of the env-step rule: the optimizer steps that bring the run to floor(E_total / E), at least one.

    >>> steps_by_env_steps(140, 0, 48), steps_by_env_steps(290, 2, 48), steps_by_env_steps(300, 6, 48)
    (2, 4, 1)
    """
    if env_steps_per_step < 1:
        raise ValueError(f"algorithm.env_steps_per_optimizer_step must be >= 1, got {env_steps_per_step}")
    return max(1, int(env_steps_total) // int(env_steps_per_step) - int(steps_so_far))


def plan_for_steps(rows: int, k: int, unit: int = 1) -> tuple[int, int]:
    """(K, b) for an update of ``rows`` rows in ``k`` optimizer steps: b = ceil(rows / K) rounded up to a multiple
    of ``unit``; K is cut to the number of mini-batches of ``unit`` rows the update can fill (a step needs a real
    row), so K <= ceil(rows / unit).

    >>> plan_for_steps(140, 2), plan_for_steps(2, 3), plan_for_steps(10, 3, 4)
    ((2, 70), (2, 1), (3, 4))
    """
    if k < 1 or unit < 1:
        raise ValueError(f"optimizer steps and the batch unit must be >= 1, got {k}, {unit}")
    rows = max(int(rows), 1)
    k = min(int(k), -(-rows // unit))
    b = -(-rows // k)
    b = -(-b // unit) * unit
    return k, b


class MiniBatchMixin:
    """The update's mini-batch plan (mixed into ``ThreeSPOTrainer``; ``_mb_plan`` is set by
    ``_get_required_batch_multiple`` and read by the actor and critic updates)."""

    def _batch_unit(self, dp_size: int) -> int:
        """Rows a mini-batch must be a multiple of: whole micro-batches on every dp rank for the actor update and the
        log-prob passes (with dynamic batch sizes micro-batches are cut by tokens and only dp counts), and whole
        ``rollout.n`` groups (verl multiplies the mini-batch size by rollout.n)."""
        arr = self.config.actor_rollout_ref

        def micro(node, key):
            if node.get("use_dynamic_bsz", False) or node.get("log_prob_use_dynamic_bsz", False):
                return 1
            return int(node.get(key, None) or 1)

        unit = math.lcm(dp_size * micro(arr.actor, "ppo_micro_batch_size_per_gpu"), int(arr.rollout.n))
        unit = math.lcm(unit, dp_size * micro(arr.rollout, "log_prob_micro_batch_size_per_gpu"))
        if self.use_reference_policy:
            unit = math.lcm(unit, dp_size * micro(arr.ref, "log_prob_micro_batch_size_per_gpu"))
        if self.use_critic:
            unit = math.lcm(unit, dp_size * micro(self.config.critic, "ppo_micro_batch_size_per_gpu"))
        return unit

    def _plan_rows(self, dp_size: int) -> int:
        """The batch is padded to K x b rows (``minibatch_plan`` or ``plan_for_steps``): K optimizer steps of b rows
        each. ``_update_rows`` / ``_update_env_steps`` are set by ``_balance_batch`` for the update at hand."""
        rows = getattr(self, "_update_rows", None) or 1
        per = self.algo_cfg.env_steps_per_optimizer_step
        if per is None:
            self._mb_plan = minibatch_plan(rows, self.mini_batch_rows, self._batch_unit(dp_size))
        else:
            total = int(self.counters["env_steps"]) + int(getattr(self, "_update_env_steps", 0))
            k = steps_by_env_steps(total, self.counters["planned_optimizer_steps"], per)
            self._mb_plan = plan_for_steps(rows, k, self._batch_unit(dp_size))
        k, b = self._mb_plan
        return k * b

    @contextlib.contextmanager
    def _planned_mini_batches(self, node, batch: KVBatchMeta) -> Iterator[tuple[int, int]]:
        """verl sizes mini-batches as ``node.ppo_mini_batch_size`` x rollout.n rows (node: the actor's or the
        critic's config); inside the block that is b of this update's plan (``minibatch_plan``), so the update takes
        K = len(batch) / b optimizer steps per epoch. Yields (K, b); the configured size is restored afterwards
        (``verl_compat.mini_batch_size``)."""
        n = int(self.config.actor_rollout_ref.rollout.n)
        k, b = self._mb_plan or (1, len(batch))
        if k * b != len(batch):
            raise AssertionError(f"update batch of {len(batch)} rows does not match its plan {k} x {b}")
        with mini_batch_size(self.config, node, b // n):  # why the config, not the batch: see verl_compat
            yield k, b

    def _actor_update_metrics(self, k: int, b: int, rows: int) -> dict[str, float]:
        """Counts the update's optimizer steps; its ``actor/*`` plan metrics."""
        steps = k * int(self.config.actor_rollout_ref.actor.ppo_epochs)
        self.counters["optimizer_steps"] += steps
        self.counters["planned_optimizer_steps"] += k
        return {"actor/optimizer_steps": steps, "actor/update_rows": rows, "actor/mini_batch_rows": b,
                "actor/cumulative_optimizer_steps": self.counters["optimizer_steps"]}
