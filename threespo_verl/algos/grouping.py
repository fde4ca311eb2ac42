"""Group-relative normalisation, vectorised over rows (shared by 3SPO Eq.4 and GiGPO).

For rows i with group g(i) and a validity mask (padding rows are invalid):

    mean_g = (1/n_g) sum_{i in g} x_i
    std_g  = sqrt( (1/(n_g - 1)) sum_{i in g} (x_i - mean_g)^2 )      (unbiased, as torch.std in verl's GRPO)

    "mean_std": A_i = (x_i - mean_g) / (std_g + eps)
    "mean":     A_i =  x_i - mean_g

Groups with a single valid row get A = 0 (there is nothing to compare with; verl-agent's GiGPO step-level
normalisation does the same, its singleton mean being the row's own value, while verl 0.9.1's GRPO uses mean 0 and
std 1 for a singleton and so passes its score through); invalid rows get A = 0 and are excluded from every group's
statistics. A group
whose values are all equal gets A = 0 in both norms (never nan, also with eps = 0).

Group labels can be anything ``np.unique`` sorts (ints, strings, object arrays of str); composite labels such as
(task, anchor state) are built with ``combine_ids`` from the columns themselves, never by joining strings.
"""

from __future__ import annotations

import numpy as np

NORMS = ("mean_std", "mean")


def dense_ids(ids) -> tuple[np.ndarray, int]:
    """Dense int64 codes 0..k-1 of a 1-D label array (equal labels, equal codes) and the number of labels k."""
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"group labels must be 1-D, got shape {ids.shape}")
    if ids.size == 0:
        return np.zeros(0, dtype=np.int64), 0
    if ids.dtype == object:
        ids = _unbox(ids)
        if ids.dtype == object:  # mixed label types cannot be sorted: hash them instead (1 and "1" differ)
            first_seen: dict = {}
            inv = np.fromiter((first_seen.setdefault(x, len(first_seen)) for x in ids), np.int64, ids.size)
            return inv, len(first_seen)
    uniq, inv = np.unique(ids, return_inverse=True)
    return inv.reshape(-1).astype(np.int64, copy=False), int(uniq.shape[0])


def _unbox(ids: np.ndarray) -> np.ndarray:
    """An object array of only str (or only int) labels as a native str (int64) array: sorting native arrays is
    several times faster than comparing Python objects. Mixed or other labels stay objects (so 1 and "1" differ)."""
    kinds = set(map(type, ids))
    if kinds == {str}:
        return ids.astype(str)
    if kinds and all(issubclass(k, (int, np.integer)) and not issubclass(k, (bool, np.bool_)) for k in kinds):
        return ids.astype(np.int64)
    return ids


def combine_ids(*columns) -> tuple[np.ndarray, int]:
    """Dense codes of the row-wise tuples ``(columns[0][i], columns[1][i], ...)``: rows get the same code exactly
    when they agree on every column. Vectorised; collision-free (no string joining), int64 never overflows because
    the codes are re-densified after each column."""
    if not columns:
        raise ValueError("combine_ids needs at least one column")
    acc, k = dense_ids(columns[0])
    for col in columns[1:]:
        code, m = dense_ids(col)
        if code.shape != acc.shape:
            raise ValueError(f"columns have different lengths: {acc.shape[0]} and {code.shape[0]}")
        acc, k = dense_ids(acc * m + code)
    return acc, k


def group_index(group_ids, valid: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Dense group index per row (``-1`` for invalid rows) and the number of groups among valid rows."""
    ids = np.asarray(group_ids)
    n = ids.shape[0]
    valid = np.ones(n, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    if valid.shape != (n,):
        raise ValueError(f"valid mask has shape {valid.shape}, expected ({n},)")
    inv = np.full(n, -1, dtype=np.int64)
    dense, k = dense_ids(ids[valid])
    inv[valid] = dense
    return inv, k


def group_sizes(group_ids, valid=None) -> np.ndarray:
    """Number of valid rows in the group of each row (0 for invalid rows): ``== 1`` marks singleton rows."""
    inv, k = group_index(group_ids, valid)
    counts = np.bincount(inv[inv >= 0], minlength=k)
    return np.where(inv >= 0, counts[np.maximum(inv, 0)] if k else 0, 0)


def group_normalize(x, group_ids, valid=None, norm: str = "mean_std", eps: float = 1e-6) -> np.ndarray:
    """Group-relative advantage of ``x`` (see module docstring); float64 array of the same length."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    x = np.asarray(x, dtype=np.float64)
    inv, n_groups = group_index(group_ids, valid)
    if inv.shape != x.shape:
        raise ValueError(f"{x.shape[0]} values but {inv.shape[0]} group labels")
    out = np.zeros_like(x)
    if n_groups == 0:
        return out
    m = inv >= 0
    g = inv[m]
    counts = np.bincount(g, minlength=n_groups)
    # deviations around a member of each group (any member): a group of equal values gets dev = 0 exactly
    xm = x[m]
    shift = np.zeros(n_groups)
    shift[g] = xm
    y = xm - shift[g]
    dev = y - (np.bincount(g, weights=y, minlength=n_groups) / counts)[g]
    adv = dev
    if norm == "mean_std":
        ss = np.bincount(g, weights=dev * dev, minlength=n_groups)
        std = np.sqrt(ss / np.maximum(counts - 1, 1))
        denom = std[g] + eps
        adv = np.divide(dev, denom, out=np.zeros_like(dev), where=denom > 0)  # identical values -> 0, not nan
    out[m] = np.where(counts[g] > 1, adv, 0.0)
    return out
