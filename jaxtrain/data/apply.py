"""Apply a run's saved preprocessing (stats.json) to new raw inputs, for prediction.

The same fitted statistics and the same transforms as `preprocess.prepare` uses on
its evaluation splits: impute with the training fills, log1p, clip outliers (when
the rule clips), one-hot / hashed text, normalize. Rows are never dropped.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxtrain.data import clean, transforms
from jaxtrain.data.csvfile import missing_mask, read_rows, to_float
from jaxtrain.config.data import DataConfig
from jaxtrain.data.raw import Part
from jaxtrain.util.errors import DataError


def feature_columns(stats: dict[str, Any]) -> list[str]:
    """The raw columns a table model was trained on, in training order."""
    return list(stats.get("numeric_columns", [])) + list(stats.get("categories", {})) + \
        list(stats.get("text_columns", []))


def check_columns(header: list[str], stats: dict[str, Any], cfg: DataConfig, where: str) -> None:
    """The input must hold every training feature column; it may also hold the target and
    the configured drop_columns (ignored). Anything else is an error naming the columns."""
    wanted = feature_columns(stats)
    allowed = set(wanted) | set(cfg.drop_columns) | ({cfg.target} if cfg.target else set())
    missing = [c for c in wanted if c not in header]
    extra = [c for c in header if c not in allowed]
    if missing or extra:
        what = []
        if missing:
            what.append(f"missing column(s): {', '.join(missing)}")
        if extra:
            what.append(f"unexpected column(s): {', '.join(extra)}")
        raise DataError(f"{where}: columns do not match the training data ({'; '.join(what)}); "
                        f"the input needs exactly the training columns: {', '.join(wanted)}")


def apply_table(header: list[str], table: np.ndarray, stats: dict[str, Any], cfg: DataConfig,
                where: str, lines: np.ndarray | None = None) -> np.ndarray:
    """(n, m) strings with a header -> normalized float32 features, as for an evaluation split."""
    check_columns(header, stats, cfg, where)
    lines = np.arange(len(table)) if lines is None else lines
    names = list(stats.get("numeric_columns", []))
    num = np.stack([to_float(table[:, header.index(n)], where, n, lines) for n in names], 1) \
        if names else np.zeros((len(table), 0))
    txt = {}
    for n in list(stats.get("categories", {})) + list(stats.get("text_columns", [])):
        raw_col = table[:, header.index(n)]
        col = np.char.strip(raw_col).astype(object)
        col[missing_mask(raw_col)] = None
        txt[n] = col
    part = clean.impute(Part(y=np.zeros(len(table)), rows=lines, num=num, txt=txt), names, stats["fills"])
    part.num = transforms.apply_log(part.num, names, stats.get("log_columns", []), where, lines)
    rule = stats.get("outliers") or {}
    if rule.get("bounds") is not None and rule.get("action") == "clip" and names:
        part.num = clean.clip(part.num, rule["bounds"])
    blocks = [part.num]
    for n, cats in stats.get("categories", {}).items():
        blocks.append(transforms.one_hot(part.txt[n], cats)[0])
    for n in stats.get("text_columns", []):
        blocks.append(transforms.hash_text(part.txt[n], stats["hash_dim"]))
    enc = np.concatenate(blocks, axis=1) if len(blocks) > 1 else part.num
    return transforms.apply_normalizer(enc, stats["normalize"], stats["normalize"]["width"])


def apply_arrays(x: np.ndarray, stats: dict[str, Any], where: str) -> np.ndarray:
    """Images or feature arrays (n, ...) -> normalized float32 in the trained feature shape."""
    shape = tuple(stats["feature_shape"])
    if x.dtype.kind not in "biuf":
        raise DataError(f"{where}: inputs must be numeric, got {x.dtype}")
    if tuple(x.shape[1:]) != shape:
        if int(np.prod(x.shape[1:])) != int(np.prod(shape)):
            raise DataError(f"{where}: examples have shape {tuple(x.shape[1:])} but the model was trained "
                            f"on {shape}; pass inputs shaped like the training data")
        x = x.reshape(len(x), *shape)  # images flattened for the model, as in training
    return transforms.apply_normalizer(x, stats["normalize"], stats["normalize"]["width"])


def read_csv_features(path: str, stats: dict[str, Any], cfg: DataConfig) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(features, header, table) for a CSV of raw rows."""
    header, table, lines = read_rows(path)
    return apply_table(header, table, stats, cfg, path, lines), header, table


def invert_normalizer(x: np.ndarray, stats: dict[str, Any]) -> np.ndarray:
    """Normalized features back to input units (for showing images), float64."""
    flat = x.reshape(len(x), -1).astype(np.float64)
    width = stats["normalize"].get("width", flat.shape[1])
    arrays = transforms.normalizer_arrays(stats["normalize"], width)
    if arrays is not None:
        flat[:, :width] = flat[:, :width] * arrays[1] + arrays[0]
    return flat.reshape(x.shape)
