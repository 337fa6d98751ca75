"""Streaming a CSV or Parquet data set that need not fit in memory, with any backend.

1. Scan: Arrow's block reader (CSV: `open_csv`; Parquet: record batches of each row
   group) converts the file block by block (the in-memory column rules), appends every
   record's columns to an on-disk Arrow cache, and keeps per record only its label and a
   64-bit row hash (exact duplicates; a false match among 5M rows has odds ~1e-6).
2. Split, label checks and duplicates exactly as in memory (the same seeded split).
3. Clean and fit with `tablefit`, the in-memory code, one column of the training
   split at a time read back from the cache: every rule of the in-memory path, with
   exact medians, most-frequent values and IQR quartiles.
4. Encode: the cache block by block through the one encoder; each split's float32
   rows go to its own file. Training batches gather rows from a memory map in
   `epoch_permutation` order; validation and test are memory-mapped too.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa

from jaxtrain.config.data import DataConfig
from jaxtrain.data import clean, csvfile, csvstream, encoder, parquetfile, pipeline_grain, pipeline_tf, tablefit
from jaxtrain.data.dataset import Dataset, Split, gathered_batches
from jaxtrain.data.featurestats import FeatureStats
from jaxtrain.data.preprocess import (check_split_sizes, count_into_report, fit_target, split_indices,
                                      task_for_labels)
from jaxtrain.data.raw import Part, RawData
from jaxtrain.data.streamcache import CacheDir, ColumnCache, MappedRows, RowFile
from jaxtrain.util.errors import DataError

TRAIN, VAL, TEST = 0, 1, 2
SPLIT_NAMES = ("train", "val", "test")


@dataclasses.dataclass
class StreamSource:
    """A file source as streaming reads it: its columns, its blocks, how messages name a record."""
    where: str
    num_names: list[str]
    txt_kinds: dict[str, str]
    blocks: Callable[[], Iterator[Part]]        # consecutive records, Part.rows: record numbers
    line_of: Callable[[int], int] | None = None    # record -> file line (CSV)
    row_name: Callable[[int], str] | None = None   # record -> how a message names it (Parquet)
    report: dict[str, Any] = dataclasses.field(default_factory=dict)


def _text_labels(where: str, cfg: DataConfig, word: str | None) -> DataError:
    """Class names would need a vocabulary fitted over the whole file first."""
    return DataError(f"{where} column '{cfg.target}': text labels such as '{word}' are not supported in "
                     "streaming mode; encode the classes as integers 0..k-1, or set data.streaming=false")


def csv_source(cfg: DataConfig) -> StreamSource:
    """Mostly numbers: a numeric target (a stray word is an error naming its line)."""
    schema = csvfile.read_schema(cfg)
    if schema.target_number_share <= 0.5:
        raise _text_labels(schema.layout.path, cfg, schema.target_word)
    schema = dataclasses.replace(schema, numeric_target=True)
    line_of = csvfile.LineIndex(schema.layout)
    return StreamSource(schema.layout.path, schema.num_names, schema.txt_kinds,
                        lambda: csvstream.record_blocks(schema, cfg.target, line_of), line_of=line_of,
                        report={"delimiter": schema.layout.delimiter} if schema.layout.sniffed else {})


def parquet_source(cfg: DataConfig) -> StreamSource:
    schema, dataset = parquetfile.read_schema(cfg)
    if not schema.numeric_target:
        first = dataset.head(1, columns=[cfg.target]).column(0)
        raise _text_labels(schema.where, cfg, first[0].as_py() if len(first) else None)
    blocks = parquetfile.TableBlocks(schema, cfg.target)
    return StreamSource(schema.where, schema.num_names, schema.txt_kinds, lambda: iter(blocks),
                        row_name=lambda i: parquetfile.row_namer(schema, blocks.counts)(i))


@dataclasses.dataclass
class Scan:
    """What the one pass over the file leaves: the column cache, and per record its label and hash."""
    src: StreamSource
    cache: ColumnCache
    labels: np.ndarray
    hashes: np.ndarray


def _row_hashes(part: Part) -> np.ndarray:
    words = [np.ascontiguousarray(part.num, np.float64).view(np.uint64)]
    words += [csvstream.string_hashes(col)[:, None] for col in part.txt.values()]
    words.append(part.y.astype(np.float64).view(np.uint64)[:, None])
    return clean.hash_words(np.concatenate(words, 1))


def scan(src: StreamSource, directory: str) -> Scan:
    """Pass 1 over the file: the column cache, the labels and the row hashes."""
    cache = ColumnCache(os.path.join(directory, "columns.arrow"), src.num_names, list(src.txt_kinds))
    labels, hashes = [], []
    for part in src.blocks():
        cache.append(part)
        labels.append(part.y)
        hashes.append(_row_hashes(part))
    cache.close()
    if not labels or sum(map(len, labels)) == 0:
        raise DataError(f"{src.where}: only a header row, no data rows")
    return Scan(src, cache, np.concatenate(labels), np.concatenate(hashes))


class CacheColumns:
    """The training split's columns read back from the cache (`tablefit.TrainColumns`)."""

    def __init__(self, s: Scan, rows: np.ndarray):
        self.cache, self.rows = s.cache, rows
        self.num_names, self.txt_kinds, self.where = s.src.num_names, s.src.txt_kinds, s.src.where
        self.line_of = (lambda i: s.src.line_of(int(rows[i]))) if s.src.line_of else None

    def __len__(self) -> int:
        return len(self.rows)

    def numeric(self, j: int) -> np.ndarray:
        return self.cache.numeric(self.num_names[j])[self.rows]

    def text(self, name: str) -> pa.Array:
        return self.cache.text(name).take(pa.array(self.rows))


