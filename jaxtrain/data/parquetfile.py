"""Parquet (and Arrow IPC / Feather) source, read through `pyarrow.dataset`.

`data.path` is a file, a directory (every .parquet, or .arrow/.feather/.ipc, file below
it) or a glob; several files are one table in file-name order. Column kinds come from the
schema, never from text: numeric (integer, floating, boolean, decimal) columns are
numbers with null as missing; string columns are categories (at most
`data.max_categories` distinct values of at most three words in the first rows, the rule
of a CSV's text columns) or free text. Only null is missing here: a Parquet string such
as "NA" is a value. In memory the table is read whole (`Dataset.to_table`); streamed
(`TableBlocks`) it is read file by file in record batches of its row groups.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from jaxtrain.config.data import DataConfig
from jaxtrain.data import csvfile
from jaxtrain.data.raw import Part, RawData
from jaxtrain.util.errors import DataError, clip_words

PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")
ARROW_SUFFIXES = (".arrow", ".feather", ".ipc")
BATCH_ROWS = 1 << 16               # streamed record batches: bounded memory, cheap per-batch overhead
SAMPLE_ROWS = csvfile.SAMPLE_ROWS


def _in_directory(directory: str) -> list[str]:
    out = []
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
        out += [os.path.join(root, n) for n in sorted(names)
                if n.endswith(PARQUET_SUFFIXES + ARROW_SUFFIXES) and not n.startswith((".", "_"))]
    return out


def list_files(spec: str) -> tuple[list[str], str]:
    """The files `spec` names (a file, a directory, a glob) in name order, and their format."""
    if os.path.isdir(spec):
        files = _in_directory(spec)
    elif os.path.isfile(spec):
        files = [spec]
    elif glob.has_magic(spec):
        files = sorted(f for f in glob.glob(spec, recursive=True) if os.path.isfile(f))
    else:
        raise DataError(f"{spec}: no such file or directory; set data.path to a Parquet file, a directory "
                        "of them or a glob such as 'data/*.parquet'")
    if not files:
        raise DataError(f"{spec}: no {', '.join(PARQUET_SUFFIXES + ARROW_SUFFIXES)} files there")
    formats = {"ipc" if f.endswith(ARROW_SUFFIXES) else "parquet" for f in files}
    if len(formats) > 1:
        raise DataError(f"{spec}: mixes Parquet and Arrow IPC files; keep one format per data set")
    return files, formats.pop()


def _arrow_error(where: str, e: Exception) -> DataError:
    # Arrow repeats the file's full path inside its message: its base name says the same in
    # less room, so the reason at the end survives the clip.
    reason = re.sub(r"'[^' ]*[/\\]([^'/\\ ]+)'", r"'\1'", str(e))
    return DataError(f"{where}: cannot read as Parquet/Arrow ({clip_words(reason) or type(e).__name__})")


def open_dataset(spec: str) -> tuple[pads.Dataset, list[str]]:
    """The dataset of every file `spec` names, read with one schema that every file agrees
    with (`_one_schema`), and the files."""
    files, fmt = list_files(spec)
    try:
        dataset = pads.dataset(files, format=fmt)
        if len(files) == 1:
            return dataset, files
        schemas = [fragment.physical_schema for fragment in dataset.get_fragments()]
        return pads.dataset(files, format=fmt, schema=_one_schema(spec, files, schemas)), files
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as e:
        raise _arrow_error(spec, e) from None


def _kind(t: pa.DataType) -> str:
    """What a column's type means to jaxtrain: numbers, strings, or (anything else) itself."""
    return "number" if is_numeric_type(t) else "string" if is_string_type(t) else str(t)


def _one_schema(spec: str, files: list[str], schemas: list[pa.Schema]) -> pa.Schema:
    """The schema every file of a data set is read as. Files must have the same columns and,
    in each, the same kind of values (numbers or strings); a file missing a column is an
    error naming the file and the column, never a column of missing values to impute. Numbers
    of different widths (int64 in one file, double in another, as pandas writes a column with
    a null) agree and are read as double; an all-null column agrees with any type."""
    first = schemas[0]
    for path, schema in zip(files[1:], schemas[1:]):
        missing = [n for n in first.names if n not in schema.names]
        if missing:
            raise DataError(f"{path}: column '{missing[0]}' of {files[0]} is not there; every file of "
                            f"{spec} must have the same columns")
        extra = [n for n in schema.names if n not in first.names]
        if extra:
            raise DataError(f"{path} column '{extra[0]}': not in {files[0]}; every file of {spec} must "
                            "have the same columns")
        for field in first:
            t = schema.field(field.name).type
            if pa.types.is_null(t) or pa.types.is_null(field.type) or _kind(t) == _kind(field.type):
                continue
            raise DataError(f"{path} column '{field.name}': type {t}, but {field.type} in {files[0]}; "
                            f"every file of {spec} must hold the same type in a column")
    return pa.schema([pa.field(f.name, _merged_type([s.field(f.name).type for s in schemas]))
                      for f in first])


