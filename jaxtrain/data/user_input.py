"""A user's file of new raw examples through a run's saved statistics and the one encoder.

`read_input` is the one reader of such a file, for `predict` and `eval --input`: a CSV
(columns as in training), an .npz (`x`, and `y` for labels), an IDX images file (its
labels file beside it) or PNG/JPEG images (a folder, labels from its class sub-folders,
or one file). The rows go through `encoder.encode_table` / `encode_arrays` and
`encoder.normalize`, exactly as an evaluation split does: imputed, log1p'd, clipped (when
the rule clips), one-hot / hashed, normalized. Rows are never dropped; what was guessed
(missing values filled, unseen categories) is counted for the user.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jaxtrain.config.data import DataConfig
from jaxtrain.data import clean, csvfile, encoder, images, parquetfile, transforms
from jaxtrain.data.featurestats import FeatureStats
from jaxtrain.data.raw import Part
from jaxtrain.data.sources import read_idx, read_npz
from jaxtrain.util.errors import DataError, clip_words

UNSEEN_EXAMPLES = clean.UNSEEN_EXAMPLES
FILL_ORIGIN = {"mean": "the training mean", "median": "the training median", "drop": "the training median",
               "most_frequent": "the most frequent training value", "constant": "data.clean.fill_value"}


@dataclasses.dataclass
class UserInput:
    """A user's file of raw examples, encoded with a run's saved statistics."""
    x: np.ndarray                          # normalized features, as the model takes them
    rows: int
    counts: encoder.Counts = dataclasses.field(default_factory=encoder.Counts)   # table: filled, clipped, unseen
    unseen: dict[str, list[str]] = dataclasses.field(default_factory=dict)      # up to five unseen values
    kept: dict[str, list[str]] = dataclasses.field(default_factory=dict)        # --keep columns, as written
    labels: np.ndarray | None = None       # the target column / 'y', as read (when asked for)


def read_input(path: str | Path, stats: FeatureStats, cfg: DataConfig, *, keep: list[str] | tuple = (),
               labels: bool = False) -> UserInput:
    """A CSV or a Parquet/Arrow file or directory (the training columns, plus `keep` and the
    target), an .npz ('x', and 'y' for `labels`), an IDX images file (for `labels`, its labels
    file beside it), or a folder of images or one image file (`image_input`)."""
    path = Path(path)
    if stats.feature_columns() and path.exists() and is_table_file(path):
        return read_parquet_input(str(path), stats, cfg, list(keep), labels)
    if images.is_image_input(path):
        return image_input(path, stats, cfg, keep, labels)
    if not path.is_file():
        raise DataError(f"{path}: input file not found; pass --input with an existing CSV, Parquet, .npz "
                        "or IDX file")
    if path.suffix == ".npz" or _is_idx(path):
        if keep:
            raise DataError(f"{path}: --keep copies columns of a CSV; an .npz or IDX file has none")
        x, y = _read_npz(path, labels) if path.suffix == ".npz" else _read_idx(path, labels)
        data = array_input(x, stats, str(path))
        data.labels = y
        return data
    if not stats.feature_columns():  # trained on arrays (images): a CSV has no columns to match
        raise DataError(f"{path}: this run was trained on images, not table columns; image runs take "
                        f"an IDX images file, an .npz with an array 'x' of images or PNG/JPEG images, "
                        "not a CSV")
    return read_csv_input(str(path), stats, cfg, list(keep), labels)


def image_input(path: Path, stats: FeatureStats, cfg: DataConfig, keep: list[str] | tuple,
                labels: bool) -> UserInput:
    """A folder of images (its sub-folders too) or one image file, decoded as the training
    images were; each image's path below the folder kept as the column `file`; for `labels`,
    the class sub-folder each image is in."""
    if keep:
        raise DataError(f"{path}: --keep copies columns of a CSV; for images the file names are written")
    if stats.is_table or not stats.image_shape:
        raise DataError(f"{path}: this run was trained on table columns, not images; pass --input with "
                        "a CSV, .npz or IDX file")
    x, names = images.read_image_inputs(path, tuple(stats.image_shape), cfg.image_size is not None,
                                        images.threads(cfg))
    data = array_input(x, stats, str(path))
    data.kept = {"file": names}
    if labels:
        loose = [n for n in names if os.sep not in n]
        if loose or not path.is_dir():
            raise DataError(f"{path}: scoring images needs a folder with one sub-folder per class, named as "
                            f"the run's classes" + (f"; {loose[0]} is in no sub-folder" if path.is_dir() else ""))
        data.labels = np.array([n.split(os.sep, 1)[0] for n in names], object)
    return data


def _is_idx(path: Path) -> bool:
    name = path.name.removesuffix(".gz")
    return name.endswith("ubyte") or name.endswith(".idx")


def _read_npz(path: Path, labels: bool) -> tuple[np.ndarray, np.ndarray | None]:
    arrays = read_npz(str(path))
    key = next((k for k in ("x", "x_test") if k in arrays), None)
    if key is None:
        raise DataError(f"{path}: needs an array 'x' of inputs; found: {', '.join(arrays) or 'none'}")
    if not labels:
        return arrays[key], None
    ykey = key.replace("x", "y")
    if ykey not in arrays:
        raise DataError(f"{path}: needs an array '{ykey}' of labels beside '{key}' to be scored; "
                        f"found: {', '.join(arrays)}")
    return arrays[key], arrays[ykey]


def _read_idx(path: Path, labels: bool) -> tuple[np.ndarray, np.ndarray | None]:
    if "labels-idx1" in path.name:      # the labels half of an IDX pair: the images are the input
        images_name = path.name.replace("labels-idx1", "images-idx3")
        raise DataError(f"{path}: an IDX labels file, not images; pass --input the images file "
                        f"({images_name}): `eval` reads its labels from this file beside it")
    x = read_idx(str(path))
    if not labels:
        return x, None
    beside = path.with_name(path.name.replace("images-idx3", "labels-idx1"))
    if beside == path or not beside.is_file():
        raise DataError(f"{path}: scoring an IDX images file needs its labels file beside it "
                        f"({beside.name if beside != path else 'NAME-labels-idx1-ubyte'}); none found")
    return x, read_idx(str(beside))


def check_input_columns(header: list[str], stats: FeatureStats, cfg: DataConfig, where: str,
                        keep: list[str] = (), labels: bool = False) -> None:
    """The input must hold every training feature column (and the target, to be scored); it
    may also hold the target, the configured drop_columns (ignored) and the `keep` columns.
    Anything else is an error naming the columns."""
    wanted = stats.feature_columns() + ([cfg.target] if labels and cfg.target else [])
    absent = [c for c in keep if c not in header]
    if absent:
        raise DataError(f"{where}: --keep column(s) {', '.join(absent)} not in the file; its columns: "
                        f"{', '.join(header)}")
    allowed = set(wanted) | set(cfg.drop_columns) | ({cfg.target} if cfg.target else set()) | set(keep)
    missing = [c for c in wanted if c not in header]
    extra = [c for c in header if c not in allowed]
    if missing or extra:
        what = []
        if missing:
            what.append(f"missing column(s): {', '.join(missing)}")
        if extra:
            what.append(f"unexpected column(s): {', '.join(extra)}")
        raise DataError(f"{where}: columns do not match the training data ({'; '.join(what)}); "
                        f"the input needs exactly the training columns: {', '.join(wanted)}"
                        + (" (--keep COLUMN copies other columns to the output)" if extra else ""))


def table_input(part: Part, stats: FeatureStats, where: str, line_of=None) -> UserInput:
    unseen = unseen_values(part.txt, stats)
    x, counts = encoder.encode_table(stats, part.num, part.txt, where, line_of)
    return UserInput(encoder.normalize(stats, x), len(x), counts, unseen)


def unseen_values(txt: dict[str, pa.Array], stats: FeatureStats) -> dict[str, list[str]]:
    """Per category column, the first few present values that training never saw."""
    out = {}
    for name, categories in stats.categories.items():
        col = txt[name].drop_null()
        new = pc.unique(col.filter(pc.invert(pc.is_in(col, value_set=pa.array(categories, pa.string())))))
        if len(new):
            out[name] = new[:UNSEEN_EXAMPLES].to_pylist()
    return out


def read_csv_input(path: str, stats: FeatureStats, cfg: DataConfig, keep: list[str] = (),
                   labels: bool = False) -> UserInput:
    """A CSV of raw rows with the training columns, encoded; `keep` columns as written; the
    target column as text when `labels`."""
    layout = csvfile.read_layout(path, cfg.delimiter)
    check_input_columns(layout.header, stats, cfg, path, keep, labels)
    kinds = {n: "numeric" for n in stats.numeric_columns} | {n: "category" for n in stats.categories} | \
        {n: "text" for n in stats.text_columns}
    schema = csvfile.CsvSchema(layout, kinds, numeric_target=False)
    table = csvfile.read_all(layout, schema.numeric - set(keep))
    if table.num_rows == 0:
        raise DataError(f"{path}: only a header row, no data rows")
    return arrow_input(table, path, stats, cfg.target, keep, labels, csvfile.LineIndex(layout))


def arrow_input(table: pa.Table, where: str, stats: FeatureStats, target: str, keep: list[str],
                labels: bool, line_of) -> UserInput:
    """An Arrow table of raw rows whose columns were checked (`check_input_columns`): the features
    encoded, `keep` columns as text, the target column as text when `labels`. `line_of(i)`
    names row i's line in messages (a CSV's `LineIndex`)."""
    columns = {n: table.column(n) for n in stats.feature_columns()}
    num = np.stack([csvfile.numeric_column(columns[n], where, n, line_of) for n in stats.numeric_columns], 1) \
        if stats.numeric_columns else np.zeros((table.num_rows, 0))
    txt = {n: csvfile.text_column(columns[n]) for n in list(stats.categories) + stats.text_columns}
    data = table_input(Part(y=np.zeros(len(num)), rows=np.arange(len(num)), num=num, txt=txt),
                       stats, where, line_of)
    return _with_kept_and_labels(data, table, keep, target, labels)


def is_table_file(path: str | Path) -> bool:
    """A Parquet / Arrow file (or a directory of them) rather than a CSV."""
    return os.path.isdir(path) or str(path).endswith(parquetfile.PARQUET_SUFFIXES + parquetfile.ARROW_SUFFIXES)


def read_parquet_input(path: str, stats: FeatureStats, cfg: DataConfig, keep: list[str] = (),
                       labels: bool = False) -> UserInput:
    """A Parquet/Arrow file (or directory) with the training columns, typed by its schema,
    encoded; `keep` columns as written; the target column as text when `labels`."""
    dataset, files = parquetfile.open_dataset(path)
    check_input_columns(dataset.schema.names, stats, cfg, path, keep, labels)
    kinds = {n: "numeric" for n in stats.numeric_columns} | {n: "category" for n in stats.categories} | \
        {n: "text" for n in stats.text_columns}
    schema = parquetfile.TableSchema(path, files, stats.feature_columns(), kinds, True, dataset.schema)
    wanted = list(dict.fromkeys([*stats.feature_columns(), *keep, *([cfg.target] if labels else [])]))
    try:
        table = dataset.to_table(columns=wanted)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as e:
        raise DataError(f"{path}: cannot read as Parquet/Arrow ({clip_words(str(e))})") from None
    if table.num_rows == 0:
        raise DataError(f"{path}: no data rows")
    num = np.empty((table.num_rows, len(stats.numeric_columns)), np.float64)
    for j, name in enumerate(stats.numeric_columns):
        num[:, j] = parquetfile.numbers(table.column(name), path, name, 0)
    txt = {n: parquetfile.strings(table.column(n)) for n in schema.txt_kinds}
    data = table_input(Part(y=np.zeros(len(num)), rows=np.arange(len(num)), num=num, txt=txt), stats, path)
    return _with_kept_and_labels(data, table, keep, cfg.target, labels)


def _with_kept_and_labels(data: UserInput, table: pa.Table, keep: list[str], target: str,
                          labels: bool) -> UserInput:
    data.kept = {n: pc.fill_null(table.column(n).cast(pa.string()), "").to_pylist() for n in keep}
    if labels:
        data.labels = csvfile.text_column(table.column(target).cast(pa.string())).to_numpy(zero_copy_only=False)
    return data


def array_input(x: np.ndarray, stats: FeatureStats, where: str) -> UserInput:
    """An array of inputs: one column per training feature (table model) or images."""
    if not stats.is_table:
        return UserInput(encoder.normalize(stats, encoder.encode_arrays(stats, x, where)), len(x))
    cols = stats.feature_columns()
    if x.ndim != 2 or x.shape[1] != len(cols):
        raise DataError(f"{where}: array 'x' has shape {x.shape}, but the model takes {len(cols)} "
                        f"columns: {', '.join(cols)}")
    if x.dtype.kind not in "biuf":
        raise DataError(f"{where}: inputs must be numeric, got {x.dtype}")
    k = len(stats.numeric_columns)
    txt = {n: pa.array(x[:, k + j].astype(str)) for j, n in enumerate(cols[k:])}
    part = Part(y=np.zeros(len(x)), rows=np.arange(len(x)), num=x[:, :k].astype(np.float64), txt=txt)
    return table_input(part, stats, where)


def label_targets(stats: FeatureStats, labels: np.ndarray, where: str) -> np.ndarray:
    """A scored file's labels as the metrics take them: class indices, or standardized targets.
    A label the run never saw (or a missing one) is an error naming up to five of them and the
    closest labels the run knows."""
    if stats.task == "regression":
        return encoder.encode_targets(stats, _target_numbers(labels, where))
    known = [str(c) for c in stats.classes] if stats.classes else [str(k) for k in range(stats.num_classes or 0)]
    position = {c: i for i, c in enumerate(known)}
    text = [_label_text(v, numbered=not stats.classes) for v in labels]
    codes = np.array([position.get(t, -1) for t in text], np.int32)
    if (codes < 0).any():
        raise DataError(unseen_labels_message([t for t, c in zip(text, codes) if c < 0], known, where))
    return codes


def _label_text(value, numbered: bool) -> str:
    """A label as the run's classes spell it; '' when missing. Numbered classes: '2.0' is '2'."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if numbered:
        try:
            number = float(value)
            return str(int(number)) if number.is_integer() else str(value)
        except (TypeError, ValueError):
            pass
    return str(value)