def _train_rows(s: Scan, splits: tuple, stats: FeatureStats, cfg: DataConfig, rep: dict[str, Any]) -> np.ndarray:
    """Training records after the label checks and duplicates, in training order (as in memory)."""
    tr, va, te = splits
    raw = RawData("table", {}, where=s.src.where, target=cfg.target, line_of=s.src.line_of,
                  row_name=s.src.row_name)
    task, nc = stats.task, stats.num_classes
    bad = clean.invalid_labels(raw, "train", Part(s.labels[tr], tr), task, nc, None, cfg.clean.invalid_labels)
    for name, idx in (("val", va), ("test", te)):
        clean.invalid_labels(raw, name, Part(s.labels[idx], idx), task, nc, None, "error")
    rep["invalid_labels"] = {"policy": cfg.clean.invalid_labels, "rows_dropped": int(bad.sum())}
    rows = tr[~bad]
    if not cfg.clean.duplicates:
        rep["duplicates"] = {"rows_dropped": 0, "disabled": True}
        return rows
    dup = clean.first_occurrences(s.hashes[rows]) != np.arange(len(rows))
    rep["duplicates"] = {"rows_dropped": int(dup.sum())}
    return rows[~dup]


def _encode_all(s: Scan, stats: FeatureStats, split_rows: list[np.ndarray], directory: str
                ) -> tuple[list[MappedRows], dict[str, encoder.Counts]]:
    """Pass over the cache: each split's rows encoded and normalized, in that split's order."""
    which = np.full(len(s.labels), -1, np.int8)
    for k, rows in enumerate(split_rows):
        which[rows] = k
    width = encoder.feature_width(stats)
    files = [RowFile(os.path.join(directory, f"{name}.file_order.f32"), width) for name in SPLIT_NAMES]
    counts = {name: encoder.Counts() for name, rows in zip(SPLIT_NAMES, split_rows) if len(rows)}
    where, lines = s.src.where, s.src.line_of
    for first, num, txt in s.cache.blocks():
        w = which[first:first + len(num)]
        for k, name in enumerate(SPLIT_NAMES):
            idx = np.flatnonzero(w == k)
            if len(idx):
                line_of = (lambda i, idx=idx, first=first: lines(first + int(idx[i]))) if lines else None
                sub = {n: t.take(pa.array(idx)) for n, t in txt.items()}
                x, c = encoder.encode_table(stats, num[idx], sub, where, line_of)
                files[k].append(encoder.normalize(stats, x))
                counts[name].add(c)
    return [_in_split_order(f.close(), rows, directory, name)
            for f, rows, name in zip(files, split_rows, SPLIT_NAMES)], counts


def _file_rank(rows: np.ndarray) -> np.ndarray:
    """For each split position, the rank of its record in file order (its row in the split's file)."""
    rank = np.empty(len(rows), np.int64)
    rank[np.argsort(rows, kind="stable")] = np.arange(len(rows))
    return rank


