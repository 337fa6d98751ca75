"""The feature encoder: raw rows and fitted `FeatureStats` in, float32 features out.

One code for every path: the in-memory splits, the streamed chunks, `eval` and `predict`.
A table row is imputed with the training fills, log1p'd, clipped to the outlier bounds
(when the rule clips), its categories one-hot encoded and its free text hashed; then the
numeric columns are normalized. Images are flattened (when configured) and normalized.
Non-finite numbers (inf) count as missing. Every change is counted in `Counts`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import numpy as np
import pyarrow as pa

from jaxtrain.data import clean, transforms
from jaxtrain.data.featurestats import FeatureStats
from jaxtrain.util.errors import DataError
from jaxtrain.util.threads import map_ordered

CHUNK_VALUES = 1 << 16     # values converted and normalized at a time: the chunk stays in cache
TABLE_CHUNK_ROWS = 8192    # rows of a table's numbers through every rule at a time (~1 MB)


@dataclasses.dataclass
class Counts:
    """What encoding one split did, per column."""
    missing: dict[str, int] = dataclasses.field(default_factory=dict)      # imputed (non-finite included)
    non_finite: dict[str, int] = dataclasses.field(default_factory=dict)   # inf / -inf in numeric columns
    outliers: dict[str, int] = dataclasses.field(default_factory=dict)    # outside the bounds (clipped if the rule clips)
    unseen: dict[str, int] = dataclasses.field(default_factory=dict)       # categories not seen in training

    def add(self, other: "Counts") -> "Counts":
        for field in dataclasses.fields(self):
            mine = getattr(self, field.name)
            for k, v in getattr(other, field.name).items():
                mine[k] = mine.get(k, 0) + v
        return self


def _nonzero(names: list[str], counts) -> dict[str, int]:
    return {n: int(c) for n, c in zip(names, counts) if c}


def non_finite_to_missing(num: np.ndarray, names: list[str]) -> dict[str, int]:
    """inf / -inf become NaN (missing) in place; returns how many per column."""
    inf = np.isinf(num)
    if not inf.any():
        return {}
    num[inf] = np.nan
    return _nonzero(names, inf.sum(0))


def feature_width(stats: FeatureStats) -> int:
    return len(stats.numeric_columns) + sum(len(c) for c in stats.categories.values()) + \
        len(stats.text_columns) * stats.hash_dim


def feature_names(stats: FeatureStats) -> list[str]:
    return list(stats.numeric_columns) + [f"{n}={v}" for n, cats in stats.categories.items() for v in cats] + \
        [f"{n}#{k}" for n in stats.text_columns for k in range(stats.hash_dim)]


def encode_table(stats: FeatureStats, num: np.ndarray, txt: dict[str, pa.Array], where: str,
                 line_of: Callable[[int], int] | None = None, normalize: bool = False
                 ) -> tuple[np.ndarray, Counts]:
    """Raw table rows -> (n, features) float32 (normalized too with `normalize`), and what was
    changed. `num` (n, k) float (NaN: missing) is modified in place; `txt` maps text columns to
    Arrow string arrays (null: missing). The numbers go through every rule a block
    of rows at a time, so that the block stays in cache across the rules; the blocks and the
    text columns are shared among the thread pool's workers, counted in their order."""
    names = stats.numeric_columns
    out = np.empty((len(num), feature_width(stats)), np.float32)
    txt_missing = clean.missing_counts(None, txt, names)[0] if txt else {}
    _, txt = clean.impute(num[:0], txt, names, stats.fills)

    def numbers(start: int) -> Counts:
        at = (lambda i: line_of(start + i)) if line_of is not None else None
        block = out[start:start + TABLE_CHUNK_ROWS]
        counts = _encode_numbers(stats, num[start:start + TABLE_CHUNK_ROWS], block, where, at)
        if normalize:
            transforms.normalize_(block, stats.normalize)
        return counts
    blocks = [functools.partial(numbers, start) for start in range(0, len(num), TABLE_CHUNK_ROWS)]
    done = map_ordered(lambda job: job(), blocks + _text_jobs(stats, txt, out))
    counts = Counts()
    for block_counts in done[:len(blocks)]:
        counts.add(block_counts)
    counts.missing.update(txt_missing)
    counts.unseen.update((name, unseen) for name, unseen in done[len(blocks):] if unseen)
    return out, counts


