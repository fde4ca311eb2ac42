"""Trajectory rows (``algorithm=ppo | spa_ppo``) on real verl machinery: Ray, TransferQueue, verl's agent-loop workers
running the ``threespo_step`` loop, the trainer's reward placement, verl's critic worker (a real value model, FSDP2
on CPU, in a Ray worker group), the turn-level ``turn_gae`` estimator (the default) and verl's token-level ``gae``.
Only the policy is a scripted client (``ScriptedLLMClient``). The critic's value head starts constant (weight 0, bias
V0), so V = V0 at every token and both estimators' advantages of each 3-step episode are computed here by hand; then
the critic is trained by ``_update_critic``, its values move towards the returns, and ``turn_gae`` is checked again by
hand on the trained critic's (no longer constant) values, and ``critic/vf_explained_var`` in the metrics log."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

ray = pytest.importorskip("ray")
tq = pytest.importorskip("transfer_queue")

from tests.integration import verl_harness as H
from threespo_verl.envs import make
from threespo_verl.envs.prompts import render_prompt
from threespo_verl.testing import ScriptedPolicy, household_plans
from threespo_verl.verl_glue import metrics_log

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

V0 = 0.3  # the constant critic's value at every token
C = 0.25  # the constant progress estimator's c_t
ALPHA, BETA, PENALTY = 2.0, 0.5, 0.1
GAMMA, LAM = 0.9, 0.8


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from threespo_verl.models import build_tiny

    root = tmp_path_factory.mktemp("verl_trajectory")
    model = root / "tiny"
    build_tiny(model)
    # one logical GPU slot for the critic's FSDP rank; its worker runs verl's CPU platform
    ray.init(num_cpus=16, num_gpus=1, include_dashboard=False, log_to_driver=False,
             namespace=f"threespo-{uuid.uuid4().hex}",
             runtime_env={"env_vars": {"PYTHONHASHSEED": "0", "TOKENIZERS_PARALLELISM": "false",
                                       "VERL_PLATFORM": "cpu", "OMP_NUM_THREADS": "1"}})
    cfg = H.compose_config(model, root, [])
    tq.init(cfg.transfer_queue)
    yield model, root
    tq.close()
    ray.shutdown()


def _constant_head(base, out, cls_name: str, bias: float):
    """A token-classification model (one label) on ``base`` whose head reads ``bias`` at every token."""
    import torch
    import transformers
    from transformers import AutoTokenizer

    model = getattr(transformers, cls_name).from_pretrained(base, num_labels=1, dtype=torch.float32)
    with torch.no_grad():
        model.score.weight.zero_()
        if model.score.bias is None:
            raise AssertionError("the score head has no bias")
        model.score.bias.fill_(bias)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


def _rig(cluster, algo: str, extra=(), name=None):
    model, root = cluster
    name = name or uuid.uuid4().hex[:8]
    tasks = make("household").tasks("train")[:64]
    policy = ScriptedPolicy(plans=household_plans(tasks), plan_weight=100.0, plan_move_weight=20.0, p_malformed=0.3)
    overrides = [f"algorithm={algo}", "actor_rollout_ref.rollout.n=2", "env.max_steps=3", "env.history_length=1",
                 "env.reasoning=false", "env.max_tokens_per_step=64", "data.max_prompt_length=1536",
                 "data.max_response_length=2560", "data.train_batch_size=1", "data.shuffle=False",
                 "data.train_max_samples=64", f"algorithm.threespo.store_name=store-{name}",
                 "algorithm.mini_batch_rows=1", f"algorithm.gamma={GAMMA}", f"algorithm.lam={LAM}", *extra]
    return H.build(model, root / name, overrides, policy=policy, config_name="threespo_trainer_cpu")


def _fetch(batch, field):
    data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=[field])
    return [t for t in data[field]]


def _rows(batch):
    from threespo_verl.verl_glue.trainer import _extra_fields

    return _extra_fields(batch)


def hand_gae(rewards: np.ndarray, values: np.ndarray, mask: np.ndarray, gamma: float, lam: float):
    """GAE over the action tokens of one row (mask 1), observation tokens skipped:
    delta_j = r_j + gamma V_{j+1} - V_j (V past the last action token = 0), A_j = delta_j + gamma lam A_{j+1}.
    Returns (A, A + V) on the action tokens, in order."""
    idx = np.flatnonzero(mask)
    r, v = rewards[idx], values[idx]
    adv = np.zeros(len(idx))
    nxt_v, nxt_a = 0.0, 0.0
    for j in range(len(idx) - 1, -1, -1):
        delta = r[j] + gamma * nxt_v - v[j]
        nxt_a = delta + gamma * lam * nxt_a
        adv[j] = nxt_a
        nxt_v = v[j]
    return adv, adv + v


def hand_turn_gae(rewards: np.ndarray, values: np.ndarray, mask: np.ndarray, gamma: float, lam: float):
    """GAE over the turns of one row (each run of 1s of the mask is one action turn, tokens s_t..e_t):
    r_t = sum of the turn's rewards, V_t = values[s_t], delta_t = r_t + gamma V_t+1 - V_t (V_T = 0),
    A_t = delta_t + gamma lam A_t+1. Returns (A, A + V) on the action tokens, in order (A_t on each token of turn t)."""
    runs = np.flatnonzero(np.diff(np.r_[0, mask, 0]) != 0).reshape(-1, 2)
    r = [rewards[a:b].sum() for a, b in runs]
    v = [values[a] for a, _b in runs]
    adv = np.zeros(len(runs))
    nxt_v, nxt_a = 0.0, 0.0
    for t in range(len(runs) - 1, -1, -1):
        nxt_a = r[t] + gamma * nxt_v - v[t] + gamma * lam * nxt_a
        adv[t] = nxt_a
        nxt_v = v[t]
    per_token = np.concatenate([[adv[t]] * (b - a) for t, (a, b) in enumerate(runs)])
    ret = np.concatenate([[adv[t] + v[t]] * (b - a) for t, (a, b) in enumerate(runs)])
    return per_token, ret


def _whitened(raw: list[np.ndarray]) -> list[np.ndarray]:
    """verl's whitening of the advantages over every action token of the batch."""
    flat = np.concatenate(raw)
    mean, var = flat.mean(), flat.var(ddof=1)
    return [(a - mean) / np.sqrt(var + 1e-8) for a in raw]


