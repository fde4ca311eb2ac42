"""The shared file and seed helpers: JSONL reading that survives a line cut by a kill (and eval's resume built on it),
atomic writes, and seeds that equal the formulas they replaced."""

from __future__ import annotations

import hashlib
import json
import random

import pytest

from threespo_verl.io_utils import atomic_write, read_jsonl, repair_jsonl_tail, stable_seed


def _write(path, *lines, tail=""):
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + tail)


def test_a_truncated_last_line_is_skipped_with_a_warning(tmp_path):
    p = tmp_path / "x.jsonl"
    _write(p, {"a": 1}, {"b": 2}, tail='{"c": 3, "d"')  # a kill in the middle of a write
    with pytest.warns(UserWarning, match="last line is incomplete"):
        assert read_jsonl(p) == [{"a": 1}, {"b": 2}]
    _write(p, {"a": 1}, tail='{"c": 3}')  # complete JSON but no newline: the write was cut before it
    with pytest.warns(UserWarning, match="last line is incomplete"):
        assert read_jsonl(p) == [{"a": 1}]
    p.write_text('{"a": 1}\n{"c": \n')  # newline-terminated, not JSON: cut too (as repair_jsonl_tail does)
    with pytest.warns(UserWarning, match="last line is not JSON"):
        assert read_jsonl(p) == [{"a": 1}]


def test_a_damaged_line_elsewhere_raises_or_is_skipped(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"a": 1}\nnot json\n{"b": 2}\n\n')
    with pytest.raises(ValueError, match=r"x.jsonl:2 is not a JSON line"):
        read_jsonl(p)
    with pytest.warns(UserWarning, match=r"x.jsonl:2 is not a JSON line"):
        assert read_jsonl(p, damaged="skip") == [{"a": 1}, {"b": 2}]
    assert read_jsonl(tmp_path / "missing.jsonl") == []


def test_eval_resume_skips_the_cut_line_and_appends_on_a_fresh_line(tmp_path):
    from threespo_verl.envs import make
    from threespo_verl.evaluate import resume_records

    tasks = make("household").tasks("test")[:3]
    ep = tmp_path / "episodes.jsonl"
    rec = {"seed": 0, "task_id": tasks[0].task_id, "task_type": tasks[0].task_type, "won": True, "score": 1.0}
    failed = {**rec, "task_id": tasks[1].task_id, "won": False, "error": "RuntimeError: boom"}
    other = {**rec, "seed": 5}  # a seed this run does not play
    _write(ep, rec, failed, other, tail='{"seed": 0, "task_id": "household/te')
    with pytest.warns(UserWarning, match="last line is incomplete"):
        assert resume_records(ep, tasks, [0, 1]) == [rec]
    with open(ep, "a", encoding="utf-8") as f:  # what the eval appends next
        f.write(json.dumps({**rec, "seed": 1}) + "\n")
    assert [r["seed"] for r in read_jsonl(ep)] == [0, 0, 5, 1]


def test_repair_tail(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"a": 1}\n{"b": 2}\n{"c": ')
    assert repair_jsonl_tail(p) == len('{"c": ') and p.read_text() == '{"a": 1}\n{"b": 2}\n'
    assert repair_jsonl_tail(p) == 0 and repair_jsonl_tail(tmp_path / "missing") == 0


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    p = tmp_path / "sub" / "state.json"
    with atomic_write(p) as f:
        f.write("old")
    with pytest.raises(RuntimeError):
        with atomic_write(p) as f:
            f.write("half of the new")
            raise RuntimeError("killed")
    assert p.read_text() == "old" and sorted(x.name for x in p.parent.iterdir()) == ["state.json"]
    with atomic_write(p, "wb") as f:
        f.write(b"new")
    assert p.read_bytes() == b"new"


def test_stable_seed_equals_the_formulas_it_replaced():
    def sha(text):
        return hashlib.sha256(text.encode()).digest()

    # household task generation
    tid = "household/train/00042"
    assert stable_seed(tid) == int.from_bytes(sha(tid)[:8], "little")
    # the agent loop's per-reply vLLM seed and the eval sampler's
    assert stable_seed(7, "3/12", 2, sep="/", bits=31) == int.from_bytes(sha("7/3/12/2")[:4], "little") & 0x7FFFFFFF
    assert stable_seed(1, "p", 0, 3, sep="\x00", bits=31) == \
        int.from_bytes(sha("1\x00p\x000\x003")[:4], "little") & 0x7FFFFFFF
    # the scripted policy's rng
    from threespo_verl.testing import seeded_rng

    want = random.Random(int.from_bytes(sha("\x1f".join(["0", "text", "1"]))[:8], "little"))
    assert seeded_rng(0, "text", 1).random() == want.random()
