"""CSV source, read by Arrow: a header row, numeric and text columns, a target column.

`pyarrow.csv.read_csv` reads the whole file (in memory); `csvstream.py` reads the same
layout in blocks with `open_csv`. Missing values may be written as empty, NA, NaN, null,
None or N/A in any case (Arrow matches null markers exactly, so every spelling is
listed), with or without surrounding spaces. Quoted fields may hold delimiters and
newlines. Arrow counts records, not lines: an error finds its line in the file
(`LineIndex`) and names the file, line and column.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from jaxtrain.config.data import DataConfig
from jaxtrain.data.raw import Part, RawData
from jaxtrain.util.errors import DataError, clip_words
from jaxtrain.util.threads import map_ordered

MISSING = ("", "na", "nan", "null", "none", "n/a")
NULL_SPELLINGS = sorted({"".join(p) for m in MISSING for p in itertools.product(*({c.lower(), c.upper()}
                                                                                   for c in m))})
DELIMITERS = (",", ";", "\t", "|")
_NUMBER = r"^[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|inf|infinity|nan)$"   # after strip + lower
SAMPLE_ROWS = 5000
_NULL_SET = pa.array(NULL_SPELLINGS, pa.string())


@dataclasses.dataclass
class CsvLayout:
    """Where the data starts and how it is split: what every reader of the file shares."""
    path: str
    header: list[str]
    delimiter: str
    sniffed: bool                     # the delimiter was chosen from the header (data.delimiter=auto)
    quoted: bool = True               # the file holds a quote character (a field may span lines)


def sniff_delimiter(line: str) -> str:
    """The candidate delimiter that occurs most often in the header line (outside quotes)."""
    unquoted = re.sub(r'"[^"]*"', "", line)
    counts = [unquoted.count(d) for d in DELIMITERS]
    return DELIMITERS[int(np.argmax(counts))] if max(counts) else ","


def read_layout(path: str, delimiter: str = "auto") -> CsvLayout:
    """The header (stripped names) and the delimiter; DataError for an empty or unreadable file."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: CSV file not found; set data.path to an existing file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            first = next((line for line in f if line.strip()), None)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start}); "
                        "save it as UTF-8 CSV") from None
    if first is None:
        raise DataError(f"{path}: the file is empty; a CSV needs a header row and data rows")
    sep = sniff_delimiter(first) if delimiter == "auto" else delimiter
    header = [h.strip() for h in next(csv.reader([first], delimiter=sep))]
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        raise DataError(f"{path}: column name '{dup[0]}' appears twice in the header; rename one")
    if any(not h for h in header):
        raise DataError(f"{path}: column {header.index('') + 1} has an empty name in the header")
    return CsvLayout(path, header, sep, delimiter == "auto", _has_quote(path))


def _has_quote(path: str) -> bool:
    """Whether the file holds a '"' anywhere: without one no field spans lines, and Arrow
    can split the file into blocks at any newline (faster). Read in chunks into one buffer,
    not mapped: a mapped file's pages would count in this process's peak resident memory,
    and a fresh buffer per chunk would be fresh pages for the kernel to clear."""
    buf = bytearray(1 << 20)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            if buf.find(b'"', 0, n) >= 0:
                return True
    return False


def _skip_blank(row) -> str:
    """Arrow's invalid-row handler: whitespace-only lines are skipped, other ragged rows fail."""
    return "skip" if not row.text.strip() else "error"


def arrow_options(layout: CsvLayout, numeric: set[str], block_size: int | None = None):
    """(read, parse, convert) options: numeric columns parse to float64, the rest stay strings."""
    read = pcsv.ReadOptions(column_names=layout.header, skip_rows=1, use_threads=True,
                            **({"block_size": block_size} if block_size else {}))
    parse = pcsv.ParseOptions(delimiter=layout.delimiter, newlines_in_values=layout.quoted,
                              invalid_row_handler=_skip_blank)
    types = {n: pa.float64() if n in numeric else pa.string() for n in layout.header}
    convert = pcsv.ConvertOptions(column_types=types, null_values=NULL_SPELLINGS, strings_can_be_null=True,
                                  quoted_strings_can_be_null=True)
    return read, parse, convert