def _check_advantages(tr, batch, estimator: str, hand):
    """The trainer's advantage step with ``algorithm.adv_estimator=estimator`` against ``hand`` (per row: (A, A + V)
    on its action tokens): returns equal on the action tokens, advantages equal after verl's whitening. Returns the
    (values, masks, returns) it read."""
    from omegaconf import open_dict

    with open_dict(tr.config):
        tr.config.algorithm.adv_estimator = estimator
    tr._compute_advantage(batch, {})
    values = [v.numpy() for v in _fetch(batch, "values")]
    adv = [a.numpy() for a in _fetch(batch, "advantages")]
    ret = [x.numpy() for x in _fetch(batch, "returns")]
    masks = [m.numpy() for m in _fetch(batch, "response_mask")]
    scores = [s.numpy() for s in _fetch(batch, "rm_scores")]
    raw = []
    for s, v, m, rt in zip(scores, values, masks, ret):
        a, g = hand(s, v, m, GAMMA, LAM)
        np.testing.assert_allclose(rt[m == 1], g, atol=1e-5)  # returns = A + V on every action token
        raw.append(a)
    for a, m, want in zip(adv, masks, _whitened(raw)):
        np.testing.assert_allclose(a[m == 1], want, atol=1e-4)
    # GAE carries across the observation turns: the first action token's advantage sees every later step reward
    assert abs(raw[0][0]) > 0
    return values, masks, ret, raw


def _replay(tokenizer, e, resp, mask):
    """The episode of one row replayed by hand: the replies are the mask-1 runs of its response, parsed and stepped
    through a fresh household env from the task's start. Returns (valid, state changed, won) per step."""
    from threespo_verl.envs.actions import parse_action

    task = next(t for t in make("household").tasks("train")[:64] if t.task_id == e["task_id"])
    env = make("household", max_steps=3)
    obs, _info = env.reset(task)
    out = []
    runs = np.flatnonzero(np.diff(np.r_[0, mask, 0]) != 0).reshape(-1, 2)
    for a, b in runs:
        reply = tokenizer.decode(resp[a:b], skip_special_tokens=True)
        nobs, _r, _terminated, _truncated, info = env.step(parse_action(reply).action)
        out.append((bool(info["valid"]), nobs.state_key != obs.state_key, bool(info["won"])))
        obs = nobs
    return out


