"""Group-relative normalisation, vectorised over rows (shared by 3SPO Eq.4 and GiGPO).

For rows i with group g(i) and a validity mask (padding rows are invalid):

    mean_g = (1/n_g) sum_{i in g} x_i
    std_g  = sqrt( (1/(n_g - 1)) sum_{i in g} (x_i - mean_g)^2 )      (unbiased, as torch.std in verl's GRPO)

    "mean_std": A_i = (x_i - mean_g) / (std_g + eps)
    "mean":     A_i =  x_i - mean_g

Groups with a single valid row get A = 0 (there is nothing to compare with); invalid rows get A = 0 and are
excluded from every group's statistics.
"""

from __future__ import annotations

import numpy as np

NORMS = ("mean_std", "mean")


def group_index(group_ids, valid: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Dense group index per row (``-1`` for invalid rows) and the number of groups among valid rows."""
    ids = np.asarray(group_ids)
    n = ids.shape[0]
    valid = np.ones(n, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    if valid.shape != (n,):
        raise ValueError(f"valid mask has shape {valid.shape}, expected ({n},)")
    inv = np.full(n, -1, dtype=np.int64)
    if valid.any():
        _, dense = np.unique(ids[valid], return_inverse=True)
        inv[valid] = dense.reshape(-1)
        return inv, int(dense.max()) + 1
    return inv, 0


def group_normalize(x, group_ids, valid=None, norm: str = "mean_std", eps: float = 1e-6) -> np.ndarray:
    """Group-relative advantage of ``x`` (see module docstring); float64 array of the same length."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    x = np.asarray(x, dtype=np.float64)
    inv, n_groups = group_index(group_ids, valid)
    out = np.zeros_like(x)
    if n_groups == 0:
        return out
    m = inv >= 0
    g = inv[m]
    counts = np.bincount(g, minlength=n_groups)
    mean = np.bincount(g, weights=x[m], minlength=n_groups) / counts
    dev = x[m] - mean[g]
    adv = dev
    if norm == "mean_std":
        ss = np.bincount(g, weights=dev * dev, minlength=n_groups)
        std = np.sqrt(ss / np.maximum(counts - 1, 1))
        denom = std[g] + eps
        adv = np.divide(dev, denom, out=np.zeros_like(dev), where=denom > 0)  # identical values -> 0, not nan
    adv = np.where(counts[g] > 1, adv, 0.0)
    out[m] = adv
    return out
