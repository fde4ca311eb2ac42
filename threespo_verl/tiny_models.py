"""The tiny test models of ``threespo-verl setup model`` (``models.py`` describes them and installs them):
``tiny-qwen2`` (``build_tiny``: a tiny random Qwen2 from a fixed seed, with a ChatML tokenizer and an eos bias) and
``tiny-qwen2-actions`` (``teach_action_format``: a few hundred supervised steps on household prompts, through
``supervise_replies``, which the CPU learning testbed's behaviour cloning uses too)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from threespo_verl.models import (
    CHATML_TEMPLATE,
    ENDOFTEXT,
    EOS_ID,
    IM_END,
    IM_START,
    fix_eos,
    fix_tokenizer_eos,
    read_marker,
)

TINY_SEED = 1234
TINY_CONFIG = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
    head_dim=32, max_position_embeddings=4096, rope_theta=10000.0, tie_word_embeddings=False,
)
#: strength of the eos bias of the tiny model (see _bias_tiny_eos)
TINY_EOS_BIAS = 10.0


_TINY_CORPUS = (
    "You are in the middle of a room. Looking quickly around you, you see a cabinet 1, a countertop 1, a drawer 2, "
    "a fridge 1, a garbagecan 1, a microwave 1, a shelf 3, a sinkbasin 1, a stoveburner 4, and a toaster 1. "
    "Your task is to: put a clean apple in fridge. go to countertop 1. take apple 1 from countertop 1. "
    "clean apple 1 with sinkbasin 1. open fridge 1. put apple 1 in/on fridge 1. Nothing happens. "
    "search[red shoes] click[buy now] think: I should look for the item first. The answer is 42. "
    "Hello! How can I help you today? Please choose one admissible action and reply with it only. "
)


def _train_small_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024, min_frequency=1, special_tokens=[ENDOFTEXT, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    corpus = [_TINY_CORPUS] * 4 + [ln.strip() for ln in _TINY_CORPUS.split(". ")]
    tk.train_from_iterator(corpus, trainer=trainer)
    assert [tk.token_to_id(t) for t in (ENDOFTEXT, IM_START, IM_END)] == [0, 1, EOS_ID]
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token=IM_START, eos_token=IM_END, pad_token=IM_END, unk_token=ENDOFTEXT,
    )
    tok.chat_template = CHATML_TEMPLATE
    return tok


def _tiny_tokenizer(smollm2_dir: Path | None):
    from transformers import AutoTokenizer

    if smollm2_dir is not None:
        tok = AutoTokenizer.from_pretrained(smollm2_dir)
        return tok, f"smollm2-135m ({smollm2_dir})"
    return _train_small_tokenizer(), "trained in-process (tokenizers BPE, 1024 tokens)"


def _bias_tiny_eos(model, eos_id: int, strength: float) -> None:
    """Make sampled replies of the random model end at eos after a few dozen tokens.

    The output layer is scaled up (x20) so that logits are peaked like a trained model's rather than near-uniform;
    every embedding gets a constant 0.1 in dimension 0 (about 4.3 after RMS norm), which the eos row of the output
    layer reads, raising the eos logit by about ``strength`` at every position. Tuned with a fixed seed: greedy
    replies do not stop within 64 tokens, sampled ones mostly end within 10-60 tokens.
    """
    import torch

    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
        model.model.embed_tokens.weight[:, 0] = 0.1
        model.lm_head.weight[eos_id].zero_()
        model.lm_head.weight[eos_id, 0] = strength / 4.3


def build_tiny(out: Path, smollm2_dir: Path | None = None) -> dict:
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tok, tok_src = _tiny_tokenizer(smollm2_dir)
    fix_tokenizer_eos(tok)
    vocab = len(tok)
    vocab_padded = -(-vocab // 64) * 64
    cfg = Qwen2Config(
        vocab_size=vocab_padded, bos_token_id=tok.convert_tokens_to_ids(IM_START), eos_token_id=EOS_ID,
        pad_token_id=EOS_ID, torch_dtype="float32", **TINY_CONFIG,
    )
    state = torch.random.get_rng_state()
    torch.manual_seed(TINY_SEED)
    try:
        model = Qwen2ForCausalLM(cfg).to(torch.float32)
    finally:
        torch.random.set_rng_state(state)
    _bias_tiny_eos(model, EOS_ID, TINY_EOS_BIAS)
    model.generation_config = GenerationConfig(
        bos_token_id=cfg.bos_token_id, eos_token_id=EOS_ID, pad_token_id=EOS_ID,
    )
    fix_eos(tok, model)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return {"source": "random init", "seed": TINY_SEED, "tokenizer_source": tok_src,
            "source_sha256": _tiny_fingerprint(smollm2_dir)}


def _tiny_fingerprint(smollm2_dir: Path | None) -> str:
    import hashlib

    h = hashlib.sha256(json.dumps([TINY_CONFIG, TINY_SEED, TINY_EOS_BIAS, _TINY_CORPUS]).encode())
    if smollm2_dir is not None:
        h.update(str(read_marker(smollm2_dir) or {}).encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------- tiny-qwen2-actions
ACTION_SFT = dict(examples=256, steps=150, batch=8, lr=3e-3, seed=0)


def _household_action_examples(n: int, seed: int) -> list[tuple[list[dict], str]]:
    """(chat messages, target reply) pairs: household states reached by random walks, rendered as the agent loop
    renders them (no few-shot, no reasoning), each answered with one admissible action of that state."""
    import random

    from threespo_verl.envs.household import HouseholdEnv
    from threespo_verl.envs.prompts import render_prompt

    rng = random.Random(seed)
    env = HouseholdEnv(max_steps=50)
    tasks = env.tasks("train")
    out = []
    while len(out) < n:
        task = tasks[rng.randrange(len(tasks))]
        obs, _info = env.reset(task)
        history: list[tuple[str, str]] = []
        for _ in range(rng.randrange(0, 6)):
            a = rng.choice(obs.admissible_actions)
            history.append((obs.text, a))
            obs, _r, terminated, truncated, _i = env.step(a)
            if terminated or truncated:
                break
        if not obs.admissible_actions:
            continue
        msgs = render_prompt("household", obs, history, reasoning=False)
        out.append((msgs, f"<action>{rng.choice(obs.admissible_actions)}</action>"))
    return out


def supervise_replies(folder: Path, pairs: list[tuple[list[dict], str]], steps: int, batch: int, lr: float,
                      seed: int, desc: str = "supervised replies") -> dict:
    """Supervised steps on (chat messages, reply) ``pairs`` for the model in ``folder``, saved in place: AdamW, loss
    on the reply tokens (+ end of turn) only, batches sampled with ``seed`` (deterministic). The output layer is
    computed only at reply positions (with a 49k vocabulary it dominates the step otherwise). Returns the last loss."""
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)

    def encode(msgs, reply):
        p = tok.encode(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False),
                       add_special_tokens=False)
        return p, tok.encode(reply, add_special_tokens=False) + [tok.eos_token_id]

    data = [encode(m, r) for m, r in pairs]
    rng = random.Random(seed)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    loss_v = float("nan")
    try:
        for _ in tqdm(range(steps), desc=desc, unit="step", mininterval=5):
            chunk = rng.sample(data, batch)
            width = max(len(p) + len(r) for p, r in chunk)
            ids = torch.full((batch, width), tok.pad_token_id, dtype=torch.long)
            labels = torch.full((batch, width), -100, dtype=torch.long)
            mask = torch.zeros((batch, width), dtype=torch.long)
            for i, (p, r) in enumerate(chunk):
                seq = p + r
                ids[i, : len(seq)] = torch.tensor(seq)
                labels[i, len(p): len(seq)] = torch.tensor(r)
                mask[i, : len(seq)] = 1
            hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
            target = labels[:, 1:]
            keep = target != -100
            loss = torch.nn.functional.cross_entropy(model.lm_head(hidden[keep]), target[keep])
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_v = float(loss.item())
    finally:
        torch.random.set_rng_state(state)
    model.eval()
    model.save_pretrained(folder, safe_serialization=True)
    return {"loss": loss_v, "model": model, "tokenizer": tok, "encode": encode}


def teach_action_format(folder: Path, examples: int = ACTION_SFT["examples"], steps: int = ACTION_SFT["steps"],
                        batch: int = ACTION_SFT["batch"], lr: float = ACTION_SFT["lr"],
                        seed: int = ACTION_SFT["seed"]) -> dict:
    """Supervised steps (``supervise_replies``) that teach the model in ``folder`` the action format; saved in place.
    Returns the final loss and the share of sampled replies (temperature 1) that parse as an action."""
    import torch

    from threespo_verl.envs.actions import parse_action

    pairs = _household_action_examples(examples + 32, seed)
    train, held = pairs[:examples], pairs[examples:]
    out = supervise_replies(folder, train, steps=steps, batch=batch, lr=lr, seed=seed,
                            desc="teaching the action format")
    model, tok, encode = out["model"], out["tokenizer"], out["encode"]
    parsed = 0
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        with torch.no_grad():
            for msgs, _r in held:
                p, _ = encode(msgs, "")
                gen = model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                     max_new_tokens=24, do_sample=True, temperature=1.0, top_p=1.0)
                parsed += parse_action(tok.decode(gen[0, len(p):], skip_special_tokens=True)).action is not None
    finally:
        torch.random.set_rng_state(state)
    return {"sft_loss": out["loss"], "sft_steps": steps, "sft_examples": examples,
            "sampled_replies_in_action_format": parsed / len(held)}
