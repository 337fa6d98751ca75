"""Cleaning rules: duplicates, missing values, outliers, invalid labels.

Each rule is a fit (on the training split) and an apply, and returns counts for the
report. Rows are dropped only from the training split; evaluation splits are
transformed (imputed, clipped) and every change is counted.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxtrain.config.data import CleanConfig
from jaxtrain.data.raw import Part, RawData
from jaxtrain.util.errors import DataError

# ---------------------------------------------------------------- duplicates


def duplicate_mask(part: Part) -> np.ndarray:
    """True for every row that repeats an earlier row exactly (features and label)."""
    n = len(part)
    if n == 0:
        return np.zeros(0, bool)
    if part.x is not None:
        flat = np.ascontiguousarray(part.x.reshape(n, -1))
        keys = [flat.view(np.dtype((np.void, flat.dtype.itemsize * flat.shape[1]))).ravel()]
    else:
        num = np.ascontiguousarray(part.num)     # NaN bytes compare equal: two missing are the same
        keys = [num.view(np.dtype((np.void, 8 * num.shape[1]))).ravel()] if num.shape[1] else []
    seen: set = set()
    dup = np.zeros(n, bool)
    cols = keys + [part.txt[k] for k in part.txt] + [part.y]
    ybytes = part.y.tobytes() if part.y.dtype != object else None
    for i in range(n):
        key = tuple(c[i] if c.dtype == object else c[i].tobytes() for c in cols[:-1]) + (
            part.y[i] if ybytes is None else part.y[i].tobytes(),)
        if key in seen:
            dup[i] = True
        else:
            seen.add(key)
    return dup


# ---------------------------------------------------------------- missing values


def _most_frequent(values: np.ndarray) -> Any:
    uniq, counts = np.unique(values, return_counts=True)
    return uniq[np.argmax(counts)]      # ties: the smallest value


def fit_fills(part: Part, num_names: list[str], cfg: CleanConfig) -> dict[str, Any]:
    """Fill value per column, fitted on the training split. With missing=drop, evaluation
    rows are still imputed (never dropped): numeric with the median, text with the most frequent."""
    fills: dict[str, Any] = {}
    rule = cfg.missing
    for j, name in enumerate(num_names):
        col = part.num[:, j]
        col = col[~np.isnan(col)]
        if len(col) == 0:
            raise DataError(f"column '{name}': every value in the training split is missing; "
                            "drop it with data.drop_columns")
        if rule == "mean":
            v = col.mean()
        elif rule == "most_frequent":
            v = _most_frequent(col)
        elif rule == "constant":
            v = cfg.fill_value
        else:                               # median, and drop (for evaluation rows)
            v = np.median(col)
        fills[name] = float(v)
    for name, col in part.txt.items():
        present = np.array([v for v in col if v is not None], dtype=object)
        if len(present) == 0:
            raise DataError(f"column '{name}': every value in the training split is missing; "
                            "drop it with data.drop_columns")
        fills[name] = cfg.fill_text if rule == "constant" else str(_most_frequent(present.astype(str)))
    return fills


def missing_counts(part: Part, num_names: list[str]) -> tuple[dict[str, int], np.ndarray]:
    """Missing values per column, and a per-row mask of rows with any missing value."""
    counts, any_missing = {}, np.zeros(len(part), bool)
    if part.num is not None:
        m = np.isnan(part.num)
        any_missing |= m.any(1)
        for j, name in enumerate(num_names):
            counts[name] = int(m[:, j].sum())
    for name, col in part.txt.items():
        m = np.array([v is None for v in col], bool)
        any_missing |= m
        counts[name] = int(m.sum())
    return {k: v for k, v in counts.items() if v}, any_missing


def impute(part: Part, num_names: list[str], fills: dict[str, Any]) -> Part:
    if part.num is not None and part.num.shape[1]:
        num = part.num.copy()
        for j, name in enumerate(num_names):
            m = np.isnan(num[:, j])
            if m.any():
                num[m, j] = fills[name]
        part.num = num
    for name, col in list(part.txt.items()):
        col = col.copy()
        col[np.array([v is None for v in col], bool)] = fills[name]
        part.txt[name] = col
    return part


# ---------------------------------------------------------------- outliers


def fit_bounds(num: np.ndarray, cfg: CleanConfig) -> list[list[float]]:
    """[low, high] per numeric column: mean +- t*std (zscore) or [q1 - k*iqr, q3 + k*iqr] (IQR)."""
    bounds = []
    for j in range(num.shape[1]):
        col = num[:, j]
        if cfg.outliers == "zscore":
            mu, sd = col.mean(), col.std()
            lo, hi = mu - cfg.zscore_threshold * sd, mu + cfg.zscore_threshold * sd
        else:
            q1, q3 = np.percentile(col, [25, 75])
            lo, hi = q1 - cfg.iqr_k * (q3 - q1), q3 + cfg.iqr_k * (q3 - q1)
        bounds.append([float(lo), float(hi)])
    return bounds


def outlier_mask(num: np.ndarray, bounds: list[list[float]]) -> np.ndarray:
    b = np.asarray(bounds, np.float64).reshape(-1, 2)
    return (num < b[:, 0]) | (num > b[:, 1])


def clip(num: np.ndarray, bounds: list[list[float]]) -> np.ndarray:
    b = np.asarray(bounds, np.float64).reshape(-1, 2)
    return np.clip(num, b[:, 0], b[:, 1])


# ---------------------------------------------------------------- labels


def label_problems(y: np.ndarray, task: str, num_classes: int | None,
                   classes: list[str] | None) -> np.ndarray:
    """Per-row description of an invalid label ('' where valid)."""
    out = np.full(len(y), "", dtype=object)
    if y.dtype == object:
        known = set(classes or [])
        for i, v in enumerate(y):
            if v is None:
                out[i] = "missing label"
            elif task == "regression":
                out[i] = f"target '{v}' is not a number"
            elif v not in known:
                out[i] = f"label '{v}' is not one of the classes seen in training ({', '.join(classes or [])})"
        return out
    nan = np.isnan(y)
    out[nan] = "missing label" if task == "classification" else "missing target"
    if task == "classification":
        bad_int = ~nan & (np.round(y) != y)
        out[bad_int] = [f"label {v:g} is not an integer" for v in y[bad_int]]
        rng = ~nan & ~bad_int & ((y < 0) | (y >= (num_classes or np.inf)))
        out[rng] = [f"label {v:g} is out of range [0, {num_classes})" for v in y[rng]]
    else:
        inf = np.isinf(y)
        out[inf] = "target is infinite"
    return out


def invalid_labels(raw: RawData, split: str, part: Part, task: str, num_classes: int | None,
                   classes: list[str] | None, policy: str) -> np.ndarray:
    """Mask of the invalid labels in `part`; raises unless they are training rows and policy=drop."""
    bad = label_problems(part.y, task, num_classes, classes)
    bad_mask = bad != ""
    if not bad_mask.any():
        return bad_mask
    i = int(np.argmax(bad_mask))
    where = raw.row_label(split, int(part.rows[i]))
    col = f" column '{raw.target}'" if raw.extra.get("row_kind") == "line" else ""
    if split != "train":
        raise DataError(f"{where}{col}: {bad[i]} in the {split} split ({int(bad_mask.sum())} such rows); "
                        "evaluation rows are never dropped: fix the data or the classes")
    if policy == "error":
        raise DataError(f"{where}{col}: {bad[i]} ({int(bad_mask.sum())} such rows in the training split); "
                        "fix the data, set data.num_classes, or set data.clean.invalid_labels=drop")
    return bad_mask


def check_labels(raw: RawData, split: str, part: Part, task: str, num_classes: int | None,
                 classes: list[str] | None, policy: str) -> tuple[Part, int]:
    """Drop (training split, policy=drop) or raise on invalid labels. Returns (part, dropped)."""
    bad = invalid_labels(raw, split, part, task, num_classes, classes, policy)
    if not bad.any():
        return part, 0
    return part.take(np.flatnonzero(~bad)), int(bad.sum())
