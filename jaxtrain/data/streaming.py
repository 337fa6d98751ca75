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

A separate validation or test file (data.val_path / test_path) is scanned into a cache of
its own with the training file's column kinds, and encoded in step 4 with the statistics
fitted on the training file alone; its fraction is not held out of the training file.
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


def split_source(cfg: DataConfig, src: StreamSource, path: str) -> StreamSource:
    """A separate split file (data.val_path / test_path) streamed in blocks like the training
    file, with its column kinds (numeric columns in its order) and its numeric target."""
    kinds = (cfg, src.num_names, src.txt_kinds, True, src.where)
    if cfg.source == "parquet":
        table, _ = parquetfile.split_schema(path, *kinds)
        blocks = parquetfile.TableBlocks(table, cfg.target)
        return StreamSource(path, src.num_names, src.txt_kinds, lambda: iter(blocks))
    schema = csvfile.split_schema(path, *kinds)
    line_of = csvfile.LineIndex(schema.layout)
    return StreamSource(path, src.num_names, src.txt_kinds, line_of=line_of, blocks=lambda: (
        csvfile.in_column_order(part, schema, src.num_names)
        for part in csvstream.record_blocks(schema, cfg.target, line_of)))


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


def scan(src: StreamSource, directory: str, name: str = "train", hashes: bool = True) -> Scan:
    """Pass 1 over the file: the column cache, the labels and (for duplicates) the row hashes."""
    cache = ColumnCache(os.path.join(directory, f"{name}.columns.arrow"), src.num_names, list(src.txt_kinds))
    labels, words = [], [np.zeros(0, np.uint64)]
    for part in src.blocks():
        cache.append(part)
        labels.append(part.y)
        if hashes:
            words.append(_row_hashes(part))
    cache.close()
    if not labels or sum(map(len, labels)) == 0:
        raise DataError(f"{src.where}: only a header row, no data rows")
    return Scan(src, cache, np.concatenate(labels), np.concatenate(words))


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


@dataclasses.dataclass
class SplitRows:
    """One split: the scan holding its records (the training file's, or a split file's own)
    and their record numbers in split order."""
    scan: Scan
    rows: np.ndarray

    @property
    def labels(self) -> np.ndarray:
        return self.scan.labels[self.rows]


def _splits(s: Scan, files: dict[str, StreamSource], cfg: DataConfig, directory: str) -> dict[str, SplitRows]:
    """The same seeded split of the training file as in memory, except that a split given as a
    file (data.val_path / test_path) is all of that file, in its order, and its fraction is not
    held out of the training file."""
    fractions = [0.0 if name in files else getattr(cfg, f"{name}_fraction") for name in ("val", "test")]
    tr, va, te = split_indices(len(s.labels), *fractions, cfg.seed)
    out = {"train": SplitRows(s, tr), "val": SplitRows(s, va), "test": SplitRows(s, te)}
    for name, src in files.items():
        own = scan(src, directory, name, hashes=False)
        out[name] = SplitRows(own, np.arange(len(own.labels)))
    return out


def _train_rows(s: Scan, splits: dict[str, SplitRows], stats: FeatureStats, cfg: DataConfig,
                rep: dict[str, Any]) -> np.ndarray:
    """Training records after the label checks and duplicates, in training order (as in memory)."""
    tr = splits["train"].rows
    files = {name: (sp.scan.src.where, sp.scan.src.line_of) for name, sp in splits.items() if sp.scan is not s}
    raw = RawData("table", {}, where=s.src.where, target=cfg.target, line_of=s.src.line_of,
                  row_name=s.src.row_name, split_files=files)
    task, nc = stats.task, stats.num_classes
    bad = clean.invalid_labels(raw, "train", Part(s.labels[tr], tr), task, nc, None, cfg.clean.invalid_labels)
    for name in ("val", "test"):
        clean.invalid_labels(raw, name, Part(splits[name].labels, splits[name].rows), task, nc, None, "error")
    rep["invalid_labels"] = {"policy": cfg.clean.invalid_labels, "rows_dropped": int(bad.sum())}
    rows = tr[~bad]
    if not cfg.clean.duplicates:
        rep["duplicates"] = {"rows_dropped": 0, "disabled": True}
        return rows
    dup = clean.first_occurrences(s.hashes[rows]) != np.arange(len(rows))
    rep["duplicates"] = {"rows_dropped": int(dup.sum())}
    return rows[~dup]


def _encode_all(splits: dict[str, SplitRows], stats: FeatureStats, directory: str
                ) -> tuple[dict[str, MappedRows], dict[str, encoder.Counts]]:
    """Every split encoded and normalized: one pass over each cache (the training file's, then
    each split file's), which is removed after it."""
    mapped, counts = {}, {}
    scans = list({id(sp.scan): sp.scan for sp in splits.values()}.values())
    for s in scans:
        m, c = _encode_scan(s, stats, {name: sp.rows for name, sp in splits.items() if sp.scan is s}, directory)
        mapped.update(m)
        counts.update(c)
        s.cache.remove()
    return mapped, counts