def _text_jobs(stats: FeatureStats, txt: dict, out: np.ndarray) -> list[Callable[[], tuple[str, int]]]:
    """One job per (imputed) text column: its one-hot or hashed columns written into `out`;
    each returns (name, unseen categories)."""
    def one_hot(name: str, cats: list[str], into: np.ndarray) -> tuple[str, int]:
        into[...], unseen = transforms.one_hot(txt[name], cats)
        return name, unseen

    def hashed(name: str, into: np.ndarray) -> tuple[str, int]:
        into[...] = transforms.hash_text(txt[name], stats.hash_dim)
        return name, 0
    jobs, col = [], len(stats.numeric_columns)
    for name, cats in stats.categories.items():
        jobs.append(functools.partial(one_hot, name, cats, out[:, col:col + len(cats)]))
        col += len(cats)
    for name in stats.text_columns:
        jobs.append(functools.partial(hashed, name, out[:, col:col + stats.hash_dim]))
        col += stats.hash_dim
    return jobs


def _encode_numbers(stats: FeatureStats, num: np.ndarray, out: np.ndarray, where: str,
                    line_of: Callable[[int], int] | None) -> Counts:
    """The numeric columns of a block of rows: inf to missing, imputed, log1p, outlier rule;
    written into the first columns of `out`."""
    names = stats.numeric_columns
    counts = Counts(non_finite=non_finite_to_missing(num, names))
    nan = np.isnan(num)                   # counted and filled from one mask
    counts.missing = _nonzero(names, nan.sum(0))
    clean.impute(num, {}, names, stats.fills, nan)
    transforms.apply_log(num, names, stats.log_columns, where, line_of)
    rule = stats.outliers
    if rule.bounds is not None and names:
        counts.outliers = _nonzero(names, clean.outlier_mask(num, rule.bounds).sum(0))
        if rule.action == "clip":
            clean.clip_(num, rule.bounds)
    out[:, :len(names)] = num
    return counts


def encode_arrays(stats: FeatureStats, x: np.ndarray, where: str, normalize: bool = False) -> np.ndarray:
    """Images or feature arrays (n, ...) -> float32 in the trained feature shape, before
    normalization, or normalized too (`normalize`: in cache-sized chunks, one pass)."""
    shape = tuple(stats.feature_shape)
    if x.dtype.kind not in "biuf":
        raise DataError(f"{where}: inputs must be numeric, got {x.dtype}")
    if tuple(x.shape[1:]) != shape:
        if int(np.prod(x.shape[1:])) != int(np.prod(shape)):
            raise DataError(f"{where}: examples have shape {tuple(x.shape[1:])} but the model was trained "
                            f"on {shape}; pass inputs shaped like the training data")
        x = x.reshape(len(x), *shape)      # images flattened for the model, as in training
    if not normalize:
        return x.astype(np.float32)
    out = np.empty(x.shape, np.float32)
    step = max(1, CHUNK_VALUES // max(int(np.prod(shape)), 1))
    for start in range(0, len(x), step):
        chunk = out[start:start + step]
        chunk[...] = x[start:start + step]
        transforms.normalize_(chunk, stats.normalize)
    return out


def normalize(stats: FeatureStats, x: np.ndarray) -> np.ndarray:
    """Encoded float32 features -> normalized, in place."""
    return transforms.normalize_(x, stats.normalize)


def encode_targets(stats: FeatureStats, y: np.ndarray) -> np.ndarray:
    """Labels -> int32 class indices, or regression targets -> standardized float32."""
    if stats.task == "regression":
        return ((y.astype(np.float64) - stats.target_mean) / stats.target_scale).astype(np.float32)
    if y.dtype == object:                 # text class names (checked against the classes before)
        classes = np.asarray(stats.classes, str)
        order = np.argsort(classes)
        return order[np.searchsorted(classes[order], y.astype(str))].astype(np.int32)
    return y.astype(np.int32)
