"""The on-disk row cache of the streaming CSV path, and statistics fitted over it in blocks.

The cache is written sequentially with plain file writes and read back in blocks with
`np.fromfile`: those bytes live in the OS page cache, never in this process's resident
memory. Only the final (normalized, float32) training rows are memory-mapped, for the
random gathers of an epoch; `MappedRows` tells the kernel to drop the pages it touched
every ~64 MB read, so an epoch over a file larger than memory keeps a bounded RSS.
"""

from __future__ import annotations

import mmap
import os
import threading
from typing import Any, Iterator

import numpy as np

BLOCK_ROWS = 1 << 16
_DROP_EVERY_BYTES = 64 << 20
_PAGE = mmap.PAGESIZE


def read_blocks(path: str, n: int, width: int, dtype=np.float64) -> Iterator[np.ndarray]:
    """(rows, width) blocks of a raw row-major file, in order."""
    with open(path, "rb") as f:
        for start in range(0, n, BLOCK_ROWS):
            m = min(BLOCK_ROWS, n - start)
            yield np.fromfile(f, dtype, m * width).reshape(m, width)


class MappedRows:
    """Read-only rows of a raw float file; `take(idx)` gathers a batch (thread-safe)."""

    def __init__(self, path: str, n: int, width: int, dtype=np.float32):
        self._file = open(path, "rb")
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        self.rows = np.frombuffer(self._map, dtype).reshape(n, width)
        self._touched = 0
        self._lock = threading.Lock()

    def take(self, idx: np.ndarray) -> np.ndarray:
        out = self.rows[idx]
        with self._lock:
            # A random row touches at least one page: drop them before they add up.
            self._touched += len(idx) * max(_PAGE, self.rows.itemsize * self.rows.shape[1])
            if self._touched >= _DROP_EVERY_BYTES:
                self._map.madvise(mmap.MADV_DONTNEED)   # clean file pages: re-read on demand
                self._touched = 0
        return out


def moments(blocks: Iterator[np.ndarray], width: int, glob: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std in one pass, merging block moments (Chan et al.), stable like NumPy's two-pass."""
    n, mean, m2 = 0, np.zeros(1 if glob else width), np.zeros(1 if glob else width)
    for blk in blocks:
        blk = blk.reshape(-1, 1) if glob else blk
        nb = len(blk)
        if nb == 0:
            continue
        mb = blk.mean(0)
        m2b = ((blk - mb) ** 2).sum(0)
        tot = n + nb
        delta = mb - mean
        mean = mean + delta * nb / tot
        m2 = m2 + m2b + delta ** 2 * n * nb / tot
        n = tot
    return mean, np.sqrt(m2 / max(n, 1))


def fit_normalizer(blocks: Iterator[np.ndarray], width: int, kind: str, scope: str) -> dict[str, Any]:
    """`transforms.fit_normalizer`, over blocks: the same statistics without all rows at once."""
    scope = "global" if scope == "global" else "feature"
    if kind == "none" or width == 0:
        for _ in blocks:
            pass                                    # the caller may count things as blocks pass
        return {"kind": "none", "scope": scope, "shift": [], "scale": [], "width": width}
    if kind == "zscore":
        shift, span = moments(blocks, width, scope == "global")
    else:
        lo, hi = np.full(width, np.inf), np.full(width, -np.inf)
        for blk in blocks:
            lo, hi = np.minimum(lo, blk.min(0, initial=np.inf)), np.maximum(hi, blk.max(0, initial=-np.inf))
        if scope == "global":
            lo, hi = lo.min(keepdims=True), hi.max(keepdims=True)
        shift, span = (lo, hi - lo) if kind == "minmax" else ((lo + hi) / 2, (hi - lo) / 2)
    scale = np.where(span > 0, span, 1.0)
    return {"kind": kind, "scope": scope, "shift": shift.tolist(), "scale": scale.tolist(), "width": width}


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, vectorized (uint64 arithmetic wraps)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def row_hashes(num: np.ndarray, y: np.ndarray, texts: list[np.ndarray]) -> np.ndarray:
    """A 64-bit hash per row of (numeric bytes, text values, label), for exact-duplicate
    detection without keeping the rows: equal rows hash equal (as bytes, like the in-memory
    rule: two missing values are the same); a false match among 5M rows has odds ~1e-6."""
    bits = np.ascontiguousarray(np.concatenate([num, y[:, None].astype(np.float64)], 1)).view(np.uint64)
    h = np.full(len(y), _GOLDEN, np.uint64)
    for j in range(bits.shape[1]):
        h = _mix(h ^ _mix(bits[:, j] + np.uint64((j + 1) * int(_GOLDEN) % 2**64)))
    for col in texts:
        h = _mix(h ^ np.array([hash(v) for v in col], np.int64).view(np.uint64))
    return h


def remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
