"""Cleaning the training split of a table and fitting its statistics, one column at a time.

The same code serves the in-memory path (columns of a `Part`) and the streaming path
(columns read back from the on-disk cache), so both apply the same rules with the same
results: non-finite values count as missing; missing values are counted, then rows are
dropped or the fills fitted (mean, exact median, most frequent, constant); outlier
bounds (z-score, or IQR from exact quartiles) clip or drop; categories are the values
of the surviving rows; the normalizer is fitted on the numeric columns as encoded.
Only one numeric column of the training split is held at a time.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jaxtrain.config.data import DataConfig
from jaxtrain.data import clean, transforms
from jaxtrain.data.featurestats import FeatureStats, Normalizer, OutlierRule
from jaxtrain.util.errors import DataError
from jaxtrain.util.threads import map_ordered


class TrainColumns(Protocol):
    """The training split's raw columns, in training order."""
    num_names: list[str]
    txt_kinds: dict[str, str]            # text column -> category | text
    where: str

    def __len__(self) -> int: ...

    def numeric(self, j: int) -> np.ndarray: ...       # float64 copy, NaN missing (inf as read)

    def text(self, name: str) -> pa.Array: ...         # null: missing

    line_of: Callable[[int], int] | None               # the file line of training row i, if any
    # Optional `parallel = True`: columns may be read at the same time (several held at once);
    # optional `view(j)`: column j without a copy, for reading only.


def _numeric(cols: TrainColumns, j: int) -> tuple[np.ndarray, int]:
    """Column j with non-finite values made missing, and how many there were."""
    col = cols.numeric(j)
    inf = np.isinf(col)
    col[inf] = np.nan
    return col, int(inf.sum())


def each_column(cols: TrainColumns, fn: Callable[[int], Any]) -> list[Any]:
    """[fn(j) for every numeric column j], on the thread pool when `cols` can be read in
    parallel (in memory), else one column at a time (the streaming cache's contract)."""
    columns = range(len(cols.num_names))
    return map_ordered(fn, columns) if getattr(cols, "parallel", False) else [fn(j) for j in columns]


def count_missing(cols: TrainColumns, rep: dict[str, Any]) -> np.ndarray:
    """Missing (and non-finite) values per column into rep; returns the rows with any missing."""
    any_missing = np.zeros(len(cols), bool)
    per_column, non_finite = {}, {}

    def count(j: int) -> tuple[np.ndarray, int]:
        col = cols.view(j) if hasattr(cols, "view") else cols.numeric(j)    # only read here
        inf = np.isinf(col)
        return np.isnan(col) | inf, int(inf.sum())
    for name, (nan, inf) in zip(cols.num_names, each_column(cols, count)):
        any_missing |= nan
        per_column[name], non_finite[name] = int(nan.sum()), inf
    for name in cols.txt_kinds:
        miss = clean.is_missing(cols.text(name))
        any_missing |= miss
        per_column[name] = int(miss.sum())
    rep["per_column"] = {k: v for k, v in per_column.items() if v}
    if any(non_finite.values()):
        rep["non_finite"] = {k: v for k, v in non_finite.items() if v}
    return any_missing


def _line_label(cols: TrainColumns, keep: np.ndarray) -> Callable[[int], int] | None:
    rows = np.flatnonzero(keep)
    return (lambda i: cols.line_of(int(rows[i]))) if cols.line_of is not None else None


def fit_numeric(cols: TrainColumns, keep: np.ndarray, stats: FeatureStats, cfg: DataConfig, fit: bool,
                norm_parts: list[Normalizer] | None = None) -> np.ndarray:
    """Fills and outlier bounds per numeric column (when fitting); returns the outlier mask
    of the kept rows (rows x columns) when the rule drops, else None. With `norm_parts` (the
    rows kept stay kept), each column's normalizer is fitted in the same pass. The columns
    are fitted independently (`each_column`) and their results kept in column order."""
    c = cfg.clean
    if fit:
        stats.outliers = OutlierRule(c.outliers, c.outlier_action, [] if c.outliers != "none" else None)
    rule = stats.outliers
    dropping = rule.bounds is not None and rule.action == "drop"
    outside = np.zeros((int(keep.sum()), len(cols.num_names)), bool) if dropping else None
    every_row = bool(keep.all())

    def fit_column(j: int):
        name = cols.num_names[j]
        col = _numeric(cols, j)[0]
        missing = np.isnan(col)
        if fit:                   # fills: from every present value, before any row is dropped
            fill, quartiles = _fit_fill(col, missing, cols.where, name, c,
                                        every_row and name not in stats.log_columns)
        else:
            fill, quartiles = stats.fills[name], None
        if not every_row:
            col, missing = col[keep], missing[keep]
        col[missing] = fill
        if name in stats.log_columns:
            col = transforms.apply_log(col[:, None], [name], [name], cols.where, _line_label(cols, keep))[:, 0]
        bound = None
        if rule.bounds is not None and (fit or dropping):
            bound = clean.fit_bound(col, c, quartiles) if fit else rule.bounds[j]
        if dropping:
            return fill, bound, clean.outlier_mask(col[:, None], [bound])[:, 0]
        return fill, bound, None if norm_parts is None else _column_normalizer(col, bound, cfg)
    for j, (fill, bound, extra) in enumerate(each_column(cols, fit_column)):
        if fit:
            stats.fills[cols.num_names[j]] = fill
            if rule.bounds is not None:
                rule.bounds.append(bound)
        if dropping:
            outside[:, j] = extra
        elif norm_parts is not None:
            norm_parts.append(extra)
    return outside


