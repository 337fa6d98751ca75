"""Reading a large CSV in chunks through tf.data, for the streaming path (streaming.py).

Lines are read and batched by tf.data and parsed by a parallel `decode_csv`: numeric
fields straight to float64 (empty -> NaN); when a chunk holds a missing-value word
such as NA, the rest of the file goes through a string decode and a regex instead.
Rows are counted over raw bytes (no parsing). Errors name the file, line and column.
"""

from __future__ import annotations

import csv
import os
import re
import tempfile
from typing import Iterator

import numpy as np

from jaxtrain.data.csvfile import read_rows, to_float
from jaxtrain.config.data import DataConfig
from jaxtrain.data.tfhelp import import_tf
from jaxtrain.util.errors import DataError

CHUNK = 65536
_NA = r"^\s*(?i:|na|nan|null|none|n/a)\s*$"


def head(path: str, n: int = 5000) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Header and the first `n` rows, through the in-memory reader's checks."""
    tmp = tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f, tmp:
            for i, line in enumerate(f):
                if i > n:
                    break
                tmp.write(line)
        header, table, lines = read_rows(tmp.name)
    except DataError as e:
        raise DataError(str(e).replace(tmp.name, path)) from None
    finally:
        os.unlink(tmp.name)
    return header, table, lines


def _locate_error(path: str, header: list[str], numeric: set[str], msg: str) -> DataError:
    """Find the bad line the fast parser tripped on, with the in-memory reader's checks."""
    cols = [(header.index(n), n) for n in header if n in numeric]
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        next(reader)
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(header):
                return DataError(f"{path} line {reader.line_num}: {len(row)} fields, but the header has "
                                 f"{len(header)}; fix the row (one record per line in streaming mode)")
            for j, n in cols:
                to_float(np.array([row[j]]), path, n, np.array([reader.line_num]))
    return DataError(f"{path}: cannot parse ({msg.splitlines()[0][:200]})")


def _line_batches(tf, path: str):
    """Batches of data lines, blank lines removed (as the in-memory reader skips them)."""
    return tf.data.TextLineDataset(path).skip(1).batch(CHUNK)


def _nonblank(tf, lines):
    return tf.boolean_mask(lines, tf.strings.length(tf.strings.strip(lines)) > 0)


_BLANK_LINE = re.compile(rb"\n[ \t\r\f\v]*(?=\n)")


def count_rows(path: str) -> int:
    """Data lines (not blank, header excluded), counted over raw bytes: no parsing needed."""
    lines = blank = 0
    tail = b""
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            block = tail + block
            cut = block.rfind(b"\n") + 1
            body, tail = block[:cut], block[cut:]
            lines += body.count(b"\n")
            blank += len(_BLANK_LINE.findall(b"\n" + body))
    if tail.strip():
        lines += 1
    return lines - blank - 1


def miscounted(path: str, n: int, seen: int) -> DataError:
    """The byte count and the parser disagree on what a line is."""
    return DataError(f"{path}: counted {n} data lines but parsed {seen}; records that span lines "
                     "(newlines inside quotes) or stray carriage returns need the in-memory backend")


def _parallel(tf, cfg: DataConfig) -> int:
    return tf.data.AUTOTUNE if cfg.num_parallel_calls == -1 else cfg.num_parallel_calls


def chunks(path: str, header: list[str], numeric: set[str], keep: set[str], cfg: DataConfig
            ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """(first row index, {column: float64 values | bytes}) per chunk of data lines."""
    tf = import_tf()
    nan = tf.constant(float("nan"), tf.float64)

    def fast(lines):          # numeric fields parse in decode_csv; empty fields become NaN
        cols = tf.io.decode_csv(_nonblank(tf, lines), [nan if n in numeric else "" for n in header])
        return {n: c for n, c in zip(header, cols) if n in numeric or n in keep}

    def slow(lines):          # missing-value words (NA, null, ...) need a string pass first
        cols = tf.io.decode_csv(_nonblank(tf, lines), [""] * len(header))
        return {n: tf.strings.to_number(tf.strings.regex_replace(c, _NA, "nan"), tf.float64)
                if n in numeric else c for n, c in zip(header, cols) if n in numeric or n in keep}

    start, done = 0, 0
    for decode in (fast, slow):
        ds = _line_batches(tf, path).skip(done).map(decode, num_parallel_calls=_parallel(tf, cfg),
                                                    deterministic=True).prefetch(2)
        try:
            for chunk in ds.as_numpy_iterator():
                for name in keep - numeric:             # text arrives as UTF-8 bytes
                    chunk[name] = np.char.decode(chunk[name].astype(np.bytes_), "utf-8", "replace")
                n = len(chunk[cfg.target])
                yield start, chunk
                start, done = start + n, done + 1
            return
        except tf.errors.InvalidArgumentError as e:
            if decode is slow:
                raise _locate_error(path, header, numeric, str(e)) from None


def target(chunk: dict[str, np.ndarray], cfg: DataConfig, path: str, start: int) -> np.ndarray:
    col = chunk[cfg.target]
    if col.dtype == np.float64:
        return col
    s = col.astype(str)
    return to_float(s, path, cfg.target, np.arange(start, start + len(s)) + 2)
