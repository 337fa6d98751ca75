"""New raw inputs for `predict`, through a run's saved statistics and the one encoder.

The rows go through `encoder.encode_table` / `encode_arrays` and `encoder.normalize`,
exactly as an evaluation split does: imputed, log1p'd, clipped (when the rule clips),
one-hot / hashed, normalized. Rows are never dropped.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa

from jaxtrain.config.data import DataConfig
from jaxtrain.data import csvfile, encoder, parquetfile, transforms
from jaxtrain.data.featurestats import FeatureStats
from jaxtrain.data.raw import Part
from jaxtrain.util.errors import DataError


def check_columns(header: list[str], stats: FeatureStats, cfg: DataConfig, where: str) -> None:
    """The input must hold every training feature column; it may also hold the target and
    the configured drop_columns (ignored). Anything else is an error naming the columns."""
    wanted = stats.feature_columns()
    allowed = set(wanted) | set(cfg.drop_columns) | ({cfg.target} if cfg.target else set())
    missing = [c for c in wanted if c not in header]
    extra = [c for c in header if c not in allowed]
    if missing or extra:
        what = []
        if missing:
            what.append(f"missing column(s): {', '.join(missing)}")
        if extra:
            what.append(f"unexpected column(s): {', '.join(extra)}")
        raise DataError(f"{where}: columns do not match the training data ({'; '.join(what)}); "
                        f"the input needs exactly the training columns: {', '.join(wanted)}")


def table_features(part: Part, stats: FeatureStats, where: str, line_of=None) -> np.ndarray:
    x, _ = encoder.encode_table(stats, part.num, part.txt, where, line_of)
    return encoder.normalize(stats, x)


def read_csv_features(path: str, stats: FeatureStats, cfg: DataConfig) -> np.ndarray:
    """Normalized float32 features for a CSV of raw rows with the training columns."""
    layout = csvfile.read_layout(path, cfg.delimiter)
    check_columns(layout.header, stats, cfg, path)
    kinds = {n: "numeric" for n in stats.numeric_columns} | {n: "category" for n in stats.categories} | \
        {n: "text" for n in stats.text_columns}
    schema = csvfile.CsvSchema(layout, kinds, numeric_target=False)
    table = csvfile.read_all(layout, schema.numeric)
    if table.num_rows == 0:
        raise DataError(f"{path}: only a header row, no data rows")
    line_of = csvfile.LineIndex(layout)
    columns = {n: table.column(n) for n in stats.feature_columns()}
    at = lambda i: line_of(i)  # noqa: E731
    num = np.stack([csvfile.numeric_column(columns[n], path, n, at) for n in stats.numeric_columns], 1) \
        if stats.numeric_columns else np.zeros((table.num_rows, 0))
    txt = {n: csvfile.text_column(columns[n]) for n in list(stats.categories) + stats.text_columns}
    return table_features(Part(y=np.zeros(len(num)), rows=np.arange(len(num)), num=num, txt=txt),
                          stats, path, line_of)


def is_table_file(path: str) -> bool:
    """A Parquet / Arrow file (or a directory of them) rather than a CSV."""
    return os.path.isdir(path) or path.endswith(parquetfile.PARQUET_SUFFIXES + parquetfile.ARROW_SUFFIXES)


def read_parquet_features(path: str, stats: FeatureStats, cfg: DataConfig) -> np.ndarray:
    """Normalized float32 features for a Parquet/Arrow file (or directory) with the training columns."""
    dataset, files = parquetfile.open_dataset(path)
    check_columns(dataset.schema.names, stats, cfg, path)
    kinds = {n: "numeric" for n in stats.numeric_columns} | {n: "category" for n in stats.categories} | \
        {n: "text" for n in stats.text_columns}
    schema = parquetfile.TableSchema(path, files, stats.feature_columns(), kinds, True, dataset.schema)
    try:
        table = dataset.to_table(columns=stats.feature_columns())
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as e:
        raise DataError(f"{path}: cannot read as Parquet/Arrow ({str(e).splitlines()[0][:200]})") from None
    if table.num_rows == 0:
        raise DataError(f"{path}: no data rows")
    num = np.empty((table.num_rows, len(stats.numeric_columns)), np.float64)
    for j, name in enumerate(stats.numeric_columns):
        num[:, j] = parquetfile.numbers(table.column(name), path, name, 0)
    txt = {n: parquetfile.strings(table.column(n)) for n in schema.txt_kinds}
    return table_features(Part(y=np.zeros(len(num)), rows=np.arange(len(num)), num=num, txt=txt), stats, path)


def array_features(x: np.ndarray, stats: FeatureStats, where: str) -> np.ndarray:
    """An array of inputs: one column per training feature (table model) or images."""
    if not stats.is_table:
        return encoder.normalize(stats, encoder.encode_arrays(stats, x, where))
    cols = stats.feature_columns()
    if x.ndim != 2 or x.shape[1] != len(cols):
        raise DataError(f"{where}: array 'x' has shape {x.shape}, but the model takes {len(cols)} "
                        f"columns: {', '.join(cols)}")
    if x.dtype.kind not in "biuf":
        raise DataError(f"{where}: inputs must be numeric, got {x.dtype}")
    k = len(stats.numeric_columns)
    txt = {n: pa.array(x[:, k + j].astype(str)) for j, n in enumerate(cols[k:])}
    part = Part(y=np.zeros(len(x)), rows=np.arange(len(x)), num=x[:, :k].astype(np.float64), txt=txt)
    return table_features(part, stats, where)


def invert_normalizer(x: np.ndarray, stats: FeatureStats) -> np.ndarray:
    """Normalized features back to input units (for showing images), float64."""
    return transforms.denormalize(x, stats.normalize)