def _check_rows(tr, batch, hand_reward):
    """One row per 3-step episode: rm_scores holds each step's reward, computed here by hand from the replayed
    episode (``hand_reward(t, valid, changed, won)``), at the closing token of its action turn, and 0 everywhere
    else; the row is the episode's conversation."""
    from threespo_verl.verl_glue.step_row import step_rows

    es = _rows(batch)
    tr._row_rewards_to_tq(batch, step_rows(es))  # the trainer reads rows as StepRow
    scores = _fetch(batch, "rm_scores")
    masks = _fetch(batch, "response_mask")
    responses = _fetch(batch, "responses")
    prompts = _fetch(batch, "prompts")
    eos = tr.tokenizer.eos_token_id
    n_invalid = 0
    for e, s, m, resp, prompt in zip(es, scores, masks, responses, prompts):
        assert e["mode"] == "trajectory" and e["step_index"] == 2 and e["turns_dropped"] == 0
        s, m, resp = s.numpy(), m.numpy(), resp.tolist()
        steps = _replay(tr.tokenizer, e, resp, m)
        assert len(steps) == 3
        n_invalid += sum(not v for v, _c, _w in steps)
        ends = e["turn_ends"]
        assert len(ends) == 3 and ends[-1] == len(resp) - 1
        want = np.zeros(len(resp))
        want[ends] = [hand_reward(t, *steps[t]) for t in range(3)]
        np.testing.assert_allclose(s, want, atol=1e-5)  # exactly there, nowhere else
        assert m[ends].tolist() == [1, 1, 1]  # on generated tokens (GAE ignores rewards on masked ones)
        assert all(resp[p] == eos for p in ends)  # the scripted replies end at eos: the closing token
        # the row is the episode's conversation (each user turn rendered as in every algorithm's prompts)
        text = tr.tokenizer.decode(prompt.tolist() + resp)
        assert text.count("<|im_start|>user") == 3 and text.count("<|im_start|>assistant") == 3
    assert n_invalid > 0, "the scripted policy (30% malformed) should make an invalid step"
    return es


def test_ppo_rows_put_the_outcome_and_penalties_at_each_turns_closing_token(cluster):
    r = _rig(cluster, "ppo")
    tr = r.trainer
    tr.prepare_step()
    batch, _ = tr.replay_buffer.sample(global_steps=1, partition_id="train", batch_size=1)
    assert len(batch) == 2  # rollout.n = 2 episodes of one task, one row each
    task = make("household").tasks("train")[0]
    obs, _info = make("household", max_steps=3).reset(task)
    first_prompt = tr.tokenizer.apply_chat_template(render_prompt("household", obs, [], history_length=1,
                                                                  reasoning=False), add_generation_prompt=True,
                                                    tokenize=False)
    for p in _fetch(batch, "prompts"):
        assert tr.tokenizer.decode(p.tolist()) == first_prompt  # the first user turn, as for every algorithm
    # ppo: r_t = R 1{t = T-1} - p 1{a_t invalid}, R = won (env.outcome)
    _check_rows(tr, batch, lambda t, valid, changed, won: float(won) * (t == 2) - PENALTY * (not valid))
    H.shutdown(r)


