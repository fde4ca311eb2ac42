"""SPA's progress estimator (``ProgressEstimator``) and its training (``train_pe``), stage 3 (DESIGN §3): a
token-classification head (one label) on the policy's base model, read at the last token of every action turn;
trained so that the per-step contributions add up to R::

    c_t = score(h_{readout(t)})          L = mean_{tau} (R(tau) - sum_t c_t(tau))^2

The serialization of a trajectory into token windows, one readout per step, is in ``spa/serialize.py``; the
transformers-Trainer backend of ``train_pe`` (bf16, gradient checkpointing, FSDP) in ``spa/pe_trainer.py``.

**Records.** ``predict`` and ``train_pe`` read trajectories as ``spa collect`` writes them: a dict with ``steps``,
each step with ``messages`` (its prompt), ``reply`` and ``observation``; training also needs ``reward`` (R).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from threespo_verl.spa.serialize import (  # noqa: F401 - serialize, TemplateError: this module's API too
    Serialized,
    TemplateError,
    record_turns,
    serialize,
    serialize_windows,
)

#: written next to a trained estimator: settings that ``from_pretrained`` reuses, and the training metrics
PE_JSON = "spa_pe.json"
DEFAULT_MAX_LENGTH = 4096


class ProgressEstimator:
    """``AutoModelForTokenClassification(num_labels=1)`` read at the action readouts (module docstring).

    ``stats`` counts encoded trajectories and how many needed truncation (several windows or a dropped head)."""

    def __init__(self, model, tokenizer, max_length: int = DEFAULT_MAX_LENGTH) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)
        self.stats = {"encoded": 0, "truncated": 0}

    @classmethod
    def from_pretrained(cls, path: str | Path, max_length: int | None = None, device: str | None = None,
                        dtype: str | None = None) -> "ProgressEstimator":
        """Load a trained estimator, or put a fresh one-label head on a base (causal LM) checkpoint. ``max_length``
        defaults to the one the estimator was trained with (``spa_pe.json``), else 4096."""
        import torch
        from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer

        path = Path(path)
        saved = json.loads((path / PE_JSON).read_text()) if (path / PE_JSON).is_file() else {}
        config = AutoConfig.from_pretrained(path)
        config.num_labels = 1
        config.classifier_dropout = 0.0  # a regression head: no dropout (the default head has 0.1)
        model, info = AutoModelForTokenClassification.from_pretrained(
            path, config=config, dtype=getattr(torch, dtype or "float32"), output_loading_info=True)
        fresh = [k for k in info.get("missing_keys", ()) if k.startswith("score.")]
        if fresh:  # a new head on a base model starts from c_t = 0 (sum_t c_t = 0 for every trajectory)
            with torch.no_grad():
                model.score.weight.zero_()
                if model.score.bias is not None:
                    model.score.bias.zero_()
        model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        tok = AutoTokenizer.from_pretrained(path)
        if getattr(tok, "chat_template", None) is None:
            raise ValueError(f"the tokenizer of {path} has no chat template; the estimator serializes trajectories "
                             f"with it (use the policy's instruct model)")
        return cls(model, tok, max_length or saved.get("max_length", DEFAULT_MAX_LENGTH))

    @property
    def device(self):
        return next(self.model.parameters()).device

    def encode(self, record: dict[str, Any]) -> list[Serialized]:
        """The windows of one trajectory record (``serialize_windows``)."""
        messages, replies, observations = record_turns(record)
        windows = serialize_windows(messages, replies, self.tokenizer, self.max_length, observations)
        self.stats["encoded"] += 1
        self.stats["truncated"] += any(w.truncated for w in windows)
        return windows

    def step_values(self, encoded: Sequence[Sequence[Serialized]]):
        """c_t of each trajectory (one torch vector per trajectory, in step order), from one padded forward pass
        over all their windows. Differentiable."""
        import torch

        windows = [w for traj in encoded for w in traj]
        width = max(len(w.input_ids) for w in windows)
        ids = torch.full((len(windows), width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(windows), width), dtype=torch.long)
        for i, w in enumerate(windows):
            ids[i, :len(w.input_ids)] = torch.tensor(w.input_ids)
            attn[i, :len(w.input_ids)] = 1
        dev = self.device
        scores = self.model(input_ids=ids.to(dev), attention_mask=attn.to(dev), use_cache=False).logits[..., 0]
        out, i = [], 0
        for traj in encoded:
            parts = [scores[i + k, w.readouts] for k, w in enumerate(traj)]
            i += len(traj)
            out.append(torch.cat(parts).float())
        return out

    def predict(self, trajectory: dict[str, Any]) -> np.ndarray:
        """c_t for every step of ``trajectory`` (a record as ``spa collect`` writes it)."""
        return self.predict_many([trajectory])[0]

    def predict_many(self, trajectories: Sequence[dict[str, Any]], batch_size: int = 8) -> list[np.ndarray]:
        import torch

        self.model.eval()
        out = []
        with torch.no_grad():
            for b in range(0, len(trajectories), batch_size):
                enc = [self.encode(r) for r in trajectories[b:b + batch_size]]
                out += [v.cpu().numpy().astype(np.float64) for v in self.step_values(enc)]
        return out

    def save_pretrained(self, out_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        write_pe_json(out, self.max_length, extra)
        return out


def write_pe_json(out_dir: str | Path, max_length: int, extra: dict[str, Any] | None = None) -> Path:
    """``spa_pe.json`` next to a saved estimator: the settings ``from_pretrained`` reuses, and ``extra``."""
    info = {"max_length": int(max_length), "readout": "last token of each assistant turn", **(extra or {})}
    path = Path(out_dir) / PE_JSON
    path.write_text(json.dumps(info, indent=2) + "\n")
    return path


def load_records(path: str | Path) -> list[dict[str, Any]]:
    from threespo_verl.spa.collect import read_trajectories

    records = read_trajectories(path)
    for r in records:
        R = float(r["reward"])
        if not (0.0 <= R <= 1.0 and math.isfinite(R)):
            raise ValueError(f"{path}: trajectory {r.get('task_id')}/{r.get('rollout')} has reward {R} outside [0, 1]")
    return records


def evaluate(pe: ProgressEstimator, records: Sequence[dict[str, Any]], batch_size: int = 8) -> dict[str, float]:
    """Fit of sum_t c_t to R over ``records``: MSE and MAE over trajectories."""
    return _evaluate_encoded(pe, [pe.encode(r) for r in records], [float(r["reward"]) for r in records], batch_size)


def _evaluate_encoded(pe: ProgressEstimator, encoded, rewards, batch_size: int = 8) -> dict[str, float]:
    import torch

    if not encoded:
        return {"n": 0, "mse": float("nan"), "mae": float("nan")}
    pe.model.eval()
    with torch.no_grad():
        sums = [float(c.sum()) for b in range(0, len(encoded), batch_size)
                for c in pe.step_values(encoded[b:b + batch_size])]
    err = np.array(sums) - np.asarray(rewards, dtype=np.float64)
    return {"n": len(encoded), "mse": float(np.mean(err ** 2)), "mae": float(np.mean(np.abs(err)))}


def split_heldout(n: int, heldout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices): a seeded permutation, round(fraction * n) held out (at least one when
    the fraction is > 0, and at least one trajectory left to train on)."""
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    k = 0 if heldout_fraction == 0 else max(1, int(round(heldout_fraction * n)))
    if n - k < 1:
        raise ValueError(f"{n} trajectories are too few to hold out {heldout_fraction:.0%} and still train")
    return np.sort(perm[k:]), np.sort(perm[:k])


