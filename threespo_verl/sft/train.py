"""Behaviour cloning with verl's own SFT trainer (``verl.trainer.sft_trainer.SFTTrainer``: FSDP engine,
``MultiTurnSFTDataset``, ``sft_loss`` on the assistant tokens only, checkpoints and resume), on GPUs or on CPU.

``run_sft(data, model, out_dir)`` writes ``out_dir``::

    data/{train,val}.parquet   the examples, each fitted into ``max_length`` tokens: an over-long example loses its
                               oldest (user, assistant) turn pairs until it fits (counted: ``turns_dropped``); one
                               pair that alone does not fit is left out (``examples_dropped``), never cut mid-turn
    sft_config.yaml            verl's ``sft_trainer_engine`` config of the run (resolved)
    checkpoints/               verl's checkpoints (``global_step_N``); a killed run resumes from the latest
    model/                     the cloned model (Hugging Face folder, from the last checkpoint)
    sft_result.json            loss before/after, steps, seconds; a finished run is not repeated

The loss is verl's: L = -(1/N) sum_{i: loss_mask_i = 1} log p(x_i | x_<i), over the assistant tokens of a batch
(``sft_loss``); ``loss_before`` and ``loss_after`` are the same quantity on the validation examples (the training
examples when there are none), measured here with transformers on the base model and on the clone.

Training runs in a child process (``python -m threespo_verl.sft.train CONFIG``, or under ``torch.distributed.run``
with ``nproc > 1``): verl chooses its platform once per process, and the process group must be its own. On CPU the
child starts a one-rank gloo group itself and runs the trainer on verl's CPU platform (``VERL_PLATFORM=cpu``,
FSDP2 in fp32, sdpa): verl's ``run_sft`` helper would ask torch for the backend "cpu:gloo,cpu:gloo", which torch
rejects, so the child calls ``SFTTrainer`` directly instead of patching verl.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from threespo_verl.io_utils import atomic_write

RESULT = "sft_result.json"


@dataclasses.dataclass(frozen=True)
class SFTResult:
    """A finished behaviour-cloning run."""

    model: Path  # the clone (Hugging Face folder)
    loss_before: float  # mean NLL of the assistant tokens of the evaluation examples, base model
    loss_after: float  # the same, clone
    eval_split: str  # "val" or "train" (no validation examples)
    steps: int  # optimizer steps
    seconds: float  # wall time of the training process
    examples: int  # training examples after fitting
    turns_dropped: int  # (user, assistant) pairs dropped to fit max_length
    examples_dropped: int  # examples left out (a single pair longer than max_length)


def _tokenizer(model: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model))


def fit_examples(messages_list: list[list[dict]], tokenizer, max_length: int) -> tuple[list[list[dict]], int, int]:
    """Each conversation within ``max_length`` tokens (its chat-template rendering): the oldest (user, assistant)
    pairs are dropped until it fits. Returns (fitted conversations, pairs dropped, conversations left out)."""
    fitted, dropped, left_out = [], 0, 0

    def length(msgs):
        text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
        return len(tokenizer.encode(text, add_special_tokens=False))

    for msgs in messages_list:
        msgs = [dict(m) for m in msgs]
        while len(msgs) > 2 and length(msgs) > max_length:
            msgs = msgs[2:]
            dropped += 1
        if length(msgs) > max_length:
            left_out += 1
            continue
        fitted.append(msgs)
    return fitted, dropped, left_out


def _fit_parquet(src: Path, dst: Path, tokenizer, max_length: int) -> tuple[int, int, int]:
    import pandas as pd
    from verl.utils.py_functional import convert_nested_value_to_list_recursive

    df = pd.read_parquet(src)
    fitted, keep, dropped, left_out = [], [], 0, 0
    for i, msgs in enumerate(df["messages"]):
        f, d, lo = fit_examples([convert_nested_value_to_list_recursive(msgs)], tokenizer, max_length)
        dropped += d
        left_out += lo
        if f:
            fitted.append(f[0])
            keep.append(i)
    out = df.iloc[keep].reset_index(drop=True)
    out["messages"] = pd.Series(fitted, dtype=object)
    with atomic_write(dst, "wb") as f:
        out.to_parquet(f, index=False)
    return len(out), dropped, left_out


def sft_loss(model: str | Path, parquet: str | Path, max_examples: int = 64, max_length: int = 32768,
             device: str | None = None) -> float:
    """verl's SFT loss of ``model`` on (the first ``max_examples`` examples of) ``parquet``: the mean negative
    log-likelihood of the assistant tokens, tokenized by verl's ``MultiTurnSFTDataset`` as training tokenizes them."""
    import torch
    from transformers import AutoModelForCausalLM
    from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

    tok = _tokenizer(model)
    ds = MultiTurnSFTDataset(str(parquet), tok, config={"pad_mode": "no_padding", "max_length": max_length,
                                                       "truncation": "error"}, max_samples=max_examples)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    lm = AutoModelForCausalLM.from_pretrained(str(model), dtype=torch.float32, attn_implementation="sdpa").to(device)
    lm.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(len(ds)):
            item = ds[i]
            ids = item["input_ids"].to(device)
            mask = item["loss_mask"].to(device)[1:].bool()
            logits = lm(input_ids=ids[None]).logits[0, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits, ids[1:], reduction="none")
            total += float(nll[mask].sum())
            count += int(mask.sum())
    if count == 0:
        raise ValueError(f"{parquet}: no assistant tokens to score")
    return total / count


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sft_config(train: Path, model: str | Path, out_dir: Path, *, n_examples: int, epochs: int, steps: int | None,
               lr: float, batch_size: int, max_length: int, device: str, nproc: int, save_freq: int | None,
               seed: int, attn_implementation: str, overrides: tuple[str, ...] = ()):
    """verl's ``sft_trainer_engine`` config for this run (composed with Hydra from verl's config directory)."""
    import verl.trainer
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    cpu = device == "cpu"
    batch = max(nproc, min(int(batch_size), n_examples) // nproc * nproc)
    per_epoch = n_examples // batch
    total = int(steps) if steps else per_epoch * int(epochs)
    if total < 1:
        raise ValueError(f"{n_examples} examples and batch size {batch}: no optimizer step")
    freq = int(save_freq) if save_freq else max(1, total // 4)
    args = [
        f"data.train_files={train}", "data.val_files=null", f"data.train_batch_size={batch}",
        "data.micro_batch_size_per_gpu=1", "data.use_dynamic_bsz=true",
        f"data.max_token_len_per_gpu={max(int(max_length), 8192)}", f"data.max_length={int(max_length)}",
        "data.truncation=error", "data.pad_mode=no_padding", "data.num_workers=0",
        f"model.path={model}", f"+model.override_config.attn_implementation={attn_implementation}",
        f"model.use_remove_padding={str(not cpu).lower()}",
        f"model.enable_gradient_checkpointing={str(not cpu).lower()}",
        "engine.strategy=fsdp2", f"optim.lr={lr}",
        f"trainer.device={'cpu' if cpu else 'cuda'}", f"trainer.n_gpus_per_node={nproc}",
        f"trainer.total_epochs={max(1, -(-total // max(per_epoch, 1)))}", f"trainer.total_training_steps={total}",
        f"trainer.save_freq={freq}", "trainer.test_freq=-1", "trainer.logger=[console]",
        f"trainer.default_local_dir={out_dir / 'checkpoints'}", "trainer.resume_mode=auto", f"trainer.seed={seed}",
        "trainer.max_ckpt_to_keep=2", "trainer.project_name=threespo_verl",
        f"trainer.experiment_name=sft-{Path(str(model)).name}",
        "checkpoint.save_contents=[model,optimizer,extra,hf_model]", "checkpoint.load_contents=[model,optimizer,extra]",
    ]
    if cpu:
        args += ["engine.model_dtype=fp32", "engine.dtype=float32", "engine.use_torch_compile=false"]
    cfgdir = os.path.join(os.path.dirname(verl.trainer.__file__), "config")
    with initialize_config_dir(config_dir=cfgdir, version_base=None):
        cfg = compose(config_name="sft_trainer_engine", overrides=[*args, *overrides])
    OmegaConf.resolve(cfg)
    return cfg, total


def _settings_key(**kw) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(kw, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_sft(data: str | Path, model: str | Path, out_dir: str | Path, *, epochs: int = 1, steps: int | None = None,
            lr: float = 1e-5, batch_size: int = 16, max_length: int = 4096, device: str | None = None,
            nproc: int = 1, save_freq: int | None = None, seed: int = 0, attn_implementation: str = "sdpa",
            eval_examples: int = 64, overrides: tuple[str, ...] | list[str] = (), progress: bool = True) -> SFTResult:
    """Clone the examples of ``data`` (a ``build_sft_data`` folder, or a parquet file with a ``messages``
    column) into ``model`` with verl's SFT trainer; the clone lands in ``out_dir/model`` (see the module docstring).

    ``steps`` (optimizer steps) overrides ``epochs``; ``batch_size`` examples per step (at most the example count),
    packed into micro-batches of up to max(``max_length``, 8192) tokens; ``device`` cpu | cuda (default: cuda when
    available), ``nproc`` ranks (GPUs); ``overrides`` are extra Hydra overrides of verl's ``sft_trainer_engine``.
    Running it again returns the finished result, or resumes an interrupted run from its latest checkpoint."""
    import torch
    from omegaconf import OmegaConf

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = Path(data)
    train_src = data / "train.parquet" if data.is_dir() else data
    val_src = data / "val.parquet" if data.is_dir() and (data / "val.parquet").exists() else None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    key = _settings_key(train=str(train_src.resolve()), model=str(model), epochs=epochs, steps=steps, lr=lr,
                        batch_size=batch_size, max_length=max_length, seed=seed, nproc=nproc,
                        overrides=list(overrides))
    done = _read_result(out, key)
    if done is not None:
        return done
    tok = _tokenizer(model)
    n_train, turns_dropped, examples_dropped = _fit_parquet(train_src, out / "data" / "train.parquet", tok,
                                                            max_length)
    eval_split, eval_path = "train", out / "data" / "train.parquet"
    if val_src is not None:
        n_val, _dropped, _left_out = _fit_parquet(val_src, out / "data" / "val.parquet", tok, max_length)
        if n_val:
            eval_split, eval_path = "val", out / "data" / "val.parquet"
    if n_train == 0:
        raise ValueError(f"{train_src}: no example fits max_length={max_length} tokens")
    if turns_dropped or examples_dropped:
        print(f"sft: {turns_dropped} oldest turn pair(s) dropped and {examples_dropped} example(s) left out to fit "
              f"max_length={max_length} tokens", file=sys.stderr)
    loss_before = sft_loss(model, eval_path, max_examples=eval_examples, max_length=max_length)
    cfg, total = sft_config(out / "data" / "train.parquet", model, out, n_examples=n_train, epochs=epochs,
                            steps=steps, lr=lr, batch_size=batch_size, max_length=max_length, device=device,
                            nproc=nproc, save_freq=save_freq, seed=seed, attn_implementation=attn_implementation,
                            overrides=tuple(overrides))
    config_path = out / "sft_config.yaml"
    OmegaConf.save(cfg, config_path)
    t0 = time.time()
    _launch(config_path, device, nproc, progress)
    seconds = time.time() - t0
    final = _export(out, model, total)
    loss_after = sft_loss(final, eval_path, max_examples=eval_examples, max_length=max_length)
    result = SFTResult(model=final, loss_before=loss_before, loss_after=loss_after, eval_split=eval_split,
                       steps=total, seconds=seconds, examples=n_train, turns_dropped=turns_dropped,
                       examples_dropped=examples_dropped)
    (out / RESULT).write_text(json.dumps({"key": key, **{k: str(v) if isinstance(v, Path) else v
                                                         for k, v in dataclasses.asdict(result).items()}},
                                         indent=2) + "\n")
    return result


def _read_result(out: Path, key: str) -> SFTResult | None:
    try:
        d = json.loads((out / RESULT).read_text())
    except (OSError, ValueError):
        return None
    if d.pop("key", None) != key or not Path(d["model"]).is_dir():
        return None
    d["model"] = Path(d["model"])
    return SFTResult(**d)


def _launch(config_path: Path, device: str, nproc: int, progress: bool) -> None:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    if device == "cpu":
        env["VERL_PLATFORM"] = "cpu"
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
               "threespo_verl.sft.train", str(config_path)]
    else:
        env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
        cmd = [sys.executable, "-m", "threespo_verl.sft.train", str(config_path)]
    log = config_path.parent / "sft_train.log"
    with open(log, "a", encoding="utf-8") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            f.write(line)
            if progress:
                sys.stderr.write(line)
        rc = proc.wait()
    if rc != 0:
        tail = log.read_text().splitlines()[-30:]
        raise RuntimeError(f"verl's SFT trainer failed (exit {rc}); log {log}:\n" + "\n".join(tail))


def _export(out: Path, base: str | Path, total: int) -> Path:
    """The last checkpoint's Hugging Face folder as ``out/model`` (with the base model's generation config)."""
    ckpt = out / "checkpoints"
    step = int((ckpt / "latest_checkpointed_iteration.txt").read_text().strip())
    if step != total:
        raise RuntimeError(f"verl's SFT trainer stopped at step {step} of {total}")
    src = ckpt / f"global_step_{step}" / "huggingface"
    if not any(src.glob("*.safetensors")) and not any(src.glob("*.bin")):
        raise RuntimeError(f"{src} holds no model weights (checkpoint.save_contents needs hf_model)")
    dst = out / "model"
    tmp = out / ".model.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp)
    gen = Path(str(base)) / "generation_config.json"
    if gen.exists():
        shutil.copy2(gen, tmp / "generation_config.json")
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)
    return dst


def main(argv: list[str] | None = None) -> int:
    """The training process: ``python -m threespo_verl.sft.train CONFIG`` (one rank) or under torchrun."""
    argv = list(sys.argv[1:] if argv is None else argv)
    import torch.distributed as dist
    from omegaconf import OmegaConf

    import threespo_verl.plugin  # noqa: F401  (the CPU platform and the patches, if verl loaded first)

    cfg = OmegaConf.load(argv[0])
    if cfg.trainer.device == "cpu":
        dist.init_process_group(backend="gloo")
    else:
        from verl.utils.distributed import initialize_global_process_group

        initialize_global_process_group()
    from verl.trainer.sft_trainer import SFTTrainer

    try:
        SFTTrainer(config=cfg).fit()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