def _fit_fill(col: np.ndarray, missing: np.ndarray, where: str, name: str, c, with_quartiles: bool):
    """The fill of a column from its present values; for a median fill of every row, also
    the IQR rule's quartiles of the filled column, from the same partition of the values."""
    present = col[~missing]
    if len(present) == 0:
        raise clean.all_missing(where, name)
    if with_quartiles and c.missing == "median" and c.outliers == "iqr":
        return clean.median_and_quartiles(present, len(col) - len(present))
    return clean.fit_fill(present, c.missing, c.fill_value), None


def _column_normalizer(col: np.ndarray, bounds: list[float] | None, cfg: DataConfig) -> Normalizer:
    """One column's normalizer as the encoder outputs it (clipped, float32)."""
    if bounds is not None:
        col = np.clip(col, *bounds)
    return transforms.fit_normalizer(iter([col.astype(np.float32)[:, None]]), 1, cfg.normalize, "feature")


def fit_text(cols: TrainColumns, keep: np.ndarray, stats: FeatureStats, cfg: DataConfig) -> None:
    """Text fills (most frequent; ties: the smallest) and the categories of the kept rows."""
    c = cfg.clean
    for name, kind in cols.txt_kinds.items():
        col = cols.text(name)
        counts = pc.value_counts(col.drop_null())
        if len(counts) == 0:
            raise clean.all_missing(cols.where, name)
        if c.missing == "constant":
            stats.fills[name] = c.fill_text
        else:
            n = counts.field("counts").to_numpy()
            stats.fills[name] = min(counts.field("values").filter(pa.array(n == n.max())).to_pylist())
        if kind == "category":
            kept = pc.fill_null(col.filter(pa.array(keep)), stats.fills[name])
            stats.categories[name] = transforms.fit_categories(kept)
        else:
            stats.text_columns.append(name)


def fit_table_normalizer(cols: TrainColumns, keep: np.ndarray, stats: FeatureStats, cfg: DataConfig,
                   parts: list[Normalizer] | None = None):
    """The normalizer of the numeric columns as the encoder outputs them (imputed, log1p'd,
    clipped, float32), fitted column by column (or from `parts`, fitted during `fit_numeric`)."""
    scope = "global" if cfg.normalize_scope == "global" else "feature"

    def columns():
        for j, name in enumerate(cols.num_names):
            col = _numeric(cols, j)[0][keep]
            col[np.isnan(col)] = stats.fills[name]
            if name in stats.log_columns:
                col = np.log1p(col)
            if stats.outliers.bounds is not None:
                col = np.clip(col, *stats.outliers.bounds[j])
            yield col.astype(np.float32)[:, None]

    width = len(cols.num_names)
    if scope == "global" or cfg.normalize == "none" or width == 0:
        return transforms.fit_normalizer(columns(), width, cfg.normalize, scope)
    if parts is None or len(parts) != width:
        parts = [transforms.fit_normalizer(iter([col]), 1, cfg.normalize, scope) for col in columns()]
    return Normalizer(cfg.normalize, scope, [p.shift[0] for p in parts], [p.scale[0] for p in parts], width)


def clean_and_fit(cols: TrainColumns, stats: FeatureStats, cfg: DataConfig, fit: bool,
                  rep: dict[str, Any]) -> np.ndarray:
    """Apply the missing-value and outlier rules to the training rows (fitting `stats` when
    `fit`), count what they did into rep; returns the mask of the training rows kept."""
    c = cfg.clean
    if fit:
        bad = [n for n in cfg.log_columns if n not in cols.num_names]
        if bad:
            raise DataError(f"{cols.where}: data.log_columns names '{bad[0]}', which is not a numeric "
                            f"column; numeric columns: {', '.join(cols.num_names)}")
        stats.numeric_columns, stats.log_columns = list(cols.num_names), list(cfg.log_columns)
        stats.hash_dim = cfg.hash_dim
    miss: dict[str, Any] = {"policy": c.missing}
    any_missing = count_missing(cols, miss)
    miss.update(rows_dropped=0, imputed={})
    keep = np.ones(len(cols), bool)
    if c.missing == "drop":
        keep &= ~any_missing
        miss["rows_dropped"] = int(any_missing.sum())
    else:
        miss["imputed"]["train"] = int(sum(miss["per_column"].values()))
    rep["missing"] = miss
    # The normalizer in the same pass over each column, unless rows are dropped after it.
    same_pass = fit and cfg.normalize != "none" and cfg.normalize_scope != "global"
    norm_parts: list[Normalizer] | None = [] if same_pass else None
    outside = fit_numeric(cols, keep, stats, cfg, fit, norm_parts)
    rep["outliers"] = {"method": stats.outliers.method, "action": stats.outliers.action}
    if outside is not None and len(cols.num_names):
        rep["outliers"]["per_column"] = {n: int(k) for n, k in zip(cols.num_names, outside.sum(0)) if k}
        rep["outliers"]["rows_dropped"] = int(outside.any(1).sum())
        keep[keep] = ~outside.any(1)
    if fit:
        fit_text(cols, keep, stats, cfg)
        stats.normalize = fit_table_normalizer(cols, keep, stats, cfg, norm_parts if outside is None else None)
    return keep
