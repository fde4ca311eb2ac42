"""SPA stages 2-3 on the household game: collection (JSONL, resume), serialization (readouts, truncation), the
progress estimator (readouts, padding, causal windows) and its training with a tiny random model (held-out loss)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from threespo_verl.algos.spa import grounding, progress_loss
from threespo_verl.envs import make
from threespo_verl.io_utils import repair_jsonl_tail as repair_tail
from threespo_verl.spa.collect import collect, read_trajectories
from threespo_verl.spa.progress import (
    PE_JSON,
    ProgressEstimator,
    TemplateError,
    evaluate,
    record_turns,
    serialize,
    serialize_windows,
    split_heldout,
    train_pe,
)
from threespo_verl.testing import ScriptedPolicy, household_plans, scripted_sampler

torch.set_num_threads(1)

MAX_STEPS = 8
KEYS = {"format", "task_id", "env_name", "task_type", "rollout", "history_length", "n_steps", "reward", "won",
        "timeout", "steps"}
STEP_KEYS = {"messages", "reply", "action", "valid", "parse_reason", "admissible_actions", "observation",
             "state_changed", "done"}


def _short_tasks(n):
    """Household train tasks with short oracle plans: the plan-biased scripted policy wins about half of them in
    MAX_STEPS steps, so the final rewards differ (an estimator has something to learn)."""
    env = make("household")
    return [t for t in env.tasks("train")[:200] if len(env.oracle_actions(t)) <= 5][:n]


def _policy(tasks):
    return ScriptedPolicy(plans=household_plans(tasks), plan_weight=1000, plan_move_weight=300)


def _factory():
    return make("household", max_steps=MAX_STEPS)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A tiny random Qwen2 (the project's tiny-qwen2 builder; in-process BPE tokenizer, ChatML template)."""
    from threespo_verl.models import build_tiny

    out = tmp_path_factory.mktemp("spa") / "tiny-qwen2"
    build_tiny(out, smollm2_dir=None)
    return out


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, tiny) -> Path:
    """A tiny random Llama (SmolLM2's architecture) with the same tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("spa") / "tiny-llama"
    tok = AutoTokenizer.from_pretrained(tiny)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok) + 64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=4096,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def collected(tmp_path_factory) -> Path:
    tasks = _short_tasks(16)
    out = tmp_path_factory.mktemp("spa") / "traj.jsonl"
    collect(tasks, _factory, scripted_sampler(_policy(tasks), 0), 4, out, progress=False)
    return out


@pytest.fixture(scope="module")
def records(collected):
    return read_trajectories(collected)


@pytest.fixture(scope="module")
def tok(tiny):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny)


def _conversation(messages, replies, observations):
    conv = list(messages[0])
    for t, reply in enumerate(replies):
        conv.append({"role": "assistant", "content": reply})
        if t < len(replies) - 1:
            conv.append({"role": "user", "content": observations[t]})
    return conv


def _random_head(pe: ProgressEstimator, seed: int = 0) -> ProgressEstimator:
    """A fresh head starts at 0 (c_t = 0 everywhere); give it random weights to test what it reads."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        pe.model.score.weight.copy_(torch.randn(pe.model.score.weight.shape, generator=g))
    return pe


# ---- collect ---------------------------------------------------------------------------------------------------------
def test_collect_writes_one_valid_line_per_trajectory(records):
    assert len(records) == 64
    assert sorted((r["task_id"], r["rollout"]) for r in records) == sorted(
        (t.task_id, k) for t in _short_tasks(16) for k in range(4))
    for r in records:
        assert KEYS <= set(r) and r["env_name"] == "household" and r["task_type"] in ("pick", "look")
        assert r["n_steps"] == len(r["steps"]) and 1 <= r["n_steps"] <= MAX_STEPS
        assert r["reward"] in (0.0, 1.0) and r["won"] == (r["reward"] == 1.0)
        assert r["won"] or r["n_steps"] == MAX_STEPS  # an episode ends by winning or at the horizon
        for i, s in enumerate(r["steps"]):
            assert STEP_KEYS <= set(s)
            assert [m["role"] for m in s["messages"]] == ["user"]
            assert f"step {i + 1} " in s["messages"][0]["content"] or i == 0
            assert s["done"] == (i == r["n_steps"] - 1)
            # validity is the env's: a parsed admissible action; g_t agrees with it in household
            assert s["valid"] == (s["action"] in s["admissible_actions"])
            g = grounding("household", s["action"], s["observation"], s["admissible_actions"], s["valid"])
            assert g == float(s["valid"])
            if not s["valid"]:
                assert not s["state_changed"] and s["observation"] == "Nothing happens."
    rewards = [r["reward"] for r in records]
    assert 0.25 < np.mean(rewards) < 0.75  # the scripted policy wins some and loses some
    assert any(not s["valid"] for r in records for s in r["steps"])  # malformed replies happen too


