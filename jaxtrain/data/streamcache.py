"""The on-disk caches of the streaming path.

`ColumnCache`: every record's converted columns (numeric float64 with NaN, one raw file
per column; text with nulls, an Arrow IPC file), appended block by block, read back one
column at a time (for fitting) or one block at a time (for encoding): never the whole
file in memory. Numeric columns get raw files of their own because reading one field of
an IPC file reads whole record batches, which would hold the whole cache in memory.
`RowFile` / `MappedRows`: the encoded float32 rows of a split, written sequentially and
gathered by index through a memory map whose touched pages are dropped every ~64 MB, so
an epoch over a file larger than memory keeps a bounded resident set.
"""

from __future__ import annotations

import mmap
import os
import shutil
import tempfile
import threading
import weakref
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from jaxtrain.data.raw import Part

_DROP_EVERY_BYTES = 64 << 20
_PAGE = mmap.PAGESIZE


class CacheDir:
    """A temp directory for the caches, deleted when this object is garbage (or at exit)."""

    def __init__(self, parent: str | None):
        if parent:  # data.cache_dir may name a folder not made yet
            os.makedirs(parent, exist_ok=True)
        self.path = tempfile.mkdtemp(prefix="jaxtrain-stream-", dir=parent)
        self._remove = weakref.finalize(self, shutil.rmtree, self.path, True)

    def hand_over(self, owner: object) -> None:
        """Delete the directory with `owner` instead."""
        self._remove.detach()
        weakref.finalize(owner, shutil.rmtree, self.path, True)


class ColumnCache:
    """Converted columns of every record, in file order: each numeric column in its own raw
    float64 file (read back alone, as one contiguous array), the text columns in an Arrow
    IPC file, one record batch per block."""

    def __init__(self, path: str, num_names: list[str], txt_names: list[str]):
        self.path, self.num_names, self.txt_names = path, num_names, txt_names
        self._num_files = [open(f"{path}.num{j}.f64", "wb") for j in range(len(num_names))]
        self._schema = pa.schema([pa.field(n, pa.string()) for n in txt_names])
        self._writer = ipc.new_file(path, self._schema)
        self.block_rows: list[int] = []

    def append(self, part: Part) -> None:
        for j, f in enumerate(self._num_files):
            f.write(np.ascontiguousarray(part.num[:, j], np.float64).tobytes())
        self._writer.write_batch(pa.record_batch([part.txt[n] for n in self.txt_names], schema=self._schema))
        self.block_rows.append(len(part))

    def close(self) -> None:
        for f in self._num_files:
            f.close()
        self._writer.close()

    def remove(self) -> None:
        for path in [self.path] + [f.name for f in self._num_files]:
            os.unlink(path)

    def numeric(self, name: str) -> np.ndarray:
        """One numeric column of every record (float64, NaN missing)."""
        return np.fromfile(f"{self.path}.num{self.num_names.index(name)}.f64", np.float64)

    def text(self, name: str) -> pa.Array:
        """One text column of every record (null: missing)."""
        options = ipc.IpcReadOptions(included_fields=[self.txt_names.index(name)])
        col = ipc.open_file(pa.OSFile(self.path), options=options).read_all().column(0)
        return col.combine_chunks() if col.num_chunks else pa.array([], pa.string())

    def blocks(self) -> Iterator[tuple[int, np.ndarray, dict[str, pa.Array]]]:
        """(first record, numeric block (n, k) float64, text columns) in file order."""
        reader = ipc.open_file(pa.OSFile(self.path))
        files = [open(f.name, "rb") for f in self._num_files]
        first = 0
        try:
            for i, n in enumerate(self.block_rows):
                num = np.stack([np.fromfile(f, np.float64, n) for f in files], 1) if files else np.zeros((n, 0))
                batch = reader.get_batch(i)
                yield first, num, {name: batch.column(j) for j, name in enumerate(self.txt_names)}
                first += n
        finally:
            for f in files:
                f.close()


class RowFile:
    """float32 rows of a fixed width, appended to a raw file."""

    def __init__(self, path: str, width: int):
        self.path, self.width, self.rows = path, width, 0
        self._file = open(path, "wb")

    def append(self, x: np.ndarray) -> None:
        self._file.write(np.ascontiguousarray(x, np.float32).tobytes())
        self.rows += len(x)

    def close(self) -> "MappedRows":
        self._file.close()
        return MappedRows(self.path, self.rows, self.width)


class MappedRows:
    """Read-only float32 rows of a raw file; `take(idx)` gathers rows (thread-safe)."""

    def __init__(self, path: str, n: int, width: int):
        self.path = path
        self._file = open(path, "rb")
        size = os.path.getsize(path)
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        self.rows = np.frombuffer(self._map, np.float32).reshape(n, width) if size else \
            np.zeros((n, width), np.float32)
        self._touched = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.rows)

    def __reduce__(self):
        return MappedRows, (self.path, *self.rows.shape)   # a worker process maps the file itself

    def take(self, idx: np.ndarray) -> np.ndarray:
        out = self.rows[idx]
        with self._lock:
            # A random row touches at least one page: drop them before they add up.
            self._touched += len(idx) * max(_PAGE, self.rows.itemsize * self.rows.shape[1])
            if self._touched >= _DROP_EVERY_BYTES and self._map is not None:
                self._map.madvise(mmap.MADV_DONTNEED)   # clean file pages: re-read on demand
                self._touched = 0
        return out
