"""Raw data as the sources hand it over, before cleaning and transforms.

Two shapes of data: a *table* (numeric columns as one float64 block with NaN for
missing, text columns as Arrow string arrays with null for missing) and an *array* of
images (any numeric dtype, shape (n, ...)). Each part keeps the source index of every
example (a CSV's record number, counted from 0) so that an error can name it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Literal

import numpy as np
import pyarrow as pa


@dataclasses.dataclass
class Part:
    y: np.ndarray                          # labels: float64 (NaN = missing) or object (text, None = missing)
    rows: np.ndarray                       # source index of each example (CSV: record number from 0)
    num: np.ndarray | None = None          # table: (n, k) float64, NaN = missing
    txt: dict[str, pa.Array] = dataclasses.field(default_factory=dict)  # table: text columns (null: missing)
    x: np.ndarray | None = None            # array: images (n, ...)

    def __len__(self) -> int:
        return len(self.y)

    def take(self, idx: np.ndarray) -> "Part":
        # np.take gathers whole rows (memcpy per row): a third of fancy indexing's time.
        return Part(y=self.y[idx], rows=self.rows[idx],
                    num=None if self.num is None else np.take(self.num, idx, axis=0),
                    txt={k: v.take(pa.array(idx)) for k, v in self.txt.items()},
                    x=None if self.x is None else np.take(self.x, idx, axis=0))


@dataclasses.dataclass
class RawData:
    kind: Literal["table", "array"]
    parts: dict[str, Part]                 # {"all": ...} or the source's own {"train", "test"[, "val"]}
    name: str = ""
    where: str = ""                        # file or data set name, for messages
    task: str | None = None                # None: infer from the labels
    num_classes: int | None = None
    classes: list[str] | None = None       # names of text labels, when the source knows them
    num_names: list[str] = dataclasses.field(default_factory=list)
    txt_kinds: dict[str, str] = dataclasses.field(default_factory=dict)   # name -> category | text
    target: str = "label"
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    # A file's line of a record number (CSV), so that messages name lines; None for arrays.
    line_of: Callable[[int], int] | None = None
    # How a message names a record number when the source has no lines (a Parquet file's row).
    row_name: Callable[[int], str] | None = None
    # Splits read from their own files (data.val_path / test_path): split -> (file, line_of).
    split_files: dict[str, tuple[str, Callable[[int], int] | None]] = dataclasses.field(default_factory=dict)

    def row_label(self, split: str, row: int) -> str:
        """How a message names one example."""
        where, line_of = self.split_files.get(split, (self.where, self.line_of))
        if line_of is not None:
            return f"{where} line {line_of(row)}"
        if self.row_name is not None and split not in self.split_files:
            return self.row_name(row)
        return f"{where} {split} example {row}" if where == self.where else f"{where} row {row}"

    @property
    def target_is_numeric(self) -> bool:
        part = next(iter(self.parts.values()))
        return part.y.dtype != object

    def source_of(self, split: str) -> tuple[str, Callable[[int], int] | None]:
        """(file, record -> line) of a split's examples."""
        return self.split_files.get(split, (self.where, self.line_of))


def table_part(y: np.ndarray, num: np.ndarray, txt: dict[str, pa.Array] | None = None,
               rows: np.ndarray | None = None) -> Part:
    rows = np.arange(len(y)) if rows is None else rows
    return Part(y=y, rows=rows, num=np.asarray(num, np.float64), txt=dict(txt or {}))
