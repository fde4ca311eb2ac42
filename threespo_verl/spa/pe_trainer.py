"""The transformers-Trainer backend of ``spa.progress.train_pe`` (``backend="trainer"``, the default on a GPU): the
same objective, L = mean over trajectories of (R - sum_t c_t)^2, with bf16 mixed precision, gradient checkpointing,
any Trainer optimizer, and data parallelism or FSDP under ``torchrun`` / ``accelerate launch``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from threespo_verl.spa.progress import ProgressEstimator, write_pe_json


class _Indices:
    """A map-style dataset of trajectory indices (the encoded windows live in the collator)."""

    def __init__(self, idx) -> None:
        self.idx = [int(i) for i in idx]

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, k: int) -> int:
        return self.idx[k]


def _collator(encoded, targets: Sequence[float], pad_id: int):
    """Batches of trajectories for the Trainer: their windows right-padded (``input_ids``, ``attention_mask``) and,
    for every readout, its window row, token column and trajectory slot, plus the rewards R (``targets``)."""
    import torch

    def collate(indices: Sequence[int]) -> dict[str, Any]:
        windows, rows, cols, slots = [], [], [], []
        for slot, i in enumerate(indices):
            for w in encoded[i]:
                rows += [len(windows)] * len(w.readouts)
                cols += list(w.readouts)
                slots += [slot] * len(w.readouts)
                windows.append(w)
        width = max(len(w.input_ids) for w in windows)
        ids = torch.full((len(windows), width), pad_id, dtype=torch.long)
        attn = torch.zeros((len(windows), width), dtype=torch.long)
        for r, w in enumerate(windows):
            ids[r, :len(w.input_ids)] = torch.tensor(w.input_ids)
            attn[r, :len(w.input_ids)] = 1
        return {"input_ids": ids, "attention_mask": attn, "readout_rows": torch.tensor(rows, dtype=torch.long),
                "readout_cols": torch.tensor(cols, dtype=torch.long),
                "readout_slots": torch.tensor(slots, dtype=torch.long),
                "targets": torch.tensor([float(targets[i]) for i in indices], dtype=torch.float32)}

    return collate


def _readout_sums(model, inputs: dict[str, Any]):
    """sum_t c_t of every trajectory of a collated batch (fp32; differentiable)."""
    import torch

    scores = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False).logits
    values = scores[inputs["readout_rows"], inputs["readout_cols"], 0].float()
    sums = torch.zeros(len(inputs["targets"]), dtype=torch.float32, device=values.device)
    return sums.index_add(0, inputs["readout_slots"], values)


def _trainer_class():
    import torch
    from transformers import Trainer, TrainerCallback

    class EpochLoss(TrainerCallback):
        def __init__(self, owner) -> None:
            self.owner = owner

        def on_epoch_begin(self, args, state, control, **kwargs):
            self.owner.epoch_sums.append([0.0, 0])

    class ProgressEstimatorTrainer(Trainer):
        """Trainer on L = mean over a micro-batch's trajectories of (R - sum_t c_t)^2 (averaged over the
        accumulation steps and processes: the mean over the optimizer batch when micro-batches are equal)."""

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.model_accepts_loss_kwargs = False  # the loss is per trajectory, not per token
            self.epoch_sums: list[list[float]] = []
            self.add_callback(EpochLoss(self))

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            sums = _readout_sums(model, inputs)
            err = (inputs["targets"].float() - sums) ** 2
            if model.training and self.epoch_sums:
                self.epoch_sums[-1][0] += float(err.detach().sum())
                self.epoch_sums[-1][1] += len(err)
            loss = err.mean()
            return (loss, {"sums": sums}) if return_outputs else loss

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            inputs = self._prepare_inputs(inputs)
            with torch.no_grad(), self.compute_loss_context_manager():
                sums = _readout_sums(model, inputs).detach()
            targets = inputs["targets"].float()
            return ((targets - sums) ** 2).mean().detach(), sums, targets

    return ProgressEstimatorTrainer


def training_arguments(out_dir: str | Path, *, epochs: int, lr: float, batch_size: int, micro: int, seed: int,
                       weight_decay: float, grad_clip: float, device: str | None, progress: bool, bf16: bool,
                       gradient_checkpointing: bool, optim: str | None, fsdp: str | None):
    """transformers' ``TrainingArguments`` of the Trainer backend: ``batch_size`` trajectories per optimizer step
    over all processes, a constant learning rate without warm-up (as the loop), AdamW unless ``optim``, gradients
    clipped to ``grad_clip``, nothing saved or reported along the way."""
    import torch
    from transformers import TrainingArguments

    if device not in (None, "cpu", "cuda"):
        raise ValueError(f"device={device!r}: the Trainer backend takes cpu or cuda (choose GPUs with "
                         f"CUDA_VISIBLE_DEVICES, or launch it with torchrun for several)")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    args = TrainingArguments(
        output_dir=str(out_dir), num_train_epochs=epochs, learning_rate=lr, lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=weight_decay, max_grad_norm=float(grad_clip or 0.0),
        optim=optim or "adamw_torch", per_device_train_batch_size=micro, per_device_eval_batch_size=micro,
        bf16=bool(bf16), gradient_checkpointing=bool(gradient_checkpointing),
        gradient_checkpointing_kwargs={"use_reentrant": False} if gradient_checkpointing else None,
        fsdp=fsdp or "", seed=seed, data_seed=seed, use_cpu=device == "cpu", logging_strategy="steps",
        logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=not progress,
        remove_unused_columns=False, dataloader_num_workers=0, label_names=["targets"],
    )
    if args.n_gpu > 1:  # one process sees several GPUs: one of them (torch's DataParallel would split the readouts)
        args._n_gpu = 1
    per_step = micro * args.world_size
    if batch_size % per_step:
        raise ValueError(f"batch_size={batch_size} trajectories per optimizer step is not a multiple of "
                         f"micro_batch_size={micro} x {args.world_size} processes")
    args.gradient_accumulation_steps = batch_size // per_step
    return args


def _prediction_metrics(trainer, dataset) -> dict[str, float]:
    if len(dataset) == 0:
        return {"n": 0, "mse": float("nan"), "mae": float("nan")}
    out = trainer.predict(dataset)
    err = np.asarray(out.predictions, dtype=np.float64) - np.asarray(out.label_ids, dtype=np.float64)
    return {"n": len(err), "mse": float(np.mean(err ** 2)), "mae": float(np.mean(np.abs(err)))}


def _train_pe_trainer(records, train_idx, held_idx, *, train_jsonl, out_dir, base_model, epochs, lr, batch_size,
                      micro, seed, max_length, weight_decay, grad_clip, device, dtype, progress, bf16,
                      gradient_checkpointing, optim, fsdp) -> dict[str, Any]:
    """``train_pe`` through transformers' Trainer (its docstring); the same metrics, the same saved folder."""
    import torch

    args = training_arguments(out_dir, epochs=epochs, lr=lr, batch_size=batch_size, micro=micro, seed=seed,
                              weight_decay=weight_decay, grad_clip=grad_clip, device=device, progress=progress,
                              bf16=bf16, gradient_checkpointing=gradient_checkpointing, optim=optim, fsdp=fsdp)
    torch.manual_seed(seed)  # the fresh head's initialisation
    # loaded on the CPU; the Trainer places it (its GPU, or FSDP shards)
    pe = ProgressEstimator.from_pretrained(base_model, max_length=max_length, device="cpu", dtype=dtype)
    encoded = [pe.encode(r) for r in records]
    truncated = int(pe.stats["truncated"])
    targets = [float(r["reward"]) for r in records]
    trainer = _trainer_class()(
        model=pe.model, args=args, train_dataset=_Indices(train_idx),
        data_collator=_collator(encoded, targets, pe.pad_id))
    held = _Indices(held_idx)
    before = _prediction_metrics(trainer, held)
    trainer.train()
    after = _prediction_metrics(trainer, held)
    sums = torch.tensor(trainer.epoch_sums or [[0.0, 0]], dtype=torch.float64, device=args.device)
    if args.world_size > 1:
        sums = trainer.accelerator.reduce(sums, reduction="sum")
    epoch_loss = [float(s / n) if n else float("nan") for s, n in sums.tolist()]
    metrics = {
        "base_model": str(base_model), "train_jsonl": str(train_jsonl), "n_train": len(train_idx),
        "n_heldout": len(held_idx), "heldout_before": before, "heldout_after": after,
        "train_loss_per_epoch": epoch_loss, "optimizer_steps": int(trainer.state.global_step),
        "truncated_trajectories": truncated, "n_trajectories": len(records), "epochs": epochs, "lr": lr,
        "batch_size": batch_size, "seed": seed,
        "backend": {"name": "transformers.Trainer", "device": str(args.device), "processes": args.world_size,
                    "micro_batch_size": micro, "gradient_accumulation_steps": args.gradient_accumulation_steps,
                    "bf16": bool(bf16), "gradient_checkpointing": bool(gradient_checkpointing),
                    "optim": str(args.optim.value if hasattr(args.optim, "value") else args.optim),
                    "fsdp": fsdp or "", "dtype": dtype or "float32"},
    }
    trainer.save_model(str(out_dir))  # gathers FSDP shards; written by the main process
    if trainer.is_world_process_zero():
        pe.tokenizer.save_pretrained(out_dir)
        write_pe_json(out_dir, pe.max_length, {"metrics": metrics})
    return metrics
