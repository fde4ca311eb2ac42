"""Trajectory rows (``rollout/trajectory.py``): one household episode as one token row, hand-checked. The rewards sit
exactly at each action turn's closing token and nowhere else, the tokens are the chat template's rendering of the
episode's conversation, and an episode over the budget loses its oldest turns (counted), never silently."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from threespo_verl.envs import make
from threespo_verl.envs.prompts import render_prompt
from threespo_verl.rollout.expand import Sample, play_episode
from threespo_verl.rollout.trajectory import TemplateShape, TrajectoryTokens, place_turn_rewards


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from transformers import AutoTokenizer

    from threespo_verl.models import build_tiny

    folder = tmp_path_factory.mktemp("tiny") / "tiny"
    build_tiny(folder)
    return AutoTokenizer.from_pretrained(folder)


def _episode(tok, task, replies, budget=10**6, reply_cap=32, eos=True, history_length=1):
    """Play ``task`` with the given reply texts (one per step, then the last repeated) through TrajectoryTokens;
    returns (steps, row, the contexts each reply was generated from, the user messages of every step)."""
    env = make("household", max_steps=len(replies))
    ctx = TrajectoryTokens(TemplateShape(tok), budget=budget, reply_cap=reply_cap)
    contexts, users = [], []

    async def sample(messages, n, choices):
        t = len(contexts)
        contexts.append(ctx.open(messages))
        users.append(messages)
        ids = tok.encode(replies[t], add_special_tokens=False) + ([tok.eos_token_id] if eos else [])
        ctx.close(ids)
        return [Sample(replies[t])]

    steps = asyncio.run(play_episode(task, env, sample, history_length=history_length, reasoning=False,
                                     invalid_action_penalty=0.1))
    return steps, ctx.row(), contexts, users


def test_household_oracle_row_rewards_sit_at_each_action_turns_closing_token(tok):
    env = make("household")
    task = env.tasks("train")[2]  # look: go to diningtable 1, take pen 1 from it, go to desk 1, use desklamp 1
    plan = env.oracle_actions(task)
    # step 1 is malformed (invalid: penalty 0.1, nothing happens), then the oracle's plan: won at the last step
    replies = [f"<action>{plan[0]}</action>", "I am not sure.", *[f"<action>{a}</action>" for a in plan[1:]]]
    steps, row, contexts, users = _episode(tok, task, replies)
    assert len(steps) == len(plan) + 1 == 5 and steps[-1].branch.won
    assert [s.branch.valid for s in steps] == [True, False, True, True, True]
    # hand-computed step rewards (ppo): R = 1 on the last step, -0.1 on the invalid one, 0 elsewhere
    rewards = [s.branch.reward for s in steps]
    assert rewards == [0.0, -0.1, 0.0, 0.0, 1.0]
    scores = np.array(place_turn_rewards(len(row.response_ids), row.turn_ends, rewards))
    ends = row.turn_ends
    assert len(ends) == 5 and row.first_turn == 0 and row.dropped == 0
    assert np.flatnonzero(scores).tolist() == [ends[1], ends[4]]  # nowhere else (the zero rewards are 0 anyway)
    assert scores[ends[1]] == pytest.approx(-0.1) and scores[ends[4]] == pytest.approx(1.0)
    assert scores.sum() == pytest.approx(0.9)
    # each closing token is the reply's eos, generated (mask 1); the row ends at the last one
    assert all(row.response_ids[p] == tok.eos_token_id and row.response_mask[p] == 1 for p in ends)
    assert ends[-1] == len(row.response_ids) - 1
    # mask 1 exactly on the replies, 0 on the user turns between them
    mask = np.array(row.response_mask)
    runs = np.flatnonzero(np.diff(np.r_[0, mask, 0]) != 0).reshape(-1, 2)
    assert [(b - 1) for _, b in runs] == ends
    for (a, b), reply in zip(runs, replies):
        assert tok.decode(row.response_ids[a:b], skip_special_tokens=True) == reply

    # the tokens are the chat template's rendering of the conversation: user turn t = render_prompt of step t
    obs, _info = make("household", max_steps=5).reset(task)
    assert users[0] == render_prompt("household", obs, [], history_length=1, reasoning=False)
    conv = []
    for u, reply in zip(users, replies):
        conv += u + [{"role": "assistant", "content": reply}]
    text = tok.apply_chat_template(conv, tokenize=False).rstrip()
    assert row.prompt_ids + row.response_ids == tok.encode(text, add_special_tokens=False)
    # every reply was generated from the row's own prefix (what the actor and critic are trained on)
    full = row.prompt_ids + row.response_ids
    for t, c in enumerate(contexts):
        assert c == full[: len(row.prompt_ids) + runs[t][0]], t


def test_reply_cut_by_the_token_cap_closes_on_its_last_generated_token(tok):
    task = make("household").tasks("train")[0]
    _steps, row, _c, _u = _episode(tok, task, ["<action>look</action>"] * 2, eos=False)
    ends = row.turn_ends
    assert tok.decode([row.response_ids[ends[0]]]) == ">" and row.response_mask[ends[0]] == 1
    # the end-of-turn marker the reply did not write is the template's, masked, right after it
    assert row.response_ids[ends[0] + 1] == tok.eos_token_id and row.response_mask[ends[0] + 1] == 0


def test_an_episode_over_the_budget_drops_its_oldest_turns_and_counts_them(tok):
    task = make("household").tasks("train")[0]
    replies = ["<action>look</action>"] * 6
    _s, whole, _c, _u = _episode(tok, task, replies)
    per_turn = len(whole.prompt_ids) + 40  # about one user turn and one reply
    budget = 3 * per_turn
    steps, row, contexts, users = _episode(tok, task, replies, budget=budget, reply_cap=32)
    assert len(steps) == 6 and row.n_turns == 6
    assert 0 < row.dropped < 6 and row.first_turn == row.dropped
    assert len(row.turn_ends) == 6 - row.dropped  # the dropped turns (and their rewards) left the row
    # checked before every reply: context + reply cap within the budget
    assert all(len(c) + 32 <= budget for c in contexts)
    # the row now opens with the first kept step's user turn, rendered as a first turn
    first = tok.encode(tok.apply_chat_template(users[row.first_turn], add_generation_prompt=True, tokenize=False),
                       add_special_tokens=False)
    assert row.prompt_ids == first
    # the last reply's context is the row's prefix: training sees what the policy saw
    full = row.prompt_ids + row.response_ids
    assert contexts[-1] == full[: len(contexts[-1])]
    assert len(full) <= budget


def test_budget_and_reward_checks(tok):
    with pytest.raises(ValueError, match="budget > reply_cap"):
        TrajectoryTokens(TemplateShape(tok), budget=10, reply_cap=10)
    with pytest.raises(ValueError, match="3 action turns but 2 rewards"):
        place_turn_rewards(10, [1, 4, 9], [0.0, 1.0])
    with pytest.raises(ValueError, match="outside a response"):
        place_turn_rewards(5, [7], [1.0])
    shape = TemplateShape(tok)
    assert (shape.system, shape.end, shape.trail) == ("", "<|im_end|>", "\n")


def test_trajectory_config_is_checked_up_front():
    from hydra import compose, initialize_config_module

    from threespo_verl.verl_glue.trainer import check_trajectory_config

    def cfg(*extra):
        with initialize_config_module(config_module="threespo_verl.config", version_base=None):
            return compose(config_name="threespo_trainer_cpu", overrides=[
                "algorithm=ppo", "actor_rollout_ref.model.path=/nonexistent",
                "actor_rollout_ref.rollout.max_model_len=4096",
                "data.max_prompt_length=1024", "data.max_response_length=3072", *extra])

    assert check_trajectory_config(cfg("env.max_tokens_per_step=48")) == 4096
    with pytest.raises(ValueError, match="env.max_tokens_per_step is null"):
        check_trajectory_config(cfg())
    with pytest.raises(ValueError, match="does not fit the model's context of 4096"):
        check_trajectory_config(cfg("env.max_tokens_per_step=48", "data.max_response_length=4000"))
    with pytest.raises(ValueError, match=r"critic.ppo_max_token_len_per_gpu=2048 is smaller than one row"):
        check_trajectory_config(cfg("env.max_tokens_per_step=48", "critic.ppo_max_token_len_per_gpu=2048"))
