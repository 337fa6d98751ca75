"""Reading a large CSV in blocks of records with Arrow's streaming reader (`open_csv`).

Each block is converted by the same column rules as the in-memory reader (`csvfile.to_part`).
Numeric columns parse inside Arrow; if a value stops that parser (a padded missing
marker such as ' NA', or a word, which is then located), the rest of the file is read
with those columns as strings and converted by the string rules instead.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

from jaxtrain.data import csvfile
from jaxtrain.data.csvfile import CsvSchema, LineIndex
from jaxtrain.data.raw import Part

BLOCK_BYTES = 1 << 20              # Arrow's default: larger blocks raise the peak resident memory


def _reader(schema: CsvSchema, numeric: set[str], block_bytes: int):
    read, parse, convert = csvfile.arrow_options(schema.layout, numeric, block_bytes)
    return pcsv.open_csv(schema.layout.path, read_options=read, parse_options=parse, convert_options=convert)


def _batches(schema: CsvSchema, numeric: set[str], block_bytes: int, skip: int) -> Iterator[pa.RecordBatch]:
    """Record batches after the first `skip` records."""
    for batch in _reader(schema, numeric, block_bytes):
        if skip >= batch.num_rows:
            skip -= batch.num_rows
            continue
        yield batch.slice(skip)
        skip = 0


def record_blocks(schema: CsvSchema, target: str, line_of: LineIndex, block_bytes: int = BLOCK_BYTES
                  ) -> Iterator[Part]:
    """The file as table Parts of consecutive records (Part.rows: record numbers)."""
    numeric = schema.numeric | ({target} if schema.numeric_target else set())
    done = 0
    for typed in (numeric, set()):
        try:
            for batch in _batches(schema, typed, block_bytes, done):
                part = csvfile.to_part(batch, schema, target, line_of, done)
                done += batch.num_rows
                yield part
            return
        except pa.ArrowInvalid as e:
            if "conversion error" not in str(e) or not typed:
                raise csvfile.parse_error(schema.layout, str(e)) from None


_KEYS = np.random.default_rng(7).integers(1, 2**63, 4096, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


def string_hashes(col: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each string (None: its own value), the same in every block: a
    multilinear hash of the UTF-8 bytes, vectorized over Arrow's value buffer."""
    arr = pa.array(col, pa.string())
    offsets = np.frombuffer(arr.buffers()[1], np.int32, len(arr) + 1, arr.offset * 4)
    data = np.frombuffer(arr.buffers()[2], np.uint8) if arr.buffers()[2] is not None else np.zeros(0, np.uint8)
    data = data[offsets[0]:offsets[-1]]
    starts, lengths = offsets[:-1] - offsets[0], np.diff(offsets)
    pos = np.arange(len(data)) - np.repeat(starts, lengths)
    # a trailing 0 makes every start a valid index: clipping the starts of empty values at the
    # end to the last byte cut the last byte off the value before them
    contrib = np.append((data.astype(np.uint64) + np.uint64(1)) * _KEYS[pos % len(_KEYS)], np.uint64(0))
    sums = np.add.reduceat(contrib, starts) if len(arr) else np.zeros(0, np.uint64)
    h = np.where(lengths > 0, sums, np.uint64(0)) + lengths.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return np.where(np.asarray(arr.is_null()), np.uint64(0xDEADBEEF), h)