def test_collect_resumes_after_a_crash_and_a_torn_line(tmp_path):
    tasks = _short_tasks(3)
    out = tmp_path / "traj.jsonl"
    inner = scripted_sampler(_policy(tasks), 1)
    calls = {"n": 0}

    async def crashing(messages, n, choices=()):
        calls["n"] += 1
        if calls["n"] > 12:
            raise RuntimeError("sampler died")
        return await inner(messages, n, choices)

    with pytest.raises(RuntimeError, match="sampler died"):
        collect(tasks, _factory, crashing, 3, out, progress=False)
    first = read_trajectories(out)
    assert 1 <= len(first) < 9 and out.read_text().endswith("\n")  # whole lines only
    with open(out, "a") as f:
        f.write('{"task_id": "household/train/0000')  # a line torn by a kill
    assert read_trajectories(out) == first  # readers ignore the torn tail
    stats = collect(tasks, _factory, scripted_sampler(_policy(tasks), 2), 3, out, progress=False)
    assert stats.cut_bytes > 0 and stats.skipped == len(first) and stats.written == 9 - len(first)
    done = read_trajectories(out)
    assert sorted((r["task_id"], r["rollout"]) for r in done) == sorted((t.task_id, k) for t in tasks for k in range(3))
    assert done[:len(first)] == first
    again = collect(tasks, _factory, scripted_sampler(_policy(tasks), 3), 3, out, progress=False)
    assert (again.written, again.skipped, again.cut_bytes) == (0, 9, 0)
    more = collect(tasks, _factory, scripted_sampler(_policy(tasks), 3), 4, out, progress=False)  # raise M
    assert (more.written, more.skipped) == (3, 9) and len(read_trajectories(out)) == 12


def test_repair_tail_cuts_only_the_torn_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"a": 1}\n{"b": 2}\n{"c": ')
    assert repair_tail(p) == len('{"c": ') and p.read_text() == '{"a": 1}\n{"b": 2}\n'
    assert repair_tail(p) == 0
    p.write_text('{"a": 1}\nnot json\n')
    assert repair_tail(p) == len("not json\n") and p.read_text() == '{"a": 1}\n'
    assert repair_tail(tmp_path / "missing.jsonl") == 0


# ---- serialization ---------------------------------------------------------------------------------------------------
def test_serialize_one_readout_per_action_turn_at_its_last_token(records, tok):
    for r in records[:12]:
        messages, replies, observations = record_turns(r)
        s = serialize(messages, replies, tok, 100_000, observations)
        assert not s.truncated and s.head_kept and (s.first_step, s.end_step) == (0, r["n_steps"])
        assert len(s.readouts) == r["n_steps"] == len(set(s.readouts))
        # the sequence is the chat template's rendering of the whole conversation (ending at the last readout)
        full = tok.apply_chat_template(_conversation(messages, replies, observations), tokenize=False)
        assert tok.decode(s.input_ids) == full.rstrip()
        # each readout closes its assistant turn: the span decodes to the reply + end-of-turn marker
        on = np.flatnonzero(s.assistant_mask)
        spans = np.split(on, np.flatnonzero(np.diff(on) > 1) + 1)
        assert len(spans) == r["n_steps"]
        for t, (span, ro) in enumerate(zip(spans, s.readouts)):
            assert span[-1] == ro and s.input_ids[ro] == tok.convert_tokens_to_ids("<|im_end|>")
            assert tok.decode([s.input_ids[i] for i in span]) == replies[t] + "<|im_end|>"
            after = tok.decode(s.input_ids[ro + 1:])
            assert after.startswith("\n<|im_start|>user\n") if t < len(replies) - 1 else after == ""


def test_serialize_default_user_turns_are_the_next_prompts(records, tok):
    messages, replies, observations = record_turns(records[0])
    s = serialize(messages, replies, tok, 100_000)
    text = tok.decode(s.input_ids)
    assert messages[1][0]["content"] in text and text.count("<|im_start|>user") == len(replies)
    assert len(s.input_ids) > len(serialize(messages, replies, tok, 100_000, observations).input_ids)


def test_truncation_drops_old_turns_whole_and_keeps_readouts(records, tok):
    r = next(r for r in records if r["n_steps"] == MAX_STEPS)
    messages, replies, observations = record_turns(r)
    full = serialize(messages, replies, tok, 100_000, observations)
    limit = len(full.input_ids) - 60
    s = serialize(messages, replies, tok, limit, observations)
    assert s.truncated and s.head_kept and 0 < s.first_step and s.end_step == MAX_STEPS and len(s.input_ids) <= limit
    assert len(s.readouts) == MAX_STEPS - s.first_step
    assert all(s.input_ids[i] == tok.convert_tokens_to_ids("<|im_end|>") for i in s.readouts)
    # the head (first prompt) is kept verbatim, then the kept turns exactly as in the full sequence
    first_prompt = tok.apply_chat_template(messages[0], tokenize=False)
    assert tok.decode(s.input_ids).startswith(first_prompt)
    kept_text = tok.decode(s.input_ids)[len(first_prompt):]
    assert tok.decode(full.input_ids).endswith(kept_text) and kept_text.startswith("<|im_start|>assistant")
    # every step is scored exactly once across the windows, in order
    windows = serialize_windows(messages, replies, tok, limit, observations)
    assert [t for w in windows for t in w.steps] == list(range(MAX_STEPS))
    assert windows[-1] == s and windows[0].first_step == 0 and not windows[0].truncated
    # no room for the head next to the last turn: the head goes, the turn stays
    last_turn = len(s.input_ids) - s.readouts[-2] - 1 if len(s.readouts) > 1 else len(s.input_ids)
    tight = serialize(messages, replies, tok, last_turn + 5, observations)
    assert tight.truncated and not tight.head_kept and len(tight.readouts) >= 1
    with pytest.raises(ValueError, match="max_length"):
        serialize(messages, replies, tok, 5, observations)


def test_serialize_rejects_bad_input_and_prefix_unstable_templates(records, tok):
    messages, replies, observations = record_turns(records[0])
    with pytest.raises(ValueError, match="at least one step"):
        serialize([], [], tok, 1000)
    with pytest.raises(ValueError, match="step prompts"):
        serialize(messages[:1], replies, tok, 1000, observations)

    class StripsOldTurns:  # a template that rewrites earlier assistant turns (as Qwen3's strips reasoning)
        def __init__(self, inner):
            self.inner = inner

        def apply_chat_template(self, msgs, **kw):
            last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=-1)
            msgs = [dict(m, content="...") if m["role"] == "assistant" and i != last else m for i, m in enumerate(msgs)]
            return self.inner.apply_chat_template(msgs, **kw)

        def __call__(self, *a, **kw):
            return self.inner(*a, **kw)

    with pytest.raises(TemplateError, match="prefix-stable"):
        serialize(messages, replies, StripsOldTurns(tok), 100_000, observations)