class LineIndex:
    """The file line of each record (counted from 0 after the header), found on first use by
    reading the file once with Python's csv module: only an error message needs it."""

    def __init__(self, layout: CsvLayout):
        self.layout, self._lines = layout, None

    def __call__(self, record: int) -> int:
        if self._lines is None:
            self._lines = [line for line, _ in self.rows()]
        return self._lines[record] if record < len(self._lines) else -1

    def rows(self):
        """(line, fields) of every data record, blank lines skipped, as Arrow reads them."""
        with open(self.layout.path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=self.layout.delimiter)
            header_seen = False
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if header_seen:
                    yield reader.line_num, row
                header_seen = True


def parse_error(layout: CsvLayout, message: str) -> DataError:
    """The DataError for an Arrow parse failure: the first ragged record's line, if there is one."""
    try:
        for line, row in LineIndex(layout).rows():
            if len(row) != len(layout.header):
                return DataError(f"{layout.path} line {line}: {len(row)} fields, but the header has "
                                 f"{len(layout.header)}; fix the row (quote values that contain the delimiter)")
    except UnicodeDecodeError as e:
        return DataError(f"{layout.path}: not a UTF-8 text file ({e.reason} at byte {e.start}); "
                         "save it as UTF-8 CSV")
    except csv.Error as e:
        return DataError(f"{layout.path}: not valid CSV ({e})")
    return DataError(f"{layout.path}: cannot parse as CSV ({clip_words(message)})")


def missing_mask(col: pa.Array) -> np.ndarray:
    """True where a string column holds a missing marker (or null), any case, any padding."""
    marker = pc.is_in(pc.utf8_lower(pc.utf8_trim_whitespace(col)), value_set=pa.array(MISSING))
    return pc.or_(pc.is_null(col), pc.fill_null(marker, True)).to_numpy(zero_copy_only=False)


def text_column(col: pa.Array) -> pa.Array:
    """Stripped values, null where missing (null stays null: `is_in` says false for it). The
    markers are matched in every case spelling (NULL_SPELLINGS) rather than lower-cased first:
    the same test, one pass fewer over the strings."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    stripped = pc.utf8_trim_whitespace(col)
    marker = pc.is_in(stripped, value_set=_NULL_SET)
    return pc.if_else(marker, pa.scalar(None, pa.string()), stripped)


def numeric_column(col: pa.Array, where: str, name: str, line_of, hint: str = "",
                   unit: str = "line") -> np.ndarray:
    """float64 values (NaN where missing) of a float column, or of a string column whose values
    must all be numbers or markers; else a DataError naming the first bad value's line (or
    `unit`: a Parquet row)."""
    if pa.types.is_floating(col.type) or pa.types.is_integer(col.type) or pa.types.is_null(col.type):
        return col.cast(pa.float64()).to_numpy(zero_copy_only=False)    # null -> NaN in the one copy
    miss = missing_mask(col)
    lowered = pc.utf8_lower(pc.utf8_trim_whitespace(col))
    number = pc.fill_null(pc.match_substring_regex(lowered, _NUMBER), False).to_numpy(zero_copy_only=False)
    bad = ~miss & ~number
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{where} {unit} {line_of(i)} column '{name}': '{col[i].as_py().strip()}' is not a number "
                        f"in a numeric column; fix the value, write it as empty/NA to mark it missing{hint}")
    values = pc.if_else(pa.array(miss), pa.scalar("nan"), lowered)
    return values.cast(pa.float64()).to_numpy(zero_copy_only=False)


def parseable_fraction(col: pa.Array) -> float:
    """The share of present values that are numbers."""
    present = col.filter(pa.array(~missing_mask(col)))
    if len(present) == 0:
        return 0.0
    hits = pc.match_substring_regex(pc.utf8_lower(pc.utf8_trim_whitespace(present)), _NUMBER)
    return pc.sum(hits).as_py() / len(present)


def infer_kinds(header: list[str], sample: pa.Table, cfg: DataConfig) -> dict[str, str]:
    """name -> numeric | category | text for every feature column, from string samples."""
    kinds = {}
    for name in header:
        if name == cfg.target or name in cfg.drop_columns:
            continue
        if name in cfg.columns:
            kinds[name] = cfg.columns[name]
            continue
        col = sample.column(name).combine_chunks()
        if parseable_fraction(col[:2000] if len(col) > 2000 else col) > 0.5:
            kinds[name] = "numeric"
            continue
        present = col.filter(pa.array(~missing_mask(col)))
        words = pc.mean(pc.list_value_length(pc.utf8_split_whitespace(present[:2000]))).as_py() or 0
        distinct = len(pc.unique(pc.utf8_trim_whitespace(present)))
        kinds[name] = "category" if distinct <= cfg.max_categories and words <= 3 else "text"
    return kinds


def check_config_columns(header: list[str], cfg: DataConfig, path: str) -> None:
    """Every column the data config names (target, drop, columns, log) is in the header."""
    cols = ", ".join(header)
    if cfg.target not in header:
        raise DataError(f"{path}: target column '{cfg.target}' not in the header; "
                        f"set data.target to one of: {cols}")
    for name in list(cfg.drop_columns) + list(cfg.columns) + list(cfg.log_columns):
        if name not in header:
            raise DataError(f"{path}: column '{name}' (named in the data config) not in the header; "
                            f"valid columns: {cols}")
    if cfg.target in cfg.drop_columns:
        raise DataError(f"{path}: the target column '{cfg.target}' is also in data.drop_columns")


def read_sample(layout: CsvLayout, rows: int = SAMPLE_ROWS) -> pa.Table:
    """The first `rows` records, every column as strings (for inferring the column kinds)."""
    read, parse, convert = arrow_options(layout, set(), block_size=1 << 20)
    read.use_threads = False           # with threads the reader parses blocks ahead that are never used
    try:
        reader = pcsv.open_csv(layout.path, read_options=read, parse_options=parse, convert_options=convert)
        batches, n = [], 0
        for batch in reader:
            batches.append(batch)
            n += batch.num_rows
            if n >= rows:
                break
    except pa.ArrowInvalid as e:
        raise parse_error(layout, str(e)) from None
    table = pa.Table.from_batches(batches, reader.schema)
    if table.num_rows == 0:
        raise DataError(f"{layout.path}: only a header row, no data rows")
    return table.slice(0, rows)


def read_all(layout: CsvLayout, numeric: set[str]) -> pa.Table:
    """The whole file; numeric columns parsed by Arrow, or as strings when one holds a
    value Arrow's parser refuses (a padded missing marker, or a word: located later)."""
    try:
        return pcsv.read_csv(layout.path, *arrow_options(layout, numeric))
    except pa.ArrowInvalid as e:
        if "conversion error" not in str(e):
            raise parse_error(layout, str(e)) from None
    try:
        return pcsv.read_csv(layout.path, *arrow_options(layout, set()))
    except pa.ArrowInvalid as e:
        raise parse_error(layout, str(e)) from None


