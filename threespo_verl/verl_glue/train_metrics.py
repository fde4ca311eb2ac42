"""The trainer's metrics: 3SPO's per-round counts and their per-update summary (``explore/*``), the episode
metrics of GRPO / GiGPO / SPA / PPO updates (``episode/*``, ``trajectory/*``), the validation success rates
(``val-core/<env>/success[/<type>]``), the actor/critic update counts and the rollout probe (``probe/*``). Every
algorithm logs ``train/episode_success`` over its finished trajectories (DESIGN §2.8)."""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from typing import Any

import numpy as np
from transfer_queue import KVBatchMeta

from threespo_verl.store.state_store import key_hash
from threespo_verl.verl_glue import metrics_log
from threespo_verl.verl_glue.step_row import StepRow, step_rows
from threespo_verl.verl_glue.verl_compat import extra_fields, real_rows

METRICS_FILE = "metrics.jsonl"


def new_round_metrics() -> dict[str, Any]:
    return {"n_hist": [], "pruned": 0, "expanded": 0, "singleton": 0, "failed": 0, "env_steps": 0, "env_failures": 0,
            "llm_calls": 0, "replayed": 0, "prompt_truncated": 0, "skipped_roots": 0, "r_novel": [],
            "r_score_diff": [], "r_success": [], "r_penalty": [],
            "reward": [], "invalid": [], "states": set(), "ended": []}


def val_success_metrics(env_cfg, data_sources, reward_extra_infos_dict) -> dict[str, float]:
    """The success rate over the whole validation panel and per task type (data_source = ``<env>/<task type>``)
    under ``val-core/<env>/success[/<type>]``; nothing without a per-sample ``won``."""
    out: dict[str, float] = {}
    won = reward_extra_infos_dict.get("won", [])
    if won and len(won) == len(data_sources):
        env = str(env_cfg.name)
        per_type = defaultdict(list)
        for src, w in zip(data_sources, won):
            if w is not None:
                per_type[str(src).split("/", 1)[-1]].append(float(w))
        allv = [w for v in per_type.values() for w in v]
        if allv:
            out[f"val-core/{env}/success"] = float(np.mean(allv))
            out[f"val-aux/{env}/episodes"] = len(allv)
        for ttype, v in sorted(per_type.items()):
            out[f"val-core/{env}/success/{ttype}"] = float(np.mean(v))
    return out


def episode_env_steps(extras: list[StepRow]) -> int:
    """Env steps of an update's episode rows: one per step row, a trajectory row's whole episode."""
    return sum(e.step_index + 1 if e.mode == "trajectory" else 1 for e in extras)