def _merged_type(types: list[pa.DataType]) -> pa.DataType:
    """One type for a column whose files agree in kind (`_one_schema`)."""
    known = [t for t in types if not pa.types.is_null(t)]
    if not known or all(t == known[0] for t in known):
        return known[0] if known else types[0]
    return pa.float64() if is_numeric_type(known[0]) else pa.string()


def _value_type(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def is_numeric_type(t: pa.DataType) -> bool:
    t = _value_type(t)
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) \
        or pa.types.is_decimal(t) or pa.types.is_null(t)


def is_string_type(t: pa.DataType) -> bool:
    t = _value_type(t)
    return pa.types.is_string(t) or pa.types.is_large_string(t)


@dataclasses.dataclass
class TableSchema:
    """The feature kinds and the target's type of a Parquet/Arrow data set."""
    where: str
    files: list[str]
    columns: list[str]
    kinds: dict[str, str]             # feature column -> numeric | category | text
    numeric_target: bool
    arrow_schema: pa.Schema | None = None   # of the first file: every file is read as this

    @property
    def num_names(self) -> list[str]:
        return [n for n in self.columns if self.kinds.get(n) == "numeric"]

    @property
    def txt_kinds(self) -> dict[str, str]:
        return {n: k for n, k in self.kinds.items() if k != "numeric"}


def _text_kind(sample: pa.ChunkedArray, cfg: DataConfig) -> str:
    present = strings(sample).drop_null()
    words = pc.mean(pc.list_value_length(pc.utf8_split_whitespace(present[:2000]))).as_py() or 0
    return "category" if len(pc.unique(present)) <= cfg.max_categories and words <= 3 else "text"


def column_kinds(schema: pa.Schema, dataset: pads.Dataset, cfg: DataConfig, where: str) -> dict[str, str]:
    """name -> numeric | category | text for every feature column, from the schema's types."""
    kinds, texts = {}, []
    for field in schema:
        name = field.name
        if name == cfg.target or name in cfg.drop_columns:
            continue
        if name in cfg.columns:
            kinds[name] = cfg.columns[name]
        elif is_numeric_type(field.type):
            kinds[name] = "numeric"
        elif is_string_type(field.type):
            texts.append(name)
        else:
            raise DataError(f"{where} column '{name}': type {field.type} is not a number or a string; "
                            f"drop it with data.drop_columns or convert it")
    if texts:
        sample = dataset.head(SAMPLE_ROWS, columns=texts)
        kinds.update({n: _text_kind(sample.column(n), cfg) for n in texts})
    return {n: kinds[n] for n in schema.names if n in kinds}


def read_schema(cfg: DataConfig, spec: str | None = None) -> tuple[TableSchema, pads.Dataset]:
    spec = str(spec or cfg.path)
    dataset, files = open_dataset(spec)
    schema = dataset.schema
    csvfile.check_config_columns(schema.names, cfg, spec)
    try:
        kinds = column_kinds(schema, dataset, cfg, spec)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as e:
        raise _arrow_error(spec, e) from None
    target_type = schema.field(cfg.target).type
    if not (is_numeric_type(target_type) or is_string_type(target_type)):
        raise DataError(f"{spec} column '{cfg.target}': a target of type {target_type}; "
                        "it must hold numbers or class names")
    return TableSchema(spec, files, schema.names, kinds, is_numeric_type(target_type), schema), dataset