def test_spa_ppo_turn_gae_and_gae_with_the_real_critic_equal_the_hand_computation_and_the_critic_learns(cluster):
    model, root = cluster
    tag = uuid.uuid4().hex[:6]
    critic = _constant_head(model, root / f"critic-{tag}", "Qwen2ForTokenClassification", V0)
    pe = H.constant_progress_estimator(model, root / f"pe-{tag}", C)
    r = _rig(cluster, "spa_ppo", [f"critic.model.path={critic}", f"algorithm.spa.estimator_path={pe}",
                                  f"algorithm.spa.alpha_p={ALPHA}", f"algorithm.spa.beta={BETA}",
                                  f"algorithm.spa.worker_name=pe-{tag}", "critic.optim.lr=1e-3",
                                  # two tasks, one episode each: mini-batches of 1 row (rollout.n = 1)
                                  "actor_rollout_ref.rollout.n=1", "data.train_batch_size=2"])
    tr = r.trainer
    # the algorithm group: GAE over turns, a critic, and its warm-up (verl's loop updates the actor from step 3 on)
    assert tr.use_critic and r.config.algorithm.adv_estimator == "turn_gae" and r.config.trainer.critic_warmup == 3
    H.attach_critic(r)
    tr.prepare_step()
    batch, _ = tr.replay_buffer.sample(global_steps=1, partition_id="train", batch_size=2)
    assert len(batch) == 2

    # spa_ppo: r_t = alpha c_t + beta g'_t - p 1{invalid}, c_t = C (constant estimator), g'_t = 1{valid and the
    # state changed} / T with T = 3 (the normalized grounding guard)
    _check_rows(tr, batch, lambda t, valid, changed, won: ALPHA * C + BETA * (valid and changed) / 3
                - PENALTY * (not valid))

    # the critic (verl's value model, constant head) reads V0 at every response token
    tr._compute_values(batch, {})
    values = [v.numpy() for v in _fetch(batch, "values")]
    for v in values:
        np.testing.assert_allclose(v, V0, atol=1e-5)
    # verl's token-level gae (algorithm.adv_estimator=gae), then the default turn_gae, through the trainer's step
    _check_advantages(tr, batch, "gae", hand_gae)
    _values, masks, ret, raw = _check_advantages(tr, batch, "turn_gae", hand_turn_gae)
    # turn_gae: one advantage per turn, on each of its action tokens; observation tokens 0
    adv = [a.numpy() for a in _fetch(batch, "advantages")]
    for a, m, hand in zip(adv, masks, raw):
        runs = np.flatnonzero(np.diff(np.r_[0, m, 0]) != 0).reshape(-1, 2)
        assert len(runs) == 3 and all(np.ptp(a[x:y]) < 1e-6 for x, y in runs)
        assert np.all(a[m == 0] == 0)

    # the critic is trained on turn_gae's returns: mini-batches of the actor's plan (1 row each: 2 optimizer steps),
    # values move to the returns
    tr._update_rows = len(batch)
    tr._get_required_batch_multiple(1)
    assert tr._mb_plan == (2, 1)
    metrics = {}
    tr._update_critic(batch, metrics)
    assert metrics["critic/optimizer_steps"] == 2 and metrics["critic/mini_batch_rows"] == 1
    assert "critic/vf_loss" in metrics and np.isfinite(metrics["critic/vf_loss"])
    tr._compute_values(batch, {})
    after = [v.numpy() for v in _fetch(batch, "values")]

    def mse(vals):
        return float(np.mean(np.concatenate([(v[m == 1] - rt[m == 1]) ** 2 for v, m, rt in zip(vals, masks, ret)])))

    assert mse(after) < mse(values)
    # the trained critic's values differ from token to token: turn_gae reads each turn's at its first action token
    assert max(np.ptp(v[m == 1]) for v, m in zip(after, masks)) > 1e-4
    _check_advantages(tr, batch, "turn_gae", hand_turn_gae)

    # critic/vf_explained_var = 1 - Var(G - V) / Var(G) over the action tokens, in the run's metrics log
    ret = [x.numpy() for x in _fetch(batch, "returns")]
    metrics = {}
    tr._get_n_gpus_for_throughput = lambda: 1  # verl reads it off the resource pools, which the harness does not build
    tr._compute_metrics(batch, metrics, {"step": 1.0, "gen": 0.5}, global_steps=1, epoch=0)
    g = np.concatenate([x[m == 1] for x, m in zip(ret, masks)])
    d = g - np.concatenate([v[m == 1] for v, m in zip(after, masks)])
    want = 1.0 - d.var(ddof=1) / (g.var(ddof=1) + 1e-5)
    logged = [row for row in metrics_log.read(tr.metrics_path) if row["step"] == 1]
    assert logged and logged[-1]["critic/vf_explained_var"] == pytest.approx(want, abs=1e-4)
    H.shutdown(r)
    for w in getattr(tr.critic_wg, "workers", []):
        ray.kill(w)