def unseen_labels_message(unseen: list[str], known: list[str], where: str) -> str:
    names = list(dict.fromkeys(unseen))
    shown = []
    for label in names[:UNSEEN_EXAMPLES]:
        close = difflib.get_close_matches(label, known, n=1, cutoff=clean.CLOSE_ENOUGH)
        shown.append(("a missing label" if not label else f"'{label}'")
                     + (f" (closest: '{close[0]}')" if close and label else ""))
    more = f" and {len(names) - UNSEEN_EXAMPLES} more" if len(names) > UNSEEN_EXAMPLES else ""
    listed = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "")
    return (f"{where}: {len(unseen)} row(s) have labels the run never saw in training: {', '.join(shown)}{more}; "
            f"its labels are {listed}: fix the labels, or score only rows with known labels")


def _target_numbers(labels: np.ndarray, where: str) -> np.ndarray:
    """Regression targets as float64; a missing or non-numeric one is an error naming it."""
    values, bad = np.empty(len(labels)), []
    for i, v in enumerate(labels):
        try:
            values[i] = float(v) if v is not None else np.nan
        except (TypeError, ValueError):
            values[i] = np.nan
        if not np.isfinite(values[i]):
            bad.append(i)
    if bad:
        examples = ", ".join(repr(labels[i]) if labels[i] is not None else "missing"
                             for i in bad[:UNSEEN_EXAMPLES])
        raise DataError(f"{where}: {len(bad)} row(s) have no numeric target to score against "
                        f"(rows {', '.join(str(i) for i in bad[:UNSEEN_EXAMPLES])}: {examples}); "
                        "fix or remove them")
    return values


def invert_normalizer(x: np.ndarray, stats: FeatureStats) -> np.ndarray:
    """Normalized features back to input units (for showing images), float64."""
    return transforms.denormalize(x, stats.normalize)