@dataclasses.dataclass
class CsvSchema:
    """How each column of a CSV is read: the layout, the feature kinds, the target's type."""
    layout: CsvLayout
    kinds: dict[str, str]             # feature column -> numeric | category | text
    numeric_target: bool              # every sampled label is a number (in memory: else text labels)
    target_word: str | None = None    # a first sampled label that is not a number, if any
    target_number_share: float = 1.0  # of the sampled labels

    @property
    def num_names(self) -> list[str]:
        return [n for n in self.layout.header if self.kinds.get(n) == "numeric"]

    @property
    def txt_kinds(self) -> dict[str, str]:
        return {n: k for n, k in self.kinds.items() if k != "numeric"}

    @property
    def numeric(self) -> set[str]:
        return set(self.num_names)


def read_schema(cfg: DataConfig) -> CsvSchema:
    """The layout and the column kinds, from the header and the first records."""
    layout = read_layout(str(cfg.path), cfg.delimiter)
    check_config_columns(layout.header, cfg, layout.path)
    sample = read_sample(layout)
    kinds = infer_kinds(layout.header, sample, cfg)
    y = sample.column(cfg.target).combine_chunks()
    present = y.filter(pa.array(~missing_mask(y)))
    words = pc.invert(pc.match_substring_regex(pc.utf8_lower(pc.utf8_trim_whitespace(present)), _NUMBER))
    word = present.filter(words)
    return CsvSchema(layout, kinds, len(present) > 0 and len(word) == 0,
                     word[0].as_py().strip() if len(word) else None, 1 - len(word) / max(len(present), 1))


