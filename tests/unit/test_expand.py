"""One node expansion and one episode (rollout/expand.py) on the household game with hand-computed Eq.1-3 values."""

from __future__ import annotations

import asyncio
import math

import pytest

from threespo_verl.envs import make
from threespo_verl.envs.restore import EnvCache
from threespo_verl.rollout.expand import LocalScorer, Sample, ScoreParams, expand_node, play_episode
from threespo_verl.rollout.local import apply_expansion, explore_3spo, record_trajectories, run_episodes
from threespo_verl.rollout.tree import TaskTree
from threespo_verl.testing import ScriptedPolicy, parse_prompt, scripted_sampler
from threespo_verl.store.state_store import StateStore, scoped_keys


@pytest.fixture()
def task():
    return make("household").tasks("train")[3]


def fixed_sampler(replies):
    """Replies in a fixed order; records what it was asked."""
    asked = []

    async def sample(messages, n, choices=()):
        asked.append((messages, n))
        return [Sample(replies[i % len(replies)]) for i in range(n)]

    sample.asked = asked
    return sample


def run(coro):
    return asyncio.run(coro)


def root_key(task):
    return make("household").reset(task)[0].state_key


def test_branching_merging_and_hand_computed_rewards(task):
    env = make("household")
    obs, _info = env.reset(task)
    go = next(a for a in obs.admissible_actions if a.startswith("go to"))
    # root seen in 4 trajectories, 1 successful, t = 5 after the commit
    store = StateStore()
    for won in (False, False, False, True):
        store.record_trajectory(scoped_keys(task.task_id, [obs.state_key]), won)
    store.commit()
    params = ScoreParams(alpha=0.5)
    sample = fixed_sampler([f"<action>{go}</action>", f"<action>{go.upper()}</action>", "no tags", "<action>fly"
                            " away</action>", "<action>look</action>"])
    cache = EnvCache(lambda: make("household"))
    exp = run(expand_node(task, (), [], cache, sample, LocalScorer(store), params))
    # Eq.1: SR = 1/(4+1e-6), lambda = 0.5 ln 5, S = exp(-lambda SR); Eq.3: n = ceil(8 S)
    s_t = math.exp(-0.5 * math.log(5) * (1 / (4 + 1e-6)))
    assert exp.score == pytest.approx(s_t)
    assert exp.n_branches == exp.n_score == math.ceil(8 * s_t) == 7
    assert sample.asked[0][1] == 7
    # 7 replies cycle through the 5: go, GO, no tags, fly away, look, go, GO -> merged by action text
    by_text = {b.action_text: b for b in exp.branches}
    assert by_text[go].merged == 4 and by_text["no tags"].merged == 1
    assert len(exp.branches) == 4 and sum(b.merged for b in exp.branches) == 7 == len(exp.replies)
    # Eq.2 by hand: w = 0.5 exp(-0.1 * 4); unseen child S = 1
    w = 0.5 * math.exp(-0.1 * 4)
    assert by_text[go].valid and by_text[go].reward == pytest.approx(w * 1 + (0.5 - w) * (s_t - 1.0))
    # malformed reply and an inadmissible action: invalid, no state change, -0.1
    for text in ("no tags", "fly away"):
        b = by_text[text]
        assert not b.valid and b.state_key == obs.state_key and b.reward == pytest.approx(-0.1)
        assert b.r_novel == 0 and b.r_score_diff == 0 and b.r_penalty == pytest.approx(0.1)
    # 'look' is valid but changes nothing: no novelty, S(s_t+1) = S(s_t)
    assert by_text["look"].valid and by_text["look"].reward == pytest.approx(0.0)
    # children are parked: expanding the 'go' child does not replay
    before = cache.stats["replayed_steps"]
    run(expand_node(task, (go,), [(obs.text, go)], cache, fixed_sampler(["<action>look</action>"]),
                    LocalScorer(store), params))
    assert cache.stats["replayed_steps"] == before


def test_budget_caps_branches_and_prompt_shows_the_node(task):
    store = StateStore()
    sample = fixed_sampler(["<action>look</action>"])
    exp = run(expand_node(task, (), [], EnvCache(lambda: make("household")), sample, LocalScorer(store),
                          ScoreParams(), max_branches=3))
    assert exp.n_score == 8 and exp.n_branches == 3 and sample.asked[0][1] == 3
    goal, actions = parse_prompt(sample.asked[0][0][0]["content"])
    assert goal == make("household").reset(task)[0].goal and "look" in actions


def test_pruned_node_samples_nothing_and_records_its_path(task):
    key = root_key(task)
    store = StateStore()
    for _ in range(10):  # N_fail = 10 >= xi, SR = 0 <= zeta -> S = 0
        store.record_trajectory(scoped_keys(task.task_id, [key]), False)
    store.commit()
    sample = fixed_sampler(["<action>look</action>"])
    exp = run(expand_node(task, (), [], EnvCache(lambda: make("household")), sample, LocalScorer(store),
                          ScoreParams()))
    assert exp.pruned and exp.branches == [] and exp.score == 0.0 and sample.asked == []
    record_trajectories(store, apply_expansion(TaskTree(task, 10), 0, exp), ScoreParams())
    assert store.pending_trajectories == 1
    store.commit()
    assert store.lookup(scoped_keys(task.task_id, [key]))[0].tolist() == [11]


def test_scores_come_from_the_last_commit_only(task):
    key = root_key(task)
    store = StateStore()
    for _ in range(10):
        store.record_trajectory(scoped_keys(task.task_id, [key]), False)  # pending, not committed
    exp = run(expand_node(task, (), [], EnvCache(lambda: make("household")), fixed_sampler(["<action>look</action>"]),
                          LocalScorer(store), ScoreParams()))
    assert exp.score == 1.0 and exp.n_branches == 8


def test_episode_outcome_on_the_last_step(task):
    env = make("household", max_steps=30)
    plan = env.oracle_actions(task)
    sample = fixed_sampler([f"<action>{a}</action>" for a in plan])

    async def oracle(messages, n, choices=()):  # reply the plan in order
        i = len(oracle.calls)
        oracle.calls.append(i)
        return [Sample(f"<action>{plan[i]}</action>")]

    oracle.calls = []
    steps = run(play_episode(task, env, oracle))
    assert len(steps) == len(plan) and steps[-1].branch.won and steps[-1].branch.reward == 1.0
    assert all(s.branch.reward == 0.0 for s in steps[:-1])
    assert steps[1].state_key == steps[0].branch.state_key  # each step's anchor is the previous step's result
    del sample


def test_malformed_episode_times_out_without_raising(task):
    env = make("household", max_steps=4)
    steps = run(play_episode(task, env, fixed_sampler(["<action>", 12, "</action></action>"])))
    assert len(steps) == 4 and steps[-1].branch.timeout and not any(s.branch.valid for s in steps)
    assert steps[-1].branch.reward == 0.0


def test_local_exploration_is_deterministic_and_within_budget():
    env = make("household")
    tasks = env.tasks("test")[:4]
    results = [explore_3spo(tasks, lambda: make("household", max_steps=10), scripted_sampler(ScriptedPolicy(), 3),
                            StateStore(), budget=40) for _ in range(2)]
    a, b = results
    assert [t.state_dict() for t in a.trees] == [t.state_dict() for t in b.trees]
    assert all(t.env_steps <= 40 for t in a.trees) and a.env_steps == sum(t.env_steps for t in a.trees)
    grpo = run_episodes(tasks, lambda: make("household", max_steps=10), scripted_sampler(ScriptedPolicy(), 3), 4)
    assert grpo.episodes == 16 and grpo.env_steps <= 16 * 10