def _in_split_order(file_order: MappedRows, rows: np.ndarray, directory: str, name: str) -> MappedRows:
    """The split's rows rewritten in split order (training is gathered by index instead)."""
    if name == "train":
        return file_order
    out = RowFile(os.path.join(directory, f"{name}.f32"), file_order.rows.shape[1])
    rank = _file_rank(rows)
    for start in range(0, len(rows), 1 << 16):
        out.append(file_order.take(rank[start:start + (1 << 16)]))
    os.unlink(file_order.path)
    return out.close()


def load_streaming(cfg: DataConfig, stats: FeatureStats | None = None) -> Dataset:
    src = parquet_source(cfg) if cfg.source == "parquet" else csv_source(cfg)
    path = src.where
    directory = CacheDir(cfg.cache_dir)          # removed if an error below leaves it behind
    s = scan(src, directory.path)
    splits = split_indices(len(s.labels), cfg.val_fraction, cfg.test_fraction, cfg.seed)
    check_split_sizes(path, len(splits[0]), len(splits[2]), cfg)
    fit = stats is None
    if fit:
        task = None if cfg.task == "auto" else cfg.task
        stats = FeatureStats(*task_for_labels(task, cfg.num_classes, s.labels[splits[0]]))
    rep: dict[str, Any] = {"source": cfg.source, "name": os.path.basename(os.path.normpath(path)), "where": path,
                           "streaming": True, **src.report,
                           "rows_in": {n: len(r) for n, r in zip(SPLIT_NAMES, splits) if len(r) or n != "val"}}
    rows = _train_rows(s, splits, stats, cfg, rep)
    keep = tablefit.clean_and_fit(CacheColumns(s, rows), stats, cfg, fit, rep)
    rows = rows[keep]
    if len(rows) == 0:
        raise DataError(f"{path}: no training rows left after cleaning; see the cleaning rules in data.clean")
    if fit:
        stats.feature_names, stats.feature_shape = encoder.feature_names(stats), [encoder.feature_width(stats)]
        fit_target(stats, s.labels[rows], cfg)
    split_rows = [rows, splits[1], splits[2]]
    mapped, counts = _encode_all(s, stats, split_rows, directory.path)
    s.cache.remove()
    count_into_report(counts, stats, rep)
    return _dataset(s, stats, cfg, rep, split_rows, mapped, directory)


def _dataset(s: Scan, stats: FeatureStats, cfg: DataConfig, rep: dict[str, Any], split_rows: list[np.ndarray],
             mapped: list[MappedRows], directory: CacheDir) -> Dataset:
    """The Dataset over the row files: training rows gathered by the backend, val/test mapped."""
    targets = [encoder.encode_targets(stats, s.labels[rows]) for rows in split_rows]
    n_train = len(split_rows[TRAIN])
    rep["rows_out"] = {n: len(r) for n, r in zip(SPLIT_NAMES, split_rows) if n in rep["rows_in"]}
    rep["features"], rep["task"], rep["cache_dir"] = encoder.feature_width(stats), stats.task, directory.path
    ds = Dataset(task=stats.task, num_classes=stats.num_classes, feature_shape=tuple(stats.feature_shape),
                 train=None, val=Split(mapped[VAL].rows, targets[VAL]) if len(split_rows[VAL]) else None,
                 test=Split(mapped[TEST].rows, targets[TEST]), name=rep["name"], stats=stats, report=rep,
                 target_mean=stats.target_mean, target_scale=stats.target_scale, num_train=n_train,
                 streaming=True)
    row_of = _file_rank(split_rows[TRAIN])      # training position -> row of the file-order train file
    train_rows, ytrain = mapped[TRAIN], targets[TRAIN]

    gather = CacheGather(train_rows, row_of, ytrain)
    directory.hand_over(ds)                     # the cache files live as long as the dataset
    if cfg.backend == "tfdata":
        return pipeline_tf.attach_rows(ds, cfg, gather, (np.float32, ytrain.dtype))
    if cfg.backend == "grain":
        return pipeline_grain.attach(ds, cfg, gather)
    ds.batcher = functools.partial(gathered_batches, gather, n_train)
    return ds


@dataclasses.dataclass(frozen=True)
class CacheGather:
    """Training positions -> (their rows from the cache, targets); picklable, so grain's
    worker processes map the cache file themselves."""
    rows: MappedRows
    row_of: np.ndarray
    y: np.ndarray

    def __call__(self, i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.rows.take(self.row_of[i]), self.y[i]