def strings(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    """A column as one plain string array (dictionary-encoded, numbers: as text)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks else pa.array([], col.type)
    return col if pa.types.is_string(col.type) else col.cast(pa.string())


def numbers(col: pa.Array | pa.ChunkedArray, where: str, name: str, first: int) -> np.ndarray:
    """float64 values of a column, NaN where null; a string column (declared numeric) by the
    CSV's rules for text numbers."""
    if is_string_type(col.type):
        return csvfile.numeric_column(strings(col), where, name, lambda i: first + i, unit="row")
    try:
        values = col.cast(pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise DataError(f"{where} column '{name}': cannot read as numbers ({e})") from None
    if isinstance(values, pa.ChunkedArray) and values.num_chunks == 0:
        return np.zeros(0)
    return values.to_numpy(zero_copy_only=False)            # null -> NaN


def to_part(batch: pa.Table | pa.RecordBatch, schema: TableSchema, target: str, first: int = 0) -> Part:
    """Arrow columns (starting at row `first` of the data set) -> a table Part."""
    where, n = schema.where, batch.num_rows
    names = schema.num_names
    num = np.empty((n, len(names)), np.float64)
    for j, name in enumerate(names):
        num[:, j] = numbers(batch.column(name), where, name, first)
    txt = {name: strings(batch.column(name)) for name in schema.txt_kinds}
    ycol = batch.column(target)
    y = numbers(ycol, where, target, first) if schema.numeric_target else \
        strings(ycol).to_numpy(zero_copy_only=False)
    return Part(y=y, rows=np.arange(first, first + n), num=num, txt=txt)


def row_namer(schema: TableSchema, counts: list[int] | None = None):
    """How a message names row i of the data set: its file and row when there are several."""
    if len(schema.files) == 1 or counts is None:
        return lambda i: f"{schema.where} row {i}"
    ends = np.cumsum(counts)

    def name(i: int) -> str:
        k = int(np.searchsorted(ends, i, side="right"))
        return f"{schema.files[k]} row {i - (int(ends[k - 1]) if k else 0)}"
    return name


def read_table(schema: TableSchema, dataset: pads.Dataset, cfg: DataConfig) -> tuple[Part, list[int]]:
    """Every row of the data set as one Part, and the rows of each file."""
    wanted = list(schema.kinds) + [cfg.target]
    try:
        table = dataset.to_table(columns=wanted)
        counts = [f.count_rows() for f in dataset.get_fragments()]
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as e:
        raise _arrow_error(schema.where, e) from None
    if table.num_rows == 0:
        raise DataError(f"{schema.where}: no data rows")
    return to_part(table, schema, cfg.target), counts


def load_parquet(cfg: DataConfig) -> RawData:
    schema, dataset = read_schema(cfg)
    part, counts = read_table(schema, dataset, cfg)
    check_not_all_missing(part, schema)
    name = os.path.splitext(os.path.basename(os.path.normpath(schema.where.split("*")[0])))[0] or "table"
    return RawData("table", {"all": part}, name=name, where=schema.where,
                   task=None if cfg.task == "auto" else cfg.task, num_classes=cfg.num_classes,
                   num_names=schema.num_names, txt_kinds=schema.txt_kinds, target=cfg.target,
                   row_name=row_namer(schema, counts))


def check_not_all_missing(part: Part, schema: TableSchema) -> None:
    names = schema.num_names + list(part.txt)
    empty = list(np.isnan(part.num).all(0)) + [c.null_count == len(c) for c in part.txt.values()]
    for name, all_missing in zip(names, empty):
        if all_missing:
            raise DataError(f"{schema.where} column '{name}': every value is missing; "
                            "drop it with data.drop_columns or fill it in")


class TableBlocks:
    """The data set streamed: Parts of consecutive rows, file by file, record batch by record
    batch (each within one row group), never the whole table in memory."""

    def __init__(self, schema: TableSchema, target: str):
        self.schema, self.target = schema, target
        self.counts: list[int] = []

    def __iter__(self) -> Iterator[Part]:
        fmt = "ipc" if self.schema.files[0].endswith(ARROW_SUFFIXES) else "parquet"
        wanted = list(self.schema.kinds) + [self.target]
        first = 0
        for path in self.schema.files:
            try:
                one = pads.dataset(path, format=fmt, schema=self.schema.arrow_schema)
                batches = one.to_batches(columns=wanted, batch_size=BATCH_ROWS, use_threads=False)
                start = first
                for batch in batches:
                    yield to_part(batch, self.schema, self.target, first)
                    first += batch.num_rows
            except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as e:
                raise _arrow_error(path, e) from None
            self.counts.append(first - start)


def split_schema(spec: str, cfg: DataConfig, num_names: list[str], txt_kinds: dict[str, str],
                 numeric_target: bool, train_where: str) -> tuple[TableSchema, pads.Dataset]:
    """How a separate split (data.val_path / test_path) is read: with the training data's
    column kinds and target type (numeric columns in the training data's order)."""
    dataset, files = open_dataset(spec)
    names = dataset.schema.names
    csvfile.check_config_columns(names, cfg, spec)
    missing = [n for n in list(num_names) + list(txt_kinds) if n not in names]
    if missing:
        raise DataError(f"{spec}: column(s) {', '.join(missing)} of the training data {train_where} are not "
                        "there; a split file needs the training data's columns")
    kinds = dict.fromkeys(num_names, "numeric") | dict(txt_kinds)
    return TableSchema(spec, files, list(kinds) + [cfg.target], kinds, numeric_target, dataset.schema), dataset


def read_split_file(spec: str, raw: RawData, cfg: DataConfig) -> Part:
    """A separate split read whole (`split_schema`)."""
    schema, dataset = split_schema(spec, cfg, raw.num_names, raw.txt_kinds, raw.target_is_numeric, raw.where)
    return read_table(schema, dataset, cfg)[0]