def _encode_scan(s: Scan, stats: FeatureStats, split_rows: dict[str, np.ndarray], directory: str
                 ) -> tuple[dict[str, MappedRows], dict[str, encoder.Counts]]:
    """Pass over one cache: each split's rows encoded and normalized, in that split's order."""
    names = list(split_rows)
    which = np.full(len(s.labels), -1, np.int8)
    for k, rows in enumerate(split_rows.values()):
        which[rows] = k
    width = encoder.feature_width(stats)
    files = [RowFile(os.path.join(directory, f"{name}.file_order.f32"), width) for name in names]
    counts = {name: encoder.Counts() for name, rows in split_rows.items() if len(rows)}
    where, lines = s.src.where, s.src.line_of
    for first, num, txt in s.cache.blocks():
        w = which[first:first + len(num)]
        for k, name in enumerate(names):
            idx = np.flatnonzero(w == k)
            if len(idx):
                line_of = (lambda i, idx=idx, first=first: lines(first + int(idx[i]))) if lines else None
                sub = {n: t.take(pa.array(idx)) for n, t in txt.items()}
                x, c = encoder.encode_table(stats, num[idx], sub, where, line_of)
                files[k].append(encoder.normalize(stats, x))
                counts[name].add(c)
    return {name: _in_split_order(f.close(), split_rows[name], directory, name)
            for f, name in zip(files, names)}, counts


def _file_rank(rows: np.ndarray) -> np.ndarray:
    """For each split position, the rank of its record in file order (its row in the split's file)."""
    rank = np.empty(len(rows), np.int64)
    rank[np.argsort(rows, kind="stable")] = np.arange(len(rows))
    return rank


def _in_split_order(file_order: MappedRows, rows: np.ndarray, directory: str, name: str) -> MappedRows:
    """The split's rows rewritten in split order (training is gathered by index instead; a
    split file is in split order already)."""
    if name == "train" or bool(np.all(np.diff(rows) > 0)):
        return file_order
    out = RowFile(os.path.join(directory, f"{name}.f32"), file_order.rows.shape[1])
    rank = _file_rank(rows)
    for start in range(0, len(rows), 1 << 16):
        out.append(file_order.take(rank[start:start + (1 << 16)]))
    os.unlink(file_order.path)
    return out.close()


def load_streaming(cfg: DataConfig, stats: FeatureStats | None = None) -> Dataset:
    src = parquet_source(cfg) if cfg.source == "parquet" else csv_source(cfg)
    files = {name: split_source(cfg, src, str(path)) for name, path in (("val", cfg.val_path),
                                                                        ("test", cfg.test_path)) if path is not None}
    path = src.where
    directory = CacheDir(cfg.cache_dir)          # removed if an error below leaves it behind
    s = scan(src, directory.path)
    splits = _splits(s, files, cfg, directory.path)
    check_split_sizes(path, len(splits["train"].rows), len(splits["test"].rows), cfg)
    fit = stats is None
    if fit:
        task = None if cfg.task == "auto" else cfg.task
        stats = FeatureStats(*task_for_labels(task, cfg.num_classes, splits["train"].labels))
    rep: dict[str, Any] = {"source": cfg.source, "name": os.path.basename(os.path.normpath(path)), "where": path,
                           "streaming": True, **src.report,
                           "rows_in": {n: len(sp.rows) for n, sp in splits.items() if len(sp.rows) or n != "val"}}
    if files:
        rep["split_files"] = {name: f.where for name, f in files.items()}
    rows = _train_rows(s, splits, stats, cfg, rep)
    keep = tablefit.clean_and_fit(CacheColumns(s, rows), stats, cfg, fit, rep)
    rows = rows[keep]
    if len(rows) == 0:
        raise DataError(f"{path}: no training rows left after cleaning; see the cleaning rules in data.clean")
    if fit:
        stats.feature_names, stats.feature_shape = encoder.feature_names(stats), [encoder.feature_width(stats)]
        fit_target(stats, s.labels[rows], cfg)
    splits["train"] = SplitRows(s, rows)
    mapped, counts = _encode_all(splits, stats, directory.path)
    count_into_report(counts, stats, rep)
    return _dataset(stats, cfg, rep, splits, mapped, directory)


def _dataset(stats: FeatureStats, cfg: DataConfig, rep: dict[str, Any], splits: dict[str, SplitRows],
             mapped: dict[str, MappedRows], directory: CacheDir) -> Dataset:
    """The Dataset over the row files: training rows gathered by the backend, val/test mapped."""
    targets = {name: encoder.encode_targets(stats, sp.labels) for name, sp in splits.items()}
    n_train = len(splits["train"].rows)
    rep["rows_out"] = {n: len(splits[n].rows) for n in SPLIT_NAMES if n in rep["rows_in"]}
    rep["features"], rep["task"], rep["cache_dir"] = encoder.feature_width(stats), stats.task, directory.path
    ds = Dataset(task=stats.task, num_classes=stats.num_classes, feature_shape=tuple(stats.feature_shape),
                 train=None, val=Split(mapped["val"].rows, targets["val"]) if len(splits["val"].rows) else None,
                 test=Split(mapped["test"].rows, targets["test"]), name=rep["name"], stats=stats, report=rep,
                 target_mean=stats.target_mean, target_scale=stats.target_scale, num_train=n_train,
                 streaming=True)
    row_of = _file_rank(splits["train"].rows)   # training position -> row of the file-order train file
    gather = CacheGather(mapped["train"], row_of, targets["train"])
    directory.hand_over(ds)                     # the cache files live as long as the dataset
    if cfg.backend == "tfdata":
        return pipeline_tf.attach_rows(ds, cfg, gather, (np.float32, targets["train"].dtype))
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