def to_part(batch, schema: CsvSchema, target: str, line_of, first: int = 0) -> Part:
    """Arrow columns (a table or one block of records, starting at record `first`) -> a table Part.
    The columns are converted side by side on the shared thread pool (in column order)."""
    where = schema.layout.path
    hint = ", or declare the column as text with data.columns.{}=category"
    at = lambda i: line_of(first + i)  # noqa: E731
    names = schema.num_names
    num = np.empty((batch.num_rows, len(names)))      # filled column by column: no stacked copy

    def convert(job):
        kind, j, n = job
        if kind == "num":
            num[:, j] = numeric_column(batch.column(n), where, n, at, hint.format(n))
            return None
        if kind == "txt":
            return text_column(batch.column(n))
        ycol = batch.column(n)
        return numeric_column(ycol, where, n, at) if schema.numeric_target else \
            text_column(ycol).to_numpy(zero_copy_only=False)
    jobs = [("num", j, n) for j, n in enumerate(names)] + [("txt", 0, n) for n in schema.txt_kinds]
    done = map_ordered(convert, jobs + [("y", 0, target)])
    txt = {n: col for (_, _, n), col in zip(jobs[len(names):], done[len(names):])}
    return Part(y=done[-1], rows=np.arange(first, first + batch.num_rows), num=num, txt=txt)


def check_not_all_missing(part: Part, schema: CsvSchema) -> None:
    for j, name in enumerate(schema.num_names):
        # A present first value settles it without a pass over the column.
        if (len(part.num) == 0 or np.isnan(part.num[0, j])) and np.isnan(part.num[:, j]).all():
            raise DataError(f"{schema.layout.path} column '{name}': every value is missing; "
                            "drop it with data.drop_columns or fill it in")
    for name, col in part.txt.items():
        if col.null_count == len(col):
            raise DataError(f"{schema.layout.path} column '{name}': every value is missing; "
                            "drop it with data.drop_columns or fill it in")


def split_schema(path: str, cfg: DataConfig, num_names: list[str], txt_kinds: dict[str, str],
                 numeric_target: bool, train_where: str) -> CsvSchema:
    """How a separate split file (data.val_path / test_path) is read: with the training file's
    column kinds and target type; columns in any order, the training file's must all be there."""
    layout = read_layout(path, cfg.delimiter)
    check_config_columns(layout.header, cfg, path)
    missing = [n for n in list(num_names) + list(txt_kinds) if n not in layout.header]
    if missing:
        raise DataError(f"{path}: column(s) {', '.join(missing)} of the training file {train_where} are not "
                        "in the header; a split file needs the training file's columns")
    return CsvSchema(layout, dict.fromkeys(num_names, "numeric") | dict(txt_kinds), numeric_target=numeric_target)


def in_column_order(part: Part, schema: CsvSchema, num_names: list[str]) -> Part:
    """`part`'s numeric block with its columns in the order `num_names` (the training file's)."""
    order = [schema.num_names.index(n) for n in num_names]
    if order != list(range(len(order))):
        part.num = np.ascontiguousarray(part.num[:, order])
    return part


def read_split_file(path: str, raw: RawData, cfg: DataConfig) -> tuple[Part, LineIndex]:
    """A separate split file read whole (`split_schema`)."""
    schema = split_schema(path, cfg, raw.num_names, raw.txt_kinds, raw.target_is_numeric, raw.where)
    numeric = schema.numeric | ({cfg.target} if schema.numeric_target else set())
    table = read_all(schema.layout, numeric)
    if table.num_rows == 0:
        raise DataError(f"{path}: only a header row, no data rows")
    line_of = LineIndex(schema.layout)
    return in_column_order(to_part(table, schema, cfg.target, line_of), schema, raw.num_names), line_of


def load_csv(cfg: DataConfig) -> RawData:
    schema = read_schema(cfg)
    layout = schema.layout
    numeric = schema.numeric | ({cfg.target} if schema.numeric_target else set())
    table = read_all(layout, numeric)
    line_of = LineIndex(layout)
    part = to_part(table, schema, cfg.target, line_of)
    del table
    check_not_all_missing(part, schema)
    name = re.sub(r"\.csv$", "", os.path.basename(layout.path))
    return RawData("table", {"all": part}, name=name, where=layout.path,
                   task=None if cfg.task == "auto" else cfg.task, num_classes=cfg.num_classes,
                   num_names=schema.num_names, txt_kinds=schema.txt_kinds, target=cfg.target,
                   extra={"delimiter": layout.delimiter} if layout.sniffed else {}, line_of=line_of)
