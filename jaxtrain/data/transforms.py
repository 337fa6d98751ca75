"""Feature transforms: log, one-hot categories, hashed bag-of-words, normalization.

Every transform is a fit on the training split (returning JSON-able statistics)
and an apply that uses only those statistics.
"""

from __future__ import annotations

import re
import zlib
from typing import Any

import numpy as np

from jaxtrain.util.errors import DataError

_TOKEN = re.compile(r"[a-z0-9']+")


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def hash_text(texts: np.ndarray, dim: int) -> np.ndarray:
    """Hashed bag-of-words: token counts in `dim` buckets by zlib.crc32 (stable across
    processes, unlike Python's hash()), each row scaled to unit L2 norm."""
    out = np.zeros((len(texts), dim), np.float64)
    for i, t in enumerate(texts):
        for tok in tokens(str(t)):
            out[i, zlib.crc32(tok.encode()) % dim] += 1.0
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norm > 0, norm, 1.0)


def fit_categories(col: np.ndarray) -> list[str]:
    return sorted({str(v) for v in col})


def one_hot(col: np.ndarray, categories: list[str]) -> tuple[np.ndarray, int]:
    """(n, len(categories)) one-hot; unseen categories map to all zeros. Returns (array, unseen)."""
    index = {c: i for i, c in enumerate(categories)}
    out = np.zeros((len(col), len(categories)), np.float64)
    unseen = 0
    for i, v in enumerate(col):
        j = index.get(str(v))
        if j is None:
            unseen += 1
        else:
            out[i, j] = 1.0
    return out, unseen


def apply_log(num: np.ndarray, names: list[str], log_columns: tuple[str, ...] | list[str],
              where: str, rows: np.ndarray | None = None) -> np.ndarray:
    """log1p of the named numeric columns; values <= -1 are an error naming the row."""
    if not log_columns:
        return num
    num = num.copy()
    for name in log_columns:
        if name not in names:
            raise DataError(f"{where}: data.log_columns names '{name}', which is not a numeric column; "
                            f"numeric columns: {', '.join(names)}")
        j = names.index(name)
        bad = num[:, j] <= -1
        if bad.any():
            i = int(np.argmax(bad))
            row = f" row {int(rows[i])}" if rows is not None else ""
            raise DataError(f"{where}{row} column '{name}': value {num[i, j]:g} <= -1 has no log1p; "
                            "remove the column from data.log_columns")
        num[:, j] = np.log1p(num[:, j])
    return num


# ---------------------------------------------------------------- normalization


def fit_normalizer(x: np.ndarray, kind: str, scope: str) -> dict[str, Any]:
    """Shift and scale so that (x - shift) / scale is normalized; per feature or global."""
    flat = x.reshape(len(x), -1).astype(np.float64)
    if kind == "none" or flat.shape[1] == 0:
        return {"kind": "none", "scope": scope, "shift": [], "scale": []}
    data = flat.reshape(-1, 1) if scope == "global" else flat
    if kind == "zscore":
        shift, span = data.mean(0), data.std(0)
    else:
        lo, hi = data.min(0), data.max(0)
        shift, span = (lo, hi - lo) if kind == "minmax" else ((lo + hi) / 2, (hi - lo) / 2)
    scale = np.where(span > 0, span, 1.0)
    return {"kind": kind, "scope": scope, "shift": shift.tolist(), "scale": scale.tolist()}


def normalizer_arrays(stats: dict[str, Any], width: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(shift, scale) as float64 vectors of `width`, or None for no normalization."""
    if stats["kind"] == "none" or width == 0:
        return None
    shift, scale = np.asarray(stats["shift"], np.float64), np.asarray(stats["scale"], np.float64)
    if stats["scope"] == "global":
        shift, scale = np.full(width, shift[0]), np.full(width, scale[0])
    if len(shift) != width:
        raise DataError(f"saved statistics normalize {len(shift)} features but the data has {width}; "
                        "the data does not match the run that saved stats.json")
    return shift, scale


def apply_normalizer(x: np.ndarray, stats: dict[str, Any], width: int | None = None) -> np.ndarray:
    """Normalize the first `width` features (all by default) in float64, return float32."""
    shape = x.shape
    flat = x.reshape(len(x), int(np.prod(shape[1:]))).astype(np.float64)
    width = flat.shape[1] if width is None else width
    arrays = normalizer_arrays(stats, width)
    if arrays is not None:
        flat[:, :width] = (flat[:, :width] - arrays[0]) / arrays[1]
    return flat.reshape(shape).astype(np.float32)
