"""SFT data (threespo_verl/sft/data.py): one example per expert trajectory with the RL prompts, the loss on the
assistant turns only as verl's MultiTurnSFTDataset computes it, deterministic files, resume; recorded trajectories
of ``spa collect``; ALFWorld walkthroughs and the WebShop oracle where their data is installed."""

from __future__ import annotations

import pandas as pd
import pytest

from threespo_verl.envs import make
from threespo_verl.envs.actions import parse_action
from threespo_verl.envs.prompts import render_prompt
from threespo_verl.sft.data import build_sft_data, expert_reply


def _messages(parquet) -> list[list[dict]]:
    from verl.utils.py_functional import convert_nested_value_to_list_recursive

    return [convert_nested_value_to_list_recursive(m) for m in pd.read_parquet(parquet)["messages"]]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from transformers import AutoTokenizer

    from threespo_verl.models import build_tiny

    folder = tmp_path_factory.mktemp("tiny") / "tiny"
    build_tiny(folder)
    return AutoTokenizer.from_pretrained(folder)


def test_one_example_per_household_oracle_trajectory_with_the_rl_prompts(tmp_path):
    d = build_sft_data("household", tmp_path / "d", split="easy_train", tasks=4, history_length=1,
                       reasoning=False, val_fraction=0.0, progress=False)
    assert (d.n_train, d.n_val, d.kept, d.not_kept, d.written) == (4, 0, 4, 0, 4) and d.val is None
    env = make("household")
    tasks = env.tasks("easy_train")[:4]
    df = pd.read_parquet(d.train)
    assert df["task_id"].tolist() == [t.task_id for t in tasks]  # task order
    for task, msgs in zip(tasks, _messages(d.train)):
        plan = env.oracle_actions(task)
        assert [m["role"] for m in msgs] == ["user", "assistant"] * len(plan)
        # the prompts are RL's: replay the plan and render each state as the agent loop does
        (obs, _info), history = env.reset(task), []
        for t, action in enumerate(plan):
            assert [msgs[2 * t]] == render_prompt("household", obs, history, history_length=1, reasoning=False)
            assert msgs[2 * t + 1]["content"] == f"<action>{action}</action>"
            history.append((obs.text, action))
            obs, _r, terminated, truncated, info = env.step(action)
        assert terminated and not truncated and info["won"]


def test_loss_mask_covers_the_assistant_turns_only(tmp_path, tok):
    from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

    d = build_sft_data("household", tmp_path / "d", split="easy_train", tasks=2, history_length=1,
                       reasoning=True, val_fraction=0.0, progress=False)
    ds = MultiTurnSFTDataset(str(d.train), tok, config={"pad_mode": "no_padding", "max_length": 100000})
    for i, msgs in enumerate(_messages(d.train)):
        item = ds[i]
        ids, mask = item["input_ids"].tolist(), item["loss_mask"].tolist()
        assert ids == tok.encode(tok.apply_chat_template(msgs, tokenize=False), add_special_tokens=False)
        # the tokens with loss are exactly each reply and the end of its turn, in order; no user token has loss
        trained = tok.decode([t for t, m in zip(ids, mask) if m])
        replies = [m["content"] for m in msgs if m["role"] == "assistant"]
        assert trained == "".join(f"{r}<|im_end|>\n" for r in replies)
        untrained = tok.decode([t for t, m in zip(ids, mask) if not m])
        for m in msgs:
            if m["role"] == "user":
                assert m["content"] in untrained
        for r in replies:  # the reasoning format: <think>...</think><action>A</action>, parsed as RL parses it
            assert r.startswith("<think>") and parse_action(r).action is not None