TRAINER_ONLY = ("bf16", "gradient_checkpointing", "optim", "fsdp")


def resolve_backend(backend: str | None, device: str | None, **trainer_options: Any) -> str:
    """``loop`` (the exact fp32 loop below, one device) or ``trainer`` (transformers' Trainer): ``None`` picks the
    Trainer on a GPU (``device`` cuda, or no device and CUDA available) or when a Trainer-only option is set
    (``bf16``, ``gradient_checkpointing``, ``optim``, ``fsdp``), else the loop."""
    import torch

    asked = sorted(k for k, v in trainer_options.items() if v)
    if backend is None:
        on_gpu = str(device).startswith("cuda") if device else torch.cuda.is_available()
        return "trainer" if on_gpu or asked else "loop"
    if backend not in ("loop", "trainer"):
        raise ValueError(f"unknown train_pe backend {backend!r}: loop | trainer")
    if backend == "loop" and asked:
        raise ValueError(f"{', '.join(asked)} need the Trainer backend (backend='trainer', --backend trainer)")
    return backend


def train_pe(train_jsonl: str | Path, out_dir: str | Path, base_model: str | Path, epochs: int = 1,
             lr: float = 1e-5, batch_size: int = 8, heldout_fraction: float = 0.1, seed: int = 0,
             max_length: int = DEFAULT_MAX_LENGTH, *, micro_batch_size: int | None = None,
             weight_decay: float = 0.0, grad_clip: float = 1.0, device: str | None = None, dtype: str | None = None,
             progress: bool = True, backend: str | None = None, bf16: bool = False,
             gradient_checkpointing: bool = False, optim: str | None = None, fsdp: str | None = None,
             ) -> dict[str, Any]:
    """Train the progress estimator on collected trajectories; returns (and saves in ``out_dir/spa_pe.json``) the
    metrics: held-out MSE/MAE of sum_t c_t vs R before and after training, the training loss per epoch, the
    number of truncated trajectories. The model and tokenizer are saved with ``save_pretrained``.

    One optimizer step per ``batch_size`` trajectories on L = mean_batch (R - sum_t c_t)^2 (AdamW, gradients
    clipped to ``grad_clip``); ``micro_batch_size`` trajectories per forward pass (gradients accumulated, same
    loss).

    ``backend`` (``resolve_backend``): ``loop``, the default on the CPU, is a plain loop on one device in the
    model's dtype (fp32 unless ``dtype``), deterministic for a seed on CPU. ``trainer``, the default on a GPU, runs
    the same objective through transformers' Trainer (accelerate): ``bf16`` mixed precision (fp32 master weights),
    ``gradient_checkpointing``, any Trainer ``optim`` (default ``adamw_torch``), and, under ``torchrun`` /
    ``accelerate launch``, data parallelism or ``fsdp`` (e.g. ``"full_shard auto_wrap"``) so that a 7B estimator's
    optimizer state is sharded over the GPUs; ``batch_size`` stays the trajectories per optimizer step over all
    processes (``micro_batch_size`` x processes x accumulation steps)."""
    import torch

    records = load_records(train_jsonl)
    if len(records) < 2:
        raise ValueError(f"{train_jsonl} holds {len(records)} trajectories; collect more (spa collect --m/--tasks)")
    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch_size must be >= 1")
    micro = micro_batch_size or batch_size
    train_idx, held_idx = split_heldout(len(records), heldout_fraction, seed)
    backend = resolve_backend(backend, device, bf16=bf16, gradient_checkpointing=gradient_checkpointing,
                              optim=optim, fsdp=fsdp)
    if backend == "trainer":
        from threespo_verl.spa.pe_trainer import _train_pe_trainer

        return _train_pe_trainer(
            records, train_idx, held_idx, train_jsonl=train_jsonl, out_dir=out_dir, base_model=base_model,
            epochs=epochs, lr=lr, batch_size=batch_size, micro=micro, seed=seed, max_length=max_length,
            weight_decay=weight_decay, grad_clip=grad_clip, device=device, dtype=dtype, progress=progress, bf16=bf16,
            gradient_checkpointing=gradient_checkpointing, optim=optim, fsdp=fsdp)
    torch.manual_seed(seed)  # the fresh head's initialisation
    pe = ProgressEstimator.from_pretrained(base_model, max_length=max_length, device=device, dtype=dtype)
    encoded = [pe.encode(r) for r in records]
    truncated = int(pe.stats["truncated"])
    held_enc = [encoded[i] for i in held_idx]
    held_r = [float(records[i]["reward"]) for i in held_idx]
    before = _evaluate_encoded(pe, held_enc, held_r, micro)
    epoch_loss, n_steps = _fit_loop(pe, encoded, [float(r["reward"]) for r in records], train_idx, epochs=epochs,
                                    lr=lr, batch_size=batch_size, micro=micro, seed=seed, weight_decay=weight_decay,
                                    grad_clip=grad_clip, progress=progress)
    after = _evaluate_encoded(pe, held_enc, held_r, micro)
    metrics = {
        "base_model": str(base_model), "train_jsonl": str(train_jsonl), "n_train": int(len(train_idx)),
        "n_heldout": int(len(held_idx)), "heldout_before": before, "heldout_after": after,
        "train_loss_per_epoch": epoch_loss, "optimizer_steps": n_steps, "truncated_trajectories": truncated,
        "n_trajectories": len(records), "epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed,
    }
    pe.save_pretrained(out_dir, extra={"metrics": metrics})
    return metrics


