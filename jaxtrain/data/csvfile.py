"""CSV source: a header row, numeric and text columns, a target column.

Missing values may be written as empty, NA, NaN, null (any case), None or N/A.
Every error names the file and, where there is one, the line and column.
"""

from __future__ import annotations

import csv
import os
import re

import numpy as np

from jaxtrain.config.data import DataConfig
from jaxtrain.data.raw import Part, RawData
from jaxtrain.util.errors import DataError

MISSING = ("", "na", "nan", "null", "none", "n/a")


def missing_mask(col: np.ndarray) -> np.ndarray:
    """True where a string column holds a missing marker."""
    stripped = np.char.strip(col.astype(str))
    return np.isin(np.char.lower(stripped), MISSING)


def to_float(col: np.ndarray, path: str, name: str, lines: np.ndarray, hint: str = "") -> np.ndarray:
    """Parse a string column to float64 (NaN where missing); DataError at the first bad value."""
    miss = missing_mask(col)
    vals = np.where(miss, "nan", col.astype(str))
    try:
        return vals.astype(np.float64)
    except ValueError:
        pass
    for i, v in enumerate(vals):
        try:
            float(v)
        except ValueError:
            raise DataError(
                f"{path} line {int(lines[i])} column '{name}': '{v}' is not a number in a numeric column; "
                f"fix the value, write it as empty/NA to mark it missing{hint}") from None
    raise AssertionError("unreachable")


def _parseable(col: np.ndarray) -> float:
    ok = 0
    for v in col:
        try:
            float(v)
            ok += 1
        except ValueError:
            pass
    return ok / max(len(col), 1)


def read_rows(path: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(header, (n, m) str array, line numbers). Raises DataError for empty/ragged files."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: CSV file not found; set data.path to an existing file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = None
            rows, lines = [], []
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue                      # blank line
                if header is None:
                    header = [h.strip() for h in row]
                    continue
                if len(row) != len(header):
                    raise DataError(f"{path} line {reader.line_num}: {len(row)} fields, but the header "
                                    f"has {len(header)}; fix the row (quote values that contain commas)")
                rows.append(row)
                lines.append(reader.line_num)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start}); "
                        "save it as UTF-8 CSV") from None
    except csv.Error as e:
        raise DataError(f"{path}: not valid CSV ({e})") from None
    if header is None:
        raise DataError(f"{path}: the file is empty; a CSV needs a header row and data rows")
    if not rows:
        raise DataError(f"{path}: only a header row, no data rows")
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        raise DataError(f"{path}: column name '{dup[0]}' appears twice in the header; rename one")
    if any(not h for h in header):
        raise DataError(f"{path}: column {header.index('') + 1} has an empty name in the header")
    return header, np.array(rows, dtype=str), np.asarray(lines, np.int64)


def infer_kinds(header: list[str], table: np.ndarray, cfg: DataConfig) -> dict[str, str]:
    """name -> numeric | category | text for every feature column."""
    kinds = {}
    for j, name in enumerate(header):
        if name == cfg.target or name in cfg.drop_columns:
            continue
        if name in cfg.columns:
            kinds[name] = cfg.columns[name]
            continue
        col = table[:, j]
        present = col[~missing_mask(col)]
        sample = present[:2000]
        if _parseable(sample) > 0.5:
            kinds[name] = "numeric"
        else:
            uniq = np.unique(present)
            words = np.mean([len(s.split()) for s in sample]) if len(sample) else 0
            kinds[name] = "category" if len(uniq) <= cfg.max_categories and words <= 3 else "text"
    return kinds


def check_columns(header: list[str], cfg: DataConfig, path: str) -> None:
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


def load_csv(cfg: DataConfig) -> RawData:
    path = str(cfg.path)
    header, table, lines = read_rows(path)
    check_columns(header, cfg, path)
    for j, name in enumerate(header):
        if name in cfg.drop_columns:
            continue
        if missing_mask(table[:, j]).all():
            raise DataError(f"{path} column '{name}': every value is missing; "
                            f"drop it with data.drop_columns or fill it in")
    kinds = infer_kinds(header, table, cfg)
    num_names = [n for n in header if kinds.get(n) == "numeric"]
    hint = lambda n: f", or declare the column as text with data.columns.{n}=category"  # noqa: E731
    num = np.stack([to_float(table[:, header.index(n)], path, n, lines, hint(n)) for n in num_names], 1) \
        if num_names else np.zeros((len(table), 0))
    txt = {}
    for n, k in kinds.items():
        if k != "numeric":
            col = np.char.strip(table[:, header.index(n)]).astype(object)
            col[missing_mask(table[:, header.index(n)])] = None
            txt[n] = col
    ycol = table[:, header.index(cfg.target)]
    ymiss = missing_mask(ycol)
    if _parseable(ycol[~ymiss]) == 1.0:
        y = to_float(ycol, path, cfg.target, lines)
    else:
        y = np.char.strip(ycol).astype(object)
        y[ymiss] = None
    name = re.sub(r"\.csv$", "", os.path.basename(path))
    return RawData("table", {"all": Part(y=y, rows=lines, num=num, txt=txt)}, name=name, where=path,
                   task=None if cfg.task == "auto" else cfg.task, num_classes=cfg.num_classes,
                   num_names=num_names, txt_kinds={n: k for n, k in kinds.items() if k != "numeric"},
                   target=cfg.target, extra={"row_kind": "line"})