class MetricsMixin:
    """The trainer's metric helpers (mixed into ``ThreeSPOTrainer``; they update its ``counters`` and
    ``unique_states``)."""

    def _explore_metrics(self, acc: dict[str, list], rounds: int, n_rows: int) -> dict[str, float]:
        rounds_m = [r for r in acc.get("n_hist", [])]
        n_hist = [n for r in rounds_m for n in r]
        flat = {k: [x for r in acc.get(k, []) for x in r] for k in ("r_novel", "r_score_diff", "r_success",
                                                                      "r_penalty", "reward", "invalid")}
        nodes = sum(acc.get("expanded", [])) + sum(acc.get("pruned", []))
        env_steps = sum(acc.get("env_steps", []))
        self.counters["env_steps"] += env_steps
        self.counters["llm_calls"] += sum(acc.get("llm_calls", []))
        self.counters["replayed_steps"] += sum(acc.get("replayed", []))
        self.counters["rounds"] += rounds
        out: dict[str, float] = {
            "explore/rounds": rounds,
            "explore/update_rows": n_rows,
            "explore/nodes": nodes,
            "explore/pruned_rate": sum(acc.get("pruned", [])) / max(1, nodes),
            "explore/singleton_group_rate": sum(acc.get("singleton", [])) / max(1, sum(acc.get("expanded", []))),
            "explore/failed_nodes": sum(acc.get("failed", [])),
            "explore/skipped_truncated_roots": sum(acc.get("skipped_roots", [])),
            "explore/prompt_truncated_nodes": sum(acc.get("prompt_truncated", [])),
            "explore/env_steps": env_steps,
            "explore/llm_calls": sum(acc.get("llm_calls", [])),
            "explore/replayed_env_steps": sum(acc.get("replayed", [])),
            "explore/replayed_fraction": sum(acc.get("replayed", [])) / max(1, env_steps),
            "env/failures": sum(acc.get("env_failures", [])),
            "explore/unique_states": len({h for r in acc.get("state_hashes", []) for h in r}),
            "explore/new_states": sum(acc.get("new_states", [])),
            "explore/cumulative_unique_states": len(self.unique_states),
            "explore/cumulative_env_steps": self.counters["env_steps"],
            "explore/cumulative_llm_calls": self.counters["llm_calls"],
            "explore/trees_finished": self.counters["trees_finished"],
        }
        if acc.get("old_log_prob_s"):  # the old-log-prob passes over each round's rows, at sampling time
            out["timing_s/round_old_log_prob"] = float(sum(acc["old_log_prob_s"]))
        waits = [w for r in acc.get("row_wait_rounds", []) for w in r]
        if waits:  # rounds between a row's sampling and its update (its old log-probs are of sampling time)
            out["explore/row_wait_rounds"] = float(np.mean(waits))
            out["explore/row_wait_rounds_median"] = float(np.median(waits))
            out["explore/row_wait_rounds_p90"] = float(np.percentile(waits, 90))
            out["explore/row_wait_rounds_max"] = float(max(waits))
        for n in range(self.params.g_max + 1):
            out[f"explore/n_hist/{n}"] = sum(1 for x in n_hist if x == n)
        if n_hist:
            out["explore/n_mean"] = float(np.mean(n_hist))
        for k, v in flat.items():
            if v:
                out[f"explore/reward/{k}_mean"] = float(np.mean(v))
        solved = acc.get("tree_solved", [])
        if solved:
            out["explore/success"] = float(np.mean([s for _, s in solved]))
            per_type = defaultdict(list)
            for ttype, s in solved:
                per_type[ttype].append(s)
            for ttype, v in sorted(per_type.items()):
                out[f"explore/success/{ttype}"] = float(np.mean(v))
            out["explore/tree_trajectories_mean"] = float(np.mean(acc["tree_trajectories"]))
            out["explore/tree_states_mean"] = float(np.mean(acc["tree_states"]))
        ended = [x for r in acc.get("ended", []) for x in r]
        if ended:  # the comparable training success of every algorithm (DESIGN §2.8): finished trajectories
            out["train/episode_success"] = float(np.mean(ended))
            out["train/finished_trajectories"] = len(ended)
        if acc.get("traj_len"):
            out["explore/episode_length_mean"] = float(np.mean(acc["traj_len"]))
            ends = Counter(acc["traj_end"])
            for end in ("won", "failed", "pruned"):
                out[f"explore/trajectory_end/{end}"] = ends.get(end, 0)
        stats = self._store_stats()
        if stats:
            out["explore/store_states"] = stats["states"]
            out["explore/store_t"] = stats["t"]
        return out

    def _store_stats(self) -> dict[str, int] | None:
        if self.store is None:
            return None
        import ray

        return ray.get(self.store.stats.remote())

    def _episode_metrics(self, batch: KVBatchMeta) -> dict[str, float]:
        extras = step_rows(extra_fields(real_rows(batch)))
        if not extras:
            return {}
        last: dict[str, StepRow] = {}
        states: set[str] = set()
        # a trajectory row (algorithm=ppo | spa_ppo) is a whole episode: its steps, states and invalid actions
        traj = [e for e in extras if e.mode == "trajectory"]
        steps = [episode_env_steps([e]) for e in extras]
        invalid = [e.invalid_steps if e.mode == "trajectory" else int(not e.valid_action) for e in extras]
        for e in extras:
            states.add(e.state_key)
            states.add(e.child_state_key)
            states.update(e.turn_states)
            if e.done:
                last[e.traj_id] = e
        hashes = key_hash(sorted(states)).tolist()
        new = sum(1 for h in hashes if h not in self.unique_states)
        self.unique_states.update(hashes)
        self.counters["env_steps"] += sum(steps)
        self.counters["llm_calls"] += sum(steps)
        out = {"episode/env_steps": sum(steps), "episode/unique_states": len(states), "episode/new_states": new,
               "explore/cumulative_unique_states": len(self.unique_states),
               "explore/cumulative_env_steps": self.counters["env_steps"],
               "explore/cumulative_llm_calls": self.counters["llm_calls"],
               "episode/invalid_rate": sum(invalid) / max(1, sum(steps)),
               "env/failures": sum(int(e.env_failed) for e in extras)}
        if self.algo in ("spa", "spa_ppo"):  # SPA's reward components per step: alpha_p c_t and the guarded beta g_t
            # (a trajectory row holds its episode's sums; step rows one step each)
            out["reward/progress_mean"] = sum(e.r_progress for e in extras) / max(1, sum(steps))
            out["reward/grounding_mean"] = sum(e.r_grounding for e in extras) / max(1, sum(steps))
            out["reward/step_mean"] = sum(e.step_reward for e in extras) / max(1, sum(steps))
        if traj:  # turns dropped to fit the context budget (rollout/trajectory.py), never silently
            out["trajectory/turns_dropped"] = sum(int(e.turns_dropped) for e in traj)
            out["trajectory/truncated_rows"] = sum(int(e.turns_dropped) > 0 for e in traj)
            out["trajectory/rows"] = len(traj)
        if last:
            out["episode/success"] = float(np.mean([e.won for e in last.values()]))
            out["train/episode_success"] = out["episode/success"]  # comparable with 3SPO's (DESIGN §2.8)
            out["train/finished_trajectories"] = len(last)
            out["episode/length_mean"] = float(np.mean([e.step_index + 1 for e in last.values()]))
            per_type = defaultdict(list)
            for e in last.values():
                per_type[e.task_type].append(float(e.won))
            for ttype, v in sorted(per_type.items()):
                out[f"episode/success/{ttype}"] = float(np.mean(v))
        return out

    def _step_metrics(self, batch: KVBatchMeta, metrics: dict) -> None:
        """What this trainer adds to verl's step metrics (in place): the probe, optimizer steps per env step and the
        cumulative optimizer steps (the episode metrics of non-3SPO updates are added by ``step``)."""
        metrics.update(getattr(self, "_probe", {}))
        env_steps = metrics.get("explore/env_steps", metrics.get("episode/env_steps", 0))
        if "actor/optimizer_steps" in metrics and env_steps:
            metrics["actor/optimizer_steps_per_env_step"] = metrics["actor/optimizer_steps"] / env_steps
        metrics["actor/cumulative_optimizer_steps"] = self.counters["optimizer_steps"]

    def _run_probe(self) -> None:
        """With ``rollout_probe.enable``: the rollout engine's greedy reply to a fixed prompt right after each weight
        sync, logged as ``probe/logprob_sum`` (+ the first tokens): it moves exactly when the served weights do."""
        cfg = self.config.get("rollout_probe", None)
        if not cfg or not cfg.get("enable", False):
            return
        import asyncio

        messages = [{"role": "user", "content": str(cfg.get("prompt", "Say hello."))}]
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt_ids = self.tokenizer.encode(text, add_special_tokens=False)
        params = {"temperature": 0.0, "top_p": 1.0, "top_k": -1, "logprobs": True,
                  "max_tokens": int(cfg.get("max_tokens", 8))}
        out = asyncio.run(self.get_llm_client().generate(request_id=f"probe{self.global_steps}",
                                                        prompt_ids=prompt_ids, sampling_params=params))
        lp = list(out.log_probs or [])
        self._probe = {"probe/logprob_sum": float(sum(lp)), "probe/tokens": len(out.token_ids)}
        for i, tok in enumerate(out.token_ids[:4]):
            self._probe[f"probe/token_{i}"] = int(tok)
        metrics_log.append(os.path.join(os.path.dirname(self.metrics_path), "probe.jsonl"), self.global_steps,
                           self._probe, token_ids=list(map(int, out.token_ids)), logprobs=lp)
