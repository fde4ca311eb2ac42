"""The run's metrics as JSON lines (``<trainer.default_local_dir>/metrics.jsonl``), one line per training step.

verl's own ``file`` logger truncates its file when a run starts, so a resumed run would lose its history. This log
appends (each line flushed and fsynced), and on resume drops the lines of steps after the checkpoint (they are run
again) and any line a kill cut in half, so the file reads as if the run had never stopped. ``threespo-verl report``
reads it.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from threespo_verl.io_utils import atomic_write, read_jsonl


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric scalars of a verl metrics dict (tensors of one element included), as floats."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool):
            continue
        if isinstance(v, (int, float, np.integer, np.floating)):
            out[k] = float(v)
        elif hasattr(v, "numel") and v.numel() == 1:
            out[k] = float(v.item())
    return out


def append(path: str, step: int, metrics: dict[str, Any], **fields: Any) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    row = {"step": int(step), **fields, **scalar_metrics(metrics)}
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read(path: str) -> list[dict[str, Any]]:
    """The step rows of the log; a line cut by a kill (or otherwise not JSON) is skipped with a warning."""
    return [row for row in read_jsonl(path, damaged="skip") if isinstance(row, dict) and "step" in row]


def truncate(path: str, last_step: int) -> int:
    """Keep the lines of steps <= ``last_step`` (atomically); returns how many lines were dropped."""
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8") as f:
        total = sum(1 for ln in f if ln.strip())
    kept = [r for r in read(path) if r["step"] <= last_step]
    with atomic_write(path) as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
    return total - len(kept)
