"""Feature transforms, vectorized: log, one-hot categories, hashed bag-of-words, normalization.

Fits accumulate in float64 (integer data: exact integer sums); applies produce float32.
"""

from __future__ import annotations

import zlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jaxtrain.data.featurestats import Normalizer
from jaxtrain.util.errors import DataError

_TOKEN_BYTE = np.zeros(256, bool)   # tokens: runs of [a-z0-9'] in the lowercased text
_TOKEN_BYTE[[*range(ord("a"), ord("z") + 1), *range(ord("0"), ord("9") + 1), ord("'")]] = True
CHUNK_VALUES = 1 << 22               # values per chunk when a fit walks a large array


def _strings(texts: pa.Array | np.ndarray) -> pa.Array:
    return texts if isinstance(texts, pa.Array) else pa.array(texts, pa.string())


def _tokens(texts: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """(every token as a string, the row of each): tokens are runs of [a-z0-9'] in the
    lowercased UTF-8 bytes (a non-ASCII byte never belongs to one), found over Arrow's buffers."""
    low = pc.utf8_lower(pc.fill_null(texts, ""))
    offsets = np.frombuffer(low.buffers()[1], np.int32, len(low) + 1, low.offset * 4).astype(np.int64)
    data = np.frombuffer(low.buffers()[2], np.uint8)[offsets[0]:offsets[-1]] if low.buffers()[2] else \
        np.zeros(0, np.uint8)
    offsets -= offsets[0]
    inside = _TOKEN_BYTE[data]
    edge = np.zeros(len(data) + 1, bool)
    edge[offsets] = True                                  # a string boundary ends and starts runs
    step = np.diff(np.concatenate([[False], inside, [False]]).astype(np.int8))
    starts = np.flatnonzero((step[:-1] == 1) | (inside & edge[:-1]))
    ends = np.flatnonzero((step[1:] == -1) | (inside & edge[1:]))
    ends = ends + 1
    rows = np.searchsorted(offsets, starts, side="right") - 1
    return _gather_runs(data, starts, ends), rows


def _gather_runs(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> pa.Array:
    """The byte runs data[starts[i]:ends[i]] as one Arrow string array: the buffer cut at every
    run's start and end (tokens and the gaps between them alternate), then every other piece."""
    cuts = np.empty(2 * len(starts) + 2, np.int32)
    cuts[0], cuts[-1] = 0, len(data)
    cuts[1:-1:2], cuts[2:-1:2] = starts, ends
    pieces = pa.StringArray.from_buffers(len(cuts) - 1, pa.py_buffer(cuts), pa.py_buffer(data))
    return pieces.take(pa.array(np.arange(1, len(cuts) - 1, 2)))


def hash_text(texts: pa.Array | np.ndarray, dim: int) -> np.ndarray:
    """Hashed bag-of-words (n, dim) float32: token counts in `dim` buckets by zlib.crc32 (stable
    across processes, unlike Python's hash()), each row scaled to unit L2 norm. Tokens are
    hashed once per distinct token, never per row."""
    texts = _strings(texts)
    words, rows = _tokens(texts)
    enc = words.dictionary_encode()
    bucket = np.array([zlib.crc32(w.encode()) % dim for w in enc.dictionary.to_pylist()], np.int64)
    keys, counts = np.unique(rows * dim + bucket[enc.indices.to_numpy()], return_counts=True)
    key_rows = keys // dim
    norm = np.sqrt(np.bincount(key_rows, weights=counts.astype(np.float64) ** 2, minlength=len(texts)))
    out = np.zeros((len(texts), dim), np.float32)
    out.ravel()[keys] = counts / norm[key_rows]
    return out


def fit_categories(col: pa.Array | np.ndarray) -> list[str]:
    """The distinct present values, sorted (by code point)."""
    return sorted(pc.unique(_strings(col).drop_null()).to_pylist())


def one_hot(col: pa.Array | np.ndarray, categories: list[str]) -> tuple[np.ndarray, int]:
    """(n, len(categories)) float32 one-hot; unseen categories map to all zeros. Returns (array, unseen)."""
    out = np.zeros((len(col), len(categories)), np.float32)
    pos = pc.fill_null(pc.index_in(_strings(col), value_set=pa.array(categories, pa.string())), -1)
    pos = pos.to_numpy(zero_copy_only=False)
    seen = pos >= 0
    out[np.flatnonzero(seen), pos[seen]] = 1.0
    return out, int((~seen).sum())


def apply_log(num: np.ndarray, names: list[str], log_columns: list[str], where: str,
              line_of=None) -> np.ndarray:
    """log1p of the named numeric columns (in place); values <= -1 are an error naming the line.
    `line_of(i)` names row i's line in the source, when there is one."""
    for name in log_columns:
        if name not in names:
            raise DataError(f"{where}: data.log_columns names '{name}', which is not a numeric column; "
                            f"numeric columns: {', '.join(names)}")
        j = names.index(name)
        bad = num[:, j] <= -1
        if bad.any():
            i = int(np.argmax(bad))
            line = f" line {line_of(i)}" if line_of is not None else ""
            raise DataError(f"{where}{line} column '{name}': value {num[i, j]:g} <= -1 has no log1p; "
                            "remove the column from data.log_columns")
        num[:, j] = np.log1p(num[:, j])
    return num


# ---------------------------------------------------------------- normalization


class Moments:
    """Count, mean and sum of squared deviations per column, merged chunk by chunk (Chan et al.)
    in float64: as precise as NumPy's two-pass mean/std without holding the data in float64."""

    def __init__(self, width: int):
        self.n, self.mean, self.m2 = 0, np.zeros(width), np.zeros(width)

    def add(self, block: np.ndarray) -> None:
        nb = len(block)
        if nb == 0:
            return
        if block.dtype.kind in "ui" and block.dtype.itemsize <= 2:    # exact integer sums
            s1 = np.add.reduce(block, 0, dtype=np.int64).astype(np.float64)
            wide = block.astype(np.int64)
            mb = s1 / nb
            m2b = np.add.reduce(wide * wide, 0).astype(np.float64) - s1 * mb
        else:
            wide = block.astype(np.float64)
            mb = wide.mean(0)
            wide -= mb
            m2b = (wide * wide).sum(0)
        tot = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * nb / tot
        self.m2 = self.m2 + m2b + delta ** 2 * self.n * nb / tot
        self.n = tot

    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / max(self.n, 1))


def _blocks(flat: np.ndarray, scope: str):
    """Row chunks of `flat` (n, width); for the global scope, as one column of values."""
    if scope == "global":
        flat = flat.reshape(-1, 1)
    step = max(1, CHUNK_VALUES // max(flat.shape[1], 1))
    for start in range(0, len(flat), step):
        yield flat[start:start + step]


def fit_normalizer(blocks, width: int, kind: str, scope: str) -> Normalizer:
    """Shift and scale so that (x - shift) / scale is normalized, from (rows, width) blocks
    (for the global scope, blocks of one column): per feature or global."""
    if kind == "none" or width == 0:
        for _ in blocks:
            pass
        return Normalizer("none", scope, [], [], width)
    if kind == "zscore":
        m = Moments(1 if scope == "global" else width)
        for blk in blocks:
            m.add(blk)
        shift, span = m.mean, m.std()
    else:
        lo = hi = None
        for blk in blocks:
            if len(blk):
                bl, bh = blk.min(0).astype(np.float64), blk.max(0).astype(np.float64)
                lo, hi = (bl, bh) if lo is None else (np.minimum(lo, bl), np.maximum(hi, bh))
        shift, span = (lo, hi - lo) if kind == "minmax" else ((lo + hi) / 2, (hi - lo) / 2)
    scale = np.where(span > 0, span, 1.0)
    return Normalizer(kind, scope, shift.tolist(), scale.tolist(), width)


def fit_normalizer_on(x: np.ndarray, width: int, kind: str, scope: str) -> Normalizer:
    """`fit_normalizer` over the first `width` features of an in-memory array."""
    flat = x.reshape(len(x), int(np.prod(x.shape[1:])))[:, :width]
    return fit_normalizer(_blocks(flat, scope), width, kind, scope)


def normalize_(x: np.ndarray, norm: Normalizer) -> np.ndarray:
    """Normalize float32 `x` (n, ...) in place on its first `width` features; returns x."""
    arrays = norm.arrays()
    if arrays is None:
        return x
    flat = x.reshape(len(x), int(np.prod(x.shape[1:])))
    head = flat[:, :norm.width]
    head -= arrays[0]
    head /= arrays[1]
    return x


def denormalize(x: np.ndarray, norm: Normalizer) -> np.ndarray:
    """Normalized features back to input units (for showing images), float64."""
    flat = x.reshape(len(x), -1).astype(np.float64)
    arrays = norm.arrays()
    if arrays is not None:
        flat[:, :norm.width] = flat[:, :norm.width] * arrays[1] + arrays[0]
    return flat.reshape(x.shape)
