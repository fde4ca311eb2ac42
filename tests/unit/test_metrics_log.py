"""The metrics JSONL survives a kill: appends, skips a cut line, and a resume drops the steps that are re-run."""

from __future__ import annotations

import numpy as np
import torch

from threespo_verl.verl_glue import metrics_log


def test_append_read_truncate(tmp_path):
    path = str(tmp_path / "run" / "metrics.jsonl")
    for step in (1, 2, 3):
        metrics_log.append(path, step, {"a": step, "t": torch.tensor(0.5), "n": np.int64(2), "flag": True,
                                        "vec": torch.ones(3), "name": "x"}, algorithm="3spo")
    with open(path, "a") as f:
        f.write('{"step": 4, "a": ')  # the kill cut this line
    rows = metrics_log.read(path)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[0] == {"step": 1, "algorithm": "3spo", "a": 1.0, "t": 0.5, "n": 2.0}
    assert metrics_log.truncate(path, 2) == 2  # step 3 and the cut line
    assert [r["step"] for r in metrics_log.read(path)] == [1, 2]
    metrics_log.append(path, 3, {"a": 30})
    assert [r["a"] for r in metrics_log.read(path)] == [1.0, 2.0, 30.0]
    assert metrics_log.truncate(str(tmp_path / "missing.jsonl"), 5) == 0
