"""The agent loop ``threespo_step``: one node expansion (3SPO) or one full episode (GRPO, GiGPO, SPA, validation).

verl's v1 ``AgentLoopWorkerTQ`` instantiates this loop for every session of a prompt row and puts the returned
``AgentLoopOutput`` list into TransferQueue, one row per output (key ``{uid}_{session}_{i}``). The row's
``threespo_request`` column (JSON) says what to do:

* ``{"mode": "node", "task", "node_id", "prefix", "history", "path_keys", "max_branches", "round", ...}``:
  restore the node's environment, read S and n(s) from the state store's last commit, issue n(s) concurrent
  ``server_manager.generate`` calls that share one request id (the node's uid: the same vLLM replica and its prefix
  cache), step each distinct action once, score by Eq.2 and return one output per sampled reply (replies of the
  same action share their child's env step and reward; ``branch`` names the child). n = 0 returns one *marker*
  row (``pruned`` true, no reply, never trained: the trainer clears it) that tells the trainer the pruned node's
  state. The trainer, not this loop, records ended trajectories in the state store (it applies each expansion to
  its tree exactly once, so a retried request cannot record twice).
* ``{"mode": "episode", "task"}``: play the task to the end, one output per step, the outcome (``env.outcome``) on
  the last and ``env.invalid_action_penalty`` subtracted on invalid steps; with ``algorithm=spa`` each step's
  reward is alpha_p c_t (the estimator worker's progress for the finished episode) + beta g'_t (the guarded
  grounding bonus) instead.
* the same request with ``algorithm=ppo | spa_ppo`` (trajectory mode): the episode is played as one growing chat and
  returned as *one* row, observation turns masked out of ``response_mask``, each step's reward in
  ``turn_rewards`` for the closing token of its action turn (``turn_ends``), for verl's critic and the
  ``turn_gae`` (or verl's ``gae``) estimator (``rollout/trajectory.py``).

A prompt longer than ``rollout.prompt_length`` keeps its head (system text, task, chat-template start) and loses
its oldest history turns, one at a time, until it fits; the dropped turns are counted in every row's
``prompt_truncated``.

Every output carries the same ``extra_fields`` keys (``EXTRA_KEYS``, the fields of ``step_row.StepRow``, which the
loop builds each row as): the row metadata the trainer and the estimators read (``verl_glue/row_meta.py``), the
reward components, what the tree needs about the child, and verl's ``min/max_global_steps``. ``reward_score`` is
set on every output (so verl never calls a reward model); because verl copies the last output's score onto its
siblings, the trainer takes each row's reward from ``extra_fields["step_reward"]`` instead.

Environments live at module level, one ``EnvCache`` per environment configuration and worker process, because
verl builds a new loop instance per session; a child created by an expansion stays parked in the cache, so the
followed child never replays. Every env call is awaited (``envs/pool.py``): with ``env.num_workers`` > 0 the
environments live in that many env worker processes per agent-loop worker, shared by all its sessions, so env work
runs on other cores while this loop generates; 0 keeps them in this process. An env step that fails twice (the
engine raised, its worker died) ends its branch or episode as a failed row (``env_failed``, ``env/failures``).
Model output never raises: a malformed reply is an invalid action.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import time
from typing import Any

from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopMetrics, AgentLoopOutput, register

from threespo_verl.envs import make
from threespo_verl.envs.base import Task
from threespo_verl.envs.pool import EnvPool
from threespo_verl.envs.prompts import render_fitting, render_prompt
from threespo_verl.envs.restore import EnvCache
from threespo_verl.io_utils import stable_seed
from threespo_verl.rollout.expand import ActorScorer, Branch, Sample, ScoreParams, expand_node, play_episode
from threespo_verl.rollout.trajectory import TRAJECTORY_ALGOS
from threespo_verl.verl_glue import config as typed  # a module: verl's first import may load this plugin mid-import
from threespo_verl.verl_glue.dataset import AGENT_NAME, REQUEST_KEY, env_settings
from threespo_verl.verl_glue.step_row import EXTRA_KEYS, TRAJECTORY_DEFAULTS, StepRow

__all__ = ["EXTRA_KEYS", "TRAJECTORY_DEFAULTS", "StepRolloutAgentLoop", "branch_seed", "env_cache", "store_handle",
           "template_shape"]

logger = logging.getLogger("threespo_verl.agent_loop")
_WARNED: dict[str, bool] = {}
_CACHES: dict[str, EnvCache] = {}
_POOLS: dict[str, EnvPool] = {}
_STORE: dict[str, Any] = {}


def env_workers(env: typed.EnvConfig, agent_workers: int = 1) -> int:
    """Env worker processes per agent-loop worker: ``env.num_workers``, where ``auto`` shares the CPU cores this
    process may use among the ``agent_workers`` agent-loop workers (at least 1); 0 = in-process."""
    if env.num_workers == "auto":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, cores // max(1, int(agent_workers)))
    return int(env.num_workers)


def _env_key(env: typed.EnvConfig, agent_workers: int) -> str:
    """What makes two environment configurations need different env pools (and caches) in one process."""
    return json.dumps([env.name, env.make_kwargs(), env_workers(env, agent_workers), env.max_worker_mb], sort_keys=True)


def env_factory(env: typed.EnvConfig, agent_workers: int = 1):
    """This process's source of environments for one environment configuration: ``EnvPool.env`` of its env worker
    processes, or a ``make`` in this process (``env.num_workers`` = 0)."""
    kw = env.make_kwargs()
    n = env_workers(env, agent_workers)
    if n == 0:
        return lambda: make(env.name, **kw)
    key = _env_key(env, agent_workers)
    if key not in _POOLS:
        _POOLS[key] = EnvPool(env.name, kw, num_workers=n, max_worker_mb=env.max_worker_mb)
        logger.info("env %s: %d env worker process(es) for this agent-loop worker", env.name, n)
    return _POOLS[key].env


def env_cache(env: typed.EnvConfig, agent_workers: int = 1) -> EnvCache:
    """This process's environment cache for one environment configuration (``env.max_parked_envs`` live envs)."""
    key = _env_key(env, agent_workers)
    if key not in _CACHES:
        _CACHES[key] = EnvCache(env_factory(env, agent_workers), max_envs=env.max_parked_envs)
    return _CACHES[key]