# ---- estimator -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_estimator_reads_the_readouts_and_padding_changes_nothing(arch, request, records):
    path = request.getfixturevalue("tiny" if arch == "qwen2" else "tiny_llama")
    pe = ProgressEstimator.from_pretrained(path, max_length=100_000, device="cpu")
    assert type(pe.model).__name__ == ("Qwen2" if arch == "qwen2" else "Llama") + "ForTokenClassification"
    assert np.all(pe.predict(records[0]) == 0.0)  # a fresh head starts at c_t = 0
    _random_head(pe)
    few = records[:4]
    one_by_one = [pe.predict(r) for r in few]
    assert [len(c) for c in one_by_one] == [r["n_steps"] for r in few]
    assert np.ptp(np.concatenate(one_by_one)) > 0  # the head reads something that varies
    for c, b in zip(one_by_one, pe.predict_many(few, batch_size=4)):  # right padding in a batch: same values
        np.testing.assert_allclose(b, c, atol=1e-5)
    # c_t is the head's output at the readout token of a plain forward pass
    (w,) = pe.encode(few[0])
    with torch.no_grad():
        logits = pe.model(input_ids=torch.tensor([w.input_ids])).logits[0, :, 0].numpy()
    np.testing.assert_allclose(one_by_one[0], logits[w.readouts], atol=1e-5)


def test_windows_of_a_truncated_trajectory_score_like_the_full_one_where_context_is_complete(tiny, records):
    """The backbone is causal: steps scored by a window that keeps the head and starts at step 0 see exactly the
    context they have in the full trajectory, so their c_t are the same; later windows see less (truncated)."""
    r = next(r for r in records if r["n_steps"] == MAX_STEPS)
    pe_full = _random_head(ProgressEstimator.from_pretrained(tiny, max_length=100_000, device="cpu"))
    full_len = len(pe_full.encode(r)[0].input_ids)
    pe_short = _random_head(ProgressEstimator.from_pretrained(tiny, max_length=full_len - 60, device="cpu"))
    windows = pe_short.encode(r)
    assert len(windows) >= 2 and pe_short.stats == {"encoded": 1, "truncated": 1}
    assert pe_full.stats == {"encoded": 1, "truncated": 0}
    c_full, c_short = pe_full.predict(r), pe_short.predict(r)
    assert len(c_short) == MAX_STEPS
    k = windows[0].end_step
    np.testing.assert_allclose(c_short[:k], c_full[:k], atol=1e-5)
    assert not np.allclose(c_short[k:], c_full[k:], atol=1e-5)