def test_deterministic_and_resumable(tmp_path):
    kw = {"split": "easy_train", "history_length": 1, "reasoning": False, "val_fraction": 0.25, "progress": False}
    a = build_sft_data("household", tmp_path / "a", tasks=8, **kw)
    build_sft_data("household", tmp_path / "b", tasks=8, **kw)
    for name in ("examples.jsonl", "train.parquet", "val.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (a.n_train, a.n_val) == (6, 2)
    # resume: half the tasks first, then all; a torn last line (a killed run) is cut and replayed
    c = build_sft_data("household", tmp_path / "c", tasks=4, **kw)
    assert c.written == 4
    with open(tmp_path / "c" / "examples.jsonl", "a") as f:
        f.write('{"task_id": "household/easy_train/0')
    c = build_sft_data("household", tmp_path / "c", tasks=8, **kw)
    assert c.written == 4
    for name in ("examples.jsonl", "train.parquet", "val.parquet"):
        assert (tmp_path / "c" / name).read_bytes() == (tmp_path / "a" / name).read_bytes(), name
    # one folder, one prompt format
    with pytest.raises(ValueError, match="other settings"):
        build_sft_data("household", tmp_path / "c", tasks=8, **{**kw, "history_length": 2})


def test_step_layout_gives_one_single_turn_example_per_step(tmp_path):
    d = build_sft_data("household", tmp_path / "d", split="easy_train", tasks=3, history_length=1,
                       reasoning=False, val_fraction=0.0, layout="step", progress=False)
    env = make("household")
    steps = sum(len(env.oracle_actions(t)) for t in env.tasks("easy_train")[:3])
    msgs = _messages(d.train)
    assert d.n_train == steps == len(msgs) and all([m["role"] for m in x] == ["user", "assistant"] for x in msgs)
    assert pd.read_parquet(d.train)["step"].tolist()[:3] == [0, 1, 2]


def test_recorded_trajectories_of_spa_collect_are_cloned_when_they_reached_min_reward(tmp_path):
    from threespo_verl.testing import ScriptedPolicy, household_plans, scripted_sampler
    from threespo_verl.spa.collect import collect, read_trajectories

    tasks = make("household").tasks("easy_train")[:4]
    policy = ScriptedPolicy(plans=household_plans(tasks), plan_weight=50.0, plan_move_weight=20.0, p_malformed=0.1)
    traj = tmp_path / "traj.jsonl"
    collect(tasks, lambda: make("household", max_steps=5), scripted_sampler(policy, 0), 3, traj, 1, reasoning=False,
            progress=False)
    recs = read_trajectories(traj)
    won = [r for r in recs if r["won"]]
    assert 0 < len(won) < len(recs), "the scripted policy should win some episodes and lose others"
    d = build_sft_data("household", tmp_path / "d", source="jsonl", trajectories=traj, val_fraction=0.0,
                       history_length=1, progress=False)
    assert (d.kept, d.not_kept) == (len(won), len(recs) - len(won))
    for rec, msgs in zip(won, _messages(d.train)):  # prompts and replies as recorded
        want = []
        for s in rec["steps"]:
            want += s["messages"] + [{"role": "assistant", "content": s["reply"]}]
        assert msgs == want
    everything = build_sft_data("household", tmp_path / "all", source="jsonl", trajectories=traj,
                                val_fraction=0.0, min_reward=0.0, history_length=1, progress=False)
    assert everything.kept == len(recs)


def test_expert_reply_formats():
    assert expert_reply("put a mug in desk 1.", "go to desk 1", False) == "<action>go to desk 1</action>"
    r = expert_reply("put a mug in desk 1.", "go to desk 1", True)
    assert r == ("<think>The task is to put a mug in desk 1. The next step is: go to desk 1.</think>"
                 "<action>go to desk 1</action>")


def test_alfworld_walkthroughs(tmp_path, alfworld_data):
    """Every game file carries a walkthrough; played with the RL prompts, each wins (checked on valid_seen)."""
    d = build_sft_data("alfworld", tmp_path / "d", split="valid_seen", tasks=3, data_dir=alfworld_data,
                       history_length=2, reasoning=False, val_fraction=0.0, progress=False)
    assert (d.kept, d.not_kept, d.n_train) == (3, 0, 3)
    env = make("alfworld", data_dir=alfworld_data)
    for task, msgs in zip(env.tasks("valid_seen")[:3], _messages(d.train)):
        walk = env.walkthrough(task)
        assert [m["content"] for m in msgs if m["role"] == "assistant"] == [f"<action>{a}</action>" for a in walk]
        assert "You are an expert agent operating in the ALFRED Embodied Environment" in msgs[0]["content"]
    env.close()


def test_webshop_oracle(tmp_path, webshop_data):
    d = build_sft_data("webshop", tmp_path / "d", split="train", tasks=3, data_dir=webshop_data,
                       history_length=2, reasoning=False, val_fraction=0.0, progress=False)
    assert d.kept + d.not_kept == 3 and d.kept >= 2
    msgs = _messages(d.train)[0]
    assert msgs[0]["content"].startswith("You are an expert autonomous agent operating in the WebShop")
    assert msgs[1]["content"].startswith("<action>search[")
    assert msgs[-1]["content"] == "<action>click[buy now]</action>"