_RESOLVED: dict[int, tuple[Any, typed.ThreeSPOAlgoConfig, typed.EnvConfig]] = {}


def resolved(config) -> tuple[typed.ThreeSPOAlgoConfig, typed.EnvConfig]:
    """``config.algorithm`` and the env settings, typed, resolved once per config object of this process."""
    hit = _RESOLVED.get(id(config))
    if hit is None or hit[0] is not config:
        hit = _RESOLVED[id(config)] = (config, typed.resolve_algorithm(config.algorithm), env_settings(config.data))
    return hit[1], hit[2]


_SHAPES: dict[Any, Any] = {}


def template_shape(tokenizer, chat_template_kwargs: dict[str, Any] | None = None):
    """This process's ``rollout.trajectory.TemplateShape`` of ``tokenizer`` (what its chat template wraps turns in)."""
    from threespo_verl.rollout.trajectory import TemplateShape

    key = (id(tokenizer), json.dumps(dict(chat_template_kwargs or {}), sort_keys=True, default=str))
    if key not in _SHAPES:
        _SHAPES[key] = TemplateShape(tokenizer, chat_template_kwargs)
    return _SHAPES[key]


def store_handle(name: str):
    if name not in _STORE:
        from threespo_verl.store.actor import get_store

        _STORE[name] = get_store(name)
    return _STORE[name]