def test_train_pe_lowers_the_heldout_loss(tiny, collected, records, tmp_path):
    out = tmp_path / "pe"
    m = train_pe(collected, out, tiny, epochs=3, lr=3e-4, batch_size=8, heldout_fraction=0.25, seed=0,
                 max_length=2048, progress=False)
    _, held = split_heldout(len(records), 0.25, 0)
    held_r = np.array([records[i]["reward"] for i in held])
    assert (m["n_train"], m["n_heldout"], m["truncated_trajectories"]) == (48, 16, 0)
    # before training the fresh head gives sum_t c_t = 0: MSE = mean R^2 of the held-out set
    assert m["heldout_before"]["mse"] == pytest.approx(np.mean(held_r ** 2))
    assert m["heldout_after"]["mse"] < 0.75 * m["heldout_before"]["mse"]
    assert m["heldout_after"]["mae"] < m["heldout_before"]["mae"]
    assert m["optimizer_steps"] == 3 * 6 and all(np.isfinite(m["train_loss_per_epoch"]))
    # the saved estimator reloads with its trained head and reproduces the held-out numbers
    saved = json.loads((out / PE_JSON).read_text())
    assert saved["max_length"] == 2048 and saved["metrics"]["heldout_after"] == m["heldout_after"]
    # the settings benchmarks/bench_learning.py compares before it reuses a saved estimator
    assert {k: saved["metrics"][k] for k in ("lr", "epochs", "n_trajectories")} == {
        "lr": 3e-4, "epochs": 3, "n_trajectories": len(records)}
    pe = ProgressEstimator.from_pretrained(out, device="cpu")
    assert pe.max_length == 2048
    again = evaluate(pe, [records[i] for i in held])
    assert again["mse"] == pytest.approx(m["heldout_after"]["mse"], abs=1e-5)
    # the metric is the progress loss: mean over trajectories of (R - sum_t c_t)^2
    losses = [progress_loss(pe.predict(records[i]), records[i]["reward"]) for i in held]
    assert np.mean(losses) == pytest.approx(again["mse"], abs=1e-6)


def test_train_pe_is_deterministic_and_trains_through_truncation(tiny, records, tmp_path):
    data = tmp_path / "few.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records[:10]))
    runs = [train_pe(data, tmp_path / f"pe{i}", tiny, epochs=1, lr=3e-4, batch_size=4, heldout_fraction=0.2,
                     seed=3, max_length=700, micro_batch_size=2, progress=False) for i in range(2)]
    assert runs[0]["truncated_trajectories"] > 0
    assert runs[0]["heldout_after"] == runs[1]["heldout_after"]
    assert runs[0]["train_loss_per_epoch"] == runs[1]["train_loss_per_epoch"]
    with pytest.raises(ValueError, match="max_length"):
        train_pe(data, tmp_path / "bad", tiny, max_length=20, progress=False)


# ---- command line ----------------------------------------------------------------------------------------------------
def test_cli_collect_scripted_and_train_pe(tiny, tmp_path, capsys):
    from threespo_verl.spa.cli import main

    out = tmp_path / "t.jsonl"
    args = ["collect", "--env", "household", "--tasks", "3", "--m", "2", "--out", str(out), "--scripted",
            "--max-steps", "4", "--quiet"]
    assert main(args) == 0
    recs = read_trajectories(out)
    assert len(recs) == 6 and all("scripted stand-in" in r["policy"] for r in recs)
    assert all(r["n_steps"] <= 4 for r in recs)
    assert main(args) == 0 and len(read_trajectories(out)) == 6  # resumed: nothing new
    assert "0 trajectories written" in capsys.readouterr().out
    assert main(["train-pe", "--data", str(out), "--base", str(tiny), "--out", str(tmp_path / "pe"), "--lr", "1e-4",
                 "--heldout", "0.34", "--device", "cpu", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "held-out sum_t c_t vs R: MSE" in printed and (tmp_path / "pe" / PE_JSON).is_file()
    with pytest.raises(SystemExit):
        main(["collect", "--env", "household", "--tasks", "1", "--m", "1", "--out", str(out)])  # no policy chosen