def _fit_loop(pe: ProgressEstimator, encoded, rewards: Sequence[float], train_idx, *, epochs: int, lr: float,
              batch_size: int, micro: int, seed: int, weight_decay: float, grad_clip: float,
              progress: bool) -> tuple[list[float], int]:
    """The ``loop`` backend's epochs (``train_pe``'s docstring): (mean training loss per epoch, optimizer steps)."""
    import torch
    from tqdm.auto import tqdm

    targets = torch.tensor(rewards)
    opt = torch.optim.AdamW(pe.model.parameters(), lr=lr, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    n_batches = math.ceil(len(train_idx) / batch_size)
    bar = tqdm(total=epochs * n_batches, desc="spa train-pe", unit="step", disable=not progress)
    epoch_loss = []
    for _ in range(epochs):
        pe.model.train()
        order = rng.permutation(train_idx)
        total = 0.0
        for b in range(n_batches):
            batch = order[b * batch_size:(b + 1) * batch_size]
            opt.zero_grad(set_to_none=True)
            batch_loss = 0.0
            for m in range(0, len(batch), micro):
                idx = batch[m:m + micro]
                sums = torch.stack([c.sum() for c in pe.step_values([encoded[i] for i in idx])])
                loss = ((targets[torch.as_tensor(idx)].to(sums.device) - sums) ** 2).sum() / len(batch)
                loss.backward()
                batch_loss += loss.detach().item()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(pe.model.parameters(), grad_clip)
            opt.step()
            total += batch_loss * len(batch)
            bar.update(1)
            bar.set_postfix(loss=f"{batch_loss:.4f}")
        epoch_loss.append(total / len(train_idx))
    bar.close()
    return epoch_loss, epochs * n_batches