@register(AGENT_NAME)
class StepRolloutAgentLoop(AgentLoopBase):
    """Node expansion / episode agent loop (see module docstring)."""

    async def run(self, sampling_params: dict[str, Any], **kwargs) -> list[AgentLoopOutput]:
        req = json.loads(kwargs[REQUEST_KEY])
        self._algo, self._env = resolved(self.config)
        self._tcfg = self._algo.threespo
        self._uid = str(kwargs.get("uid", "req"))
        self._session = int(kwargs.get("session_id", 0))
        self._sampling = dict(sampling_params)
        if self._env.max_tokens_per_step:
            self._sampling["max_tokens"] = int(self._env.max_tokens_per_step)
        self._gen_time = 0.0
        self._truncated = 0
        task = Task(**req["task"])
        if req["mode"] == "node":
            return await self._run_node(task, req)
        if req["mode"] == "episode" and self._algo.name in TRAJECTORY_ALGOS:
            return await self._run_trajectory(task, req)
        if req["mode"] == "episode":
            return await self._run_episode(task, req)
        raise ValueError(f"{REQUEST_KEY}.mode must be 'node' or 'episode', got {req['mode']!r}")

    def _episode_settings(self) -> dict[str, Any]:
        """``play_episode``'s keyword arguments from the env settings (prompt shape, outcome, penalty)."""
        e = self._env
        return {"history_length": e.history_length, "few_shot": e.few_shot, "reasoning": e.reasoning,
                "outcome": e.outcome, "invalid_action_penalty": e.invalid_action_penalty}

    # ---- the policy ----------------------------------------------------------------------------------------------
    def _encode(self, messages: list[dict[str, str]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                                  **self.apply_chat_template_kwargs)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _fitting_render(self, base=None):
        """A prompt renderer that keeps the prompt within ``rollout.prompt_length``: the head stays, the oldest
        history turns are dropped one at a time until it fits (``self._truncated`` counts the dropped turns)."""
        base = base or render_prompt
        limit = int(self.rollout_config.prompt_length)

        def render(env_name, obs, history, *, history_length, **kw):
            messages, dropped = render_fitting(base, lambda m: len(self._encode(m)) <= limit, env_name, obs, history,
                                               history_length=history_length, **kw)
            if dropped:
                self._truncated = max(self._truncated, dropped)
                if not _WARNED.get("prompt"):
                    _WARNED["prompt"] = True
                    logger.warning("a prompt exceeded rollout.prompt_length=%d (data.max_prompt_length) tokens; its "
                                   "%d oldest history turn(s) were dropped (counted in prompt_truncated). Raise "
                                   "data.max_prompt_length or lower env.history_length", limit, dropped)
            return messages

        return render

    def _prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        ids = self._encode(messages)
        limit = int(self.rollout_config.prompt_length)
        if len(ids) <= limit:
            return ids
        # too long even without history (a huge observation): keep both ends (the chat-template start and task at the
        # head, the current observation's end and the answer format at the tail), cut the middle; counted and warned
        self._truncated = max(self._truncated, 1)
        if not _WARNED.get("prompt_middle"):
            _WARNED["prompt_middle"] = True
            logger.warning("a prompt of %d tokens exceeds rollout.prompt_length=%d even without history; %d tokens "
                           "are cut from its middle. Raise data.max_prompt_length", len(ids), limit, len(ids) - limit)
        head = limit // 2
        return ids[:head] + ids[len(ids) - (limit - head):]

    async def _sample(self, messages: list[dict[str, str]], n: int, choices=(),
                      seed_base: str | None = None) -> list[Sample]:
        prompt_ids = self._prompt_ids(messages)
        t0 = time.perf_counter()
        constrained = _action_constraint(choices) if self._env.constrain_actions else None

        async def one(i: int):
            params = dict(self._sampling)
            if constrained is not None:
                params["structured_outputs"] = constrained
            if seed_base is not None and self._tcfg.sample_seed is not None:
                params["seed"] = branch_seed(self._tcfg.sample_seed, seed_base, i)
            return await self.server_manager.generate(request_id=self._uid, prompt_ids=prompt_ids,
                                                      sampling_params=params)

        outs = await asyncio.gather(*[one(i) for i in range(n)])
        self._gen_time += time.perf_counter() - t0
        return [Sample(text=self.tokenizer.decode(o.token_ids, skip_special_tokens=True), payload=(prompt_ids, o))
                for o in outs]

    def _output(self, sample: Sample, reward: float, row: StepRow) -> AgentLoopOutput:
        prompt_ids, tok = sample.payload
        response_ids = list(tok.token_ids) or [self.tokenizer.eos_token_id]
        logprobs = list(tok.log_probs) if tok.log_probs is not None else None
        if logprobs is not None and len(logprobs) != len(response_ids):
            logprobs = (logprobs + [0.0] * len(response_ids))[: len(response_ids)]
        row = dataclasses.replace(row, prompt_truncated=self._truncated,
                                  min_global_steps=tok.extra_fields.get("min_global_steps"),
                                  max_global_steps=tok.extra_fields.get("max_global_steps"))
        fields = dict(prompt_ids=list(prompt_ids), response_ids=response_ids, response_mask=[1] * len(response_ids),
                      reward_score=float(reward), num_turns=2,
                      metrics=AgentLoopMetrics(generate_sequences=self._gen_time), extra_fields=row.to_extra_fields())
        if self.rollout_config.calculate_log_probs:
            if logprobs is None:  # bypass mode would train against made-up old log-probs
                raise RuntimeError("rollout.calculate_log_probs is set but the rollout engine returned no log-probs "
                                   "for a reply; check the rollout engine's logprobs support")
            fields["response_logprobs"] = logprobs
        return AgentLoopOutput(**fields)

    # ---- 3SPO node expansion -------------------------------------------------------------------------------------
    async def _run_node(self, task: Task, req: dict[str, Any]) -> list[AgentLoopOutput]:
        cache = env_cache(self._env, self.rollout_config.agent.num_workers)
        params = ScoreParams.from_config(self._tcfg, self._env.invalid_action_penalty)
        store = store_handle(self._tcfg.store_name)
        prefix = tuple(req["prefix"])
        history = [tuple(h) for h in req["history"]]
        node_id = int(req["node_id"])
        # seeds differ between trees of the same task (the tree id is unique per run), repeat within one tree
        seed_base = f"{req['tree_id']}/{node_id}"
        exp = await expand_node(
            task, prefix, history, cache,
            lambda messages, n, choices: self._sample(messages, n, choices, seed_base=seed_base),
            ActorScorer(store), params, max_branches=int(req["max_branches"]),
            history_length=self._env.history_length, few_shot=self._env.few_shot, reasoning=self._env.reasoning,
            render=self._fitting_render())

        def extra(j: int, i: int, b) -> StepRow:
            return StepRow(
                mode="node", task_id=task.task_id, task_type=task.task_type,
                traj_id=f"{node_id}/{i}", step_index=len(prefix), node_id=-1, parent_node_id=node_id,
                state_key=exp.state_key, round=int(req["round"]), branch=i, reply=j,
                n_children=len(exp.branches), n_branches=exp.n_branches,
                n_score=exp.n_score, score=exp.score, n_total=exp.n_total, step_reward=b.reward,
                r_novel=b.r_novel, r_score_diff=b.r_score_diff, r_success=b.r_success,
                r_penalty=b.r_penalty, r_progress=0.0, r_grounding=0.0, valid_action=b.valid,
                parse_reason=b.parse_reason,
                merged=b.merged, action=b.action, action_text=b.action_text,
                child_state_key=b.state_key, child_obs=b.obs_text, done=b.done, won=b.won,
                timeout=b.timeout, env_failed=b.env_failed, env_score=b.env_reward, replayed_steps=exp.replayed_steps,
                parent_obs=exp.obs_text, tree_id=req["tree_id"], pruned=False,
                reward_extra_info={"won": float(b.won), "step_reward": b.reward},
            )

        if exp.pruned:  # a marker row: the trainer records the pruned path under the node's state (DESIGN §2.6)
            b = Branch(Sample(""), None, "", False, "pruned", 0, exp.state_key, exp.obs_text, False, False, False, 0.0)
            return [self._marker_output(dataclasses.replace(extra(-1, -1, b), pruned=True))]
        return [self._output(reply.sample, exp.branches[reply.branch].reward,
                             extra(j, reply.branch, exp.branches[reply.branch])) for j, reply in enumerate(exp.replies)]

    def _marker_output(self, row: StepRow) -> AgentLoopOutput:
        """A row that carries ``row`` only (a pruned node): one end-of-sequence token, zero reward, never trained."""
        eos = [self.tokenizer.eos_token_id]
        row = dataclasses.replace(row, prompt_truncated=self._truncated, min_global_steps=None, max_global_steps=None)
        fields = dict(prompt_ids=eos, response_ids=eos, response_mask=[1], reward_score=0.0, num_turns=2,
                      metrics=AgentLoopMetrics(generate_sequences=0.0), extra_fields=row.to_extra_fields())
        if self.rollout_config.calculate_log_probs:
            fields["response_logprobs"] = [0.0]
        return AgentLoopOutput(**fields)

    # ---- trajectory mode -----------------------------------------------------------------------------------------
    async def _run_episode(self, task: Task, req: dict[str, Any]) -> list[AgentLoopOutput]:
        env = env_factory(self._env, self.rollout_config.agent.num_workers)()
        spa = self._algo.name == "spa"
        prompts, render = [], self._fitting_render()
        if spa:  # SPA's estimator reads the episode back as a trajectory record, prompts included
            from threespo_verl.spa.collect import prompt_recorder

            prompts, render = prompt_recorder(base=render)
        history_length = self._env.history_length
        try:
            steps = await play_episode(task, env, lambda messages, n, choices: self._sample(messages, n, choices),
                                       render=render, **self._episode_settings())
        finally:
            env.close()
        progress = grounded = [0.0] * len(steps)
        if spa:
            progress, grounded = await self._spa_rewards(task, steps, prompts, history_length)
        last = steps[-1].branch
        outcome = last.r_success  # the outcome R of env.outcome (play_episode put it on the last step)
        info = {"won": float(last.won), "score": last.env_reward, "episode_length": float(len(steps)),
                "invalid_rate": sum(not s.branch.valid for s in steps) / len(steps)}
        outputs = []
        for t, s in enumerate(steps):
            b = s.branch
            row = StepRow(
                mode="episode", task_id=task.task_id, task_type=task.task_type,
                traj_id=f"{self._uid}/{self._session}",
                step_index=t, node_id=t + 1, parent_node_id=t, state_key=s.state_key, round=-1,
                branch=0, reply=0, n_children=1, n_branches=1, n_score=1, score=0.0, n_total=0,
                # SPA: alpha_p c_t + beta g'_t, minus the invalid-action penalty every algorithm pays (DESIGN §2.8)
                step_reward=(progress[t] + grounded[t] - b.r_penalty) if spa else b.reward,
                r_novel=0.0, r_score_diff=0.0, r_success=b.r_success, r_penalty=b.r_penalty,
                r_progress=progress[t], r_grounding=grounded[t],
                valid_action=b.valid, parse_reason=b.parse_reason, merged=1, action=b.action,
                action_text=b.action_text, child_state_key=b.state_key, child_obs="", done=b.done,
                won=b.won, timeout=b.timeout, env_failed=b.env_failed, env_score=b.env_reward, replayed_steps=0,
                parent_obs="", tree_id=self._uid, pruned=False, reward_extra_info=info,
            )
            outputs.append(self._output(b.sample, outcome, row))
        return outputs

    async def _spa_rewards(self, task: Task, steps, prompts, history_length: int) -> tuple[list[float], list[float]]:
        """SPA's step reward parts (DESIGN §3): alpha_p * c_t from the estimator worker and beta * g'_t, the
        grounding bonus guarded against farming (``algorithm.spa.grounding_guard``)."""
        from threespo_verl.algos.spa import grounding, guarded_grounding
        from threespo_verl.spa.collect import trajectory_record
        from threespo_verl.verl_glue.spa_worker import get_progress_worker

        cfg = self._algo.spa
        record = trajectory_record(task, 0, steps, prompts, history_length)
        c = await get_progress_worker(cfg.worker_name).predict.remote(record)
        g = [grounding(task.env_name, s.branch.action, s.branch.obs_text, adm, s.branch.valid)
             for s, (_m, adm) in zip(steps, prompts)]
        g = guarded_grounding(g, [s.branch.state_key != s.state_key for s in steps],
                              mode=cfg.grounding_guard, cap=cfg.grounding_cap)
        alpha, beta = float(cfg.alpha_p), float(cfg.beta)
        return [alpha * float(x) for x in c], [beta * float(x) for x in g]

    # ---- trajectory rows (algorithm=ppo | spa_ppo) ---------------------------------------------------------------
    async def _run_trajectory(self, task: Task, req: dict[str, Any]) -> list[AgentLoopOutput]:
        """The whole episode as one row (``rollout/trajectory.py``): the policy plays it as one growing chat (user
        turn t = step t's prompt, rendered as for every algorithm), the row's response holds every action turn
        (mask 1) and the user turns between them (mask 0), and step t's reward goes to ``turn_rewards[t]``, placed
        by the trainer at ``turn_ends[t]``, the closing token of action turn t, for verl's critic and ``turn_gae``::

            ppo:      r_t = R 1{t = T-1} - p 1{a_t invalid}
            spa_ppo:  r_t = alpha_p c_t + beta g'_t - p 1{a_t invalid}

        (R = ``env.outcome``, p = ``env.invalid_action_penalty``, c_t and g'_t as for ``spa``). Turns dropped to fit
        the context budget (``rollout.prompt_length + rollout.response_length``) are counted in ``turns_dropped``.
        """
        from threespo_verl.rollout.trajectory import TrajectoryTokens

        reply_cap = self._env.max_tokens_per_step
        if not reply_cap:
            raise ValueError(f"algorithm={self._algo.name} plays an episode as one row: set "
                             "env.max_tokens_per_step (the cap of one reply; data.max_response_length is the budget "
                             "of everything after the row's first prompt)")
        budget = int(self.rollout_config.prompt_length) + int(self.rollout_config.response_length)
        ctx = TrajectoryTokens(template_shape(self.tokenizer, self.apply_chat_template_kwargs), budget=budget,
                               reply_cap=int(reply_cap), first_ids=self._prompt_ids)
        spa = self._algo.name == "spa_ppo"
        prompts, render = [], self._fitting_render()
        if spa:
            from threespo_verl.spa.collect import prompt_recorder

            prompts, render = prompt_recorder(base=render)
        last_out: list[Any] = []
        sample = self._chat_sampler(ctx, last_out)
        env = env_factory(self._env, self.rollout_config.agent.num_workers)()
        history_length = self._env.history_length
        try:
            steps = await play_episode(task, env, sample, render=render, **self._episode_settings())
        finally:
            env.close()
        progress = grounded = [0.0] * len(steps)
        if spa:
            progress, grounded = await self._spa_rewards(task, steps, prompts, history_length)
            rewards = [progress[t] + grounded[t] - s.branch.r_penalty for t, s in enumerate(steps)]
        else:
            rewards = [s.branch.reward for s in steps]
        row = ctx.row()
        kept = rewards[row.first_turn:]
        if row.dropped and not _WARNED.get("trajectory"):
            _WARNED["trajectory"] = True
            logger.warning("an episode of %d steps did not fit rollout.prompt_length + rollout.response_length = %d "
                           "tokens; its %d oldest turn(s) left the row (counted in trajectory/turns_dropped). Raise "
                           "data.max_response_length or lower env.history_length / env.max_tokens_per_step",
                           len(steps), budget, row.dropped)
        extra = self._trajectory_extra(task, steps, row, kept, progress, grounded, last_out).to_extra_fields()
        fields = dict(prompt_ids=row.prompt_ids, response_ids=row.response_ids, response_mask=row.response_mask,
                      reward_score=float(sum(kept)), num_turns=2 * (row.n_turns - row.first_turn),
                      metrics=AgentLoopMetrics(generate_sequences=self._gen_time), extra_fields=extra)
        if self.rollout_config.calculate_log_probs:
            fields["response_logprobs"] = row.response_logprobs
        return [AgentLoopOutput(**fields)]

    def _chat_sampler(self, ctx, last_out: list[Any]):
        """The ``SampleFn`` of a trajectory row: one reply per step, generated on the growing chat ``ctx`` (which
        records the reply's tokens); ``last_out`` keeps the last ``TokenOutput``."""

        async def sample(messages, n, choices):
            params = dict(self._sampling)
            if self._env.constrain_actions:
                constrained = _action_constraint(choices)
                if constrained is not None:
                    params["structured_outputs"] = constrained
            prompt_ids = ctx.open(messages)
            t0 = time.perf_counter()
            out = await self.server_manager.generate(request_id=self._uid, prompt_ids=prompt_ids,
                                                     sampling_params=params)
            self._gen_time += time.perf_counter() - t0
            ctx.close(out.token_ids, out.log_probs)
            last_out[:] = [out]
            return [Sample(text=self.tokenizer.decode(out.token_ids, skip_special_tokens=True))]

        return sample

    def _trajectory_extra(self, task: Task, steps, row, kept, progress, grounded, last_out) -> StepRow:
        """The ``StepRow`` of a trajectory row."""
        last = steps[-1].branch
        info = {"won": float(last.won), "score": last.env_reward, "episode_length": float(len(steps)),
                "invalid_rate": sum(not s.branch.valid for s in steps) / len(steps)}
        first = steps[0]
        return StepRow(
            mode="trajectory", task_id=task.task_id, task_type=task.task_type,
            traj_id=f"{self._uid}/{self._session}", step_index=len(steps) - 1, node_id=len(steps),
            parent_node_id=0, state_key=first.state_key, round=-1, branch=0, reply=0,
            n_children=1, n_branches=1, n_score=1, score=0.0, n_total=0,
            step_reward=float(sum(kept)), r_novel=0.0, r_score_diff=0.0, r_success=last.r_success,
            r_penalty=float(sum(s.branch.r_penalty for s in steps)), r_progress=float(sum(progress)),
            r_grounding=float(sum(grounded)), valid_action=all(s.branch.valid for s in steps),
            parse_reason=last.parse_reason, merged=1, action=last.action, action_text=last.action_text,
            child_state_key=last.state_key, child_obs="", done=True, won=last.won,
            timeout=last.timeout, env_failed=last.env_failed, env_score=last.env_reward, replayed_steps=0,
            parent_obs="",
            tree_id=self._uid, pruned=False, reward_extra_info=info,
            turn_ends=list(row.turn_ends), turn_rewards=[float(r) for r in kept], turns_dropped=row.dropped,
            turn_states=[s.state_key for s in steps] + [last.state_key],
            invalid_steps=sum(not s.branch.valid for s in steps), prompt_truncated=self._truncated,
            min_global_steps=last_out[0].extra_fields.get("min_global_steps") if last_out else None,
            max_global_steps=last_out[0].extra_fields.get("max_global_steps") if last_out else None,
        )


def _action_constraint(choices):
    """vLLM structured output that only lets the model write ``<action>A</action>`` with A one of ``choices`` (the
    model's own probabilities, renormalised over what the constraint allows). For small models that cannot keep
    the format by themselves; ``env.constrain_actions=false`` (default) leaves decoding free."""
    from vllm.sampling_params import StructuredOutputsParams

    from threespo_verl.envs.actions import action_choice_regex

    regex = action_choice_regex(choices)
    return None if regex is None else StructuredOutputsParams(regex=regex)


def branch_seed(sample_seed: int, seed_base: str, branch: int) -> int:
    """The vLLM seed of one reply: stable in (``algorithm.threespo.sample_seed``, ``seed_base``, branch). The node
    mode's ``seed_base`` is ``"<tree id>/<node id>"``: a task explored again later (a new tree) draws new seeds."""
    return stable_seed(sample_seed, seed_base, branch, sep="/", bits=31)
