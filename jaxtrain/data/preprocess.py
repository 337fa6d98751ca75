"""The preprocessing stage: split, clean (train only), transform and normalize.

Everything is fitted on the training split (or taken from saved `stats`) and then
applied to every split. The result is a `Dataset`; what the stage did is counted in
`Dataset.report`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from jaxtrain.config.data import DataConfig
from jaxtrain.data import clean, encoder, tablefit, transforms
from jaxtrain.data.dataset import Dataset, Split
from jaxtrain.data.featurestats import FeatureStats
from jaxtrain.data.raw import Part, RawData
from jaxtrain.util.errors import DataError


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int):
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    return order[n_test + n_val:], order[n_test:n_test + n_val], order[:n_test]


def split_parts(raw: RawData, cfg: DataConfig) -> dict[str, Part | None]:
    """The source's own splits where it has them; otherwise a seeded shuffle. A split read
    from its own file (data.val_path / test_path) replaces that split's fraction."""
    files = {s: raw.parts[s] for s in raw.split_files}
    val_fraction = 0.0 if "val" in files else cfg.val_fraction
    if "all" in raw.parts:
        tr, va, te = split_indices(len(raw.parts["all"]), val_fraction,
                                   0.0 if "test" in files else cfg.test_fraction, cfg.seed)
        p = raw.parts["all"]
        out = {"train": p.take(tr), "val": p.take(va) if len(va) else None, "test": p.take(te)}
    else:
        out = {"train": raw.parts["train"], "val": raw.parts.get("val"), "test": raw.parts.get("test")}
        if out["val"] is None and val_fraction > 0:
            tr, va, _ = split_indices(len(out["train"]), val_fraction, 0.0, cfg.seed)
            out["train"], out["val"] = out["train"].take(tr), out["train"].take(va)
        if out["test"] is None:
            raise DataError(f"{raw.where}: the source has a training split but no test split")
    out.update(files)
    check_split_sizes(raw.where, len(out["train"]), len(out["test"]), cfg)
    return out


def check_split_sizes(where: str, n_train: int, n_test: int, cfg: DataConfig) -> None:
    if n_train == 0:
        raise DataError(f"{where}: no training examples after the split; add data or lower "
                        "data.val_fraction/test_fraction")
    if n_test == 0 and cfg.test_fraction > 0:  # NaN test metrics would look measured
        raise DataError(f"{where}: the test split is empty ({n_train} training rows); "
                        "add data or raise data.test_fraction")


MAX_AUTO_CLASSES = 20     # task=auto: more distinct integer labels than this is regression


def task_for_labels(task: str | None, num_classes: int | None, y: np.ndarray) -> tuple[str, int | None]:
    """(task, num_classes) for numeric training labels `y` (NaN: missing); task None infers it.

    The one rule for every path (in memory and streaming), so that they cannot disagree:
    classification when `num_classes` is set or the labels are at most MAX_AUTO_CLASSES
    distinct non-negative integers; without `num_classes`, the largest valid label + 1 (>= 2).
    """
    v = y[np.isfinite(y)]
    if task is None:
        small_ints = len(v) > 0 and v.min() >= 0 and bool(np.all(v == np.round(v))) \
            and len(np.unique(v)) <= MAX_AUTO_CLASSES
        task = "classification" if num_classes or small_ints else "regression"
    if task == "regression":
        return task, None
    if num_classes is None:
        v = v[(v == np.round(v)) & (v >= 0)]
        num_classes = max(int(v.max()) + 1 if len(v) else 0, 2)
    return task, int(num_classes)


def resolve_task(raw: RawData, train: Part, cfg: DataConfig) -> tuple[str, int | None, list[str] | None]:
    y = train.y
    if y.dtype == object:          # text labels: classification unless the config says otherwise
        task = raw.task or "classification"
        if task == "regression":
            return task, None, None
        classes = raw.classes or transforms.fit_categories(y[~clean.is_missing(y)])
        return task, len(classes), classes
    task, nc = task_for_labels(raw.task, cfg.num_classes or raw.num_classes, y)
    return task, nc, raw.classes if task == "classification" else None


def prepare(raw: RawData, cfg: DataConfig, stats: FeatureStats | None = None,
            keep_raw_train: bool = False) -> Dataset:
    """Clean the training split, fit `stats` on it (unless given), encode every split with them."""
    fit = stats is None
    parts = split_parts(raw, cfg)
    rep: dict[str, Any] = {"source": cfg.source, "name": raw.name, "where": raw.where,
                           "rows_in": {s: len(p) for s, p in parts.items() if p is not None}}
    if "delimiter" in raw.extra:
        rep["delimiter"] = raw.extra["delimiter"]
    rep.update(raw.extra.get("report", {}))      # what the source itself counted (image folders)
    if raw.split_files:
        rep["split_files"] = {s: where for s, (where, _) in raw.split_files.items()}
    if fit:
        stats = FeatureStats(*resolve_task(raw, parts["train"], cfg))
    _check_labels(raw, parts, stats, cfg, rep)
    _drop_duplicates(parts, cfg, rep)
    if raw.kind == "array":
        _check_finite_images(raw, parts)
        rep["missing"] = rep["outliers"] = {"applies": False, "reason": "image arrays"}
        enc, normalized = _encode_arrays(raw, parts, stats, cfg, fit, keep_raw_train)
    else:
        keep = tablefit.clean_and_fit(PartColumns(raw, parts["train"]), stats, cfg, fit, rep)
        if not keep.all():
            parts["train"] = parts["train"].take(np.flatnonzero(keep))
        normalized = {s for s in parts if parts[s] is not None and not (s == "train" and keep_raw_train)}
        enc = _encode_tables(raw, parts, stats, fit, rep, normalized)
    if fit:
        _fit_outputs(raw, parts["train"], enc["train"], stats, cfg)
    width = stats.normalize.width
    targets = {s: encoder.encode_targets(stats, p.y) for s, p in parts.items() if p is not None}
    splits = {s: Split(enc[s] if s in normalized else encoder.normalize(stats, enc[s]), targets[s])
              for s in enc if not (s == "train" and keep_raw_train)}
    rep["rows_out"] = {s: len(p) for s, p in parts.items() if p is not None}
    rep["features"] = int(np.prod(stats.feature_shape))
    rep["task"] = stats.task
    if "injected" in raw.extra:
        rep["injected_by_generator"] = raw.extra["injected"]
    ds = Dataset(task=stats.task, num_classes=stats.num_classes, feature_shape=tuple(stats.feature_shape),
                 train=splits.get("train"), val=splits.get("val"), test=splits["test"], name=raw.name,
                 stats=stats, report=rep, target_mean=stats.target_mean, target_scale=stats.target_scale,
                 num_train=len(parts["train"]))
    if keep_raw_train:        # the tf.data backend normalizes on the fly from the encoded rows
        ds.raw_train = (enc["train"], targets["train"], width)
    return ds


def _check_labels(raw: RawData, parts: dict[str, Part | None], stats: FeatureStats, cfg: DataConfig,
                  rep: dict[str, Any]) -> None:
    """Invalid labels dropped from train (by policy) or an error; in val/test always an error."""
    task, nc, classes = stats.task, stats.num_classes, stats.classes
    parts["train"], dropped = clean.check_labels(raw, "train", parts["train"], task, nc, classes,
                                                 cfg.clean.invalid_labels)
    rep["invalid_labels"] = {"policy": cfg.clean.invalid_labels, "rows_dropped": dropped}
    for s in ("val", "test"):
        if parts[s] is not None:
            clean.check_labels(raw, s, parts[s], task, nc, classes, "error")


def _drop_duplicates(parts: dict[str, Part | None], cfg: DataConfig, rep: dict[str, Any]) -> None:
    if not cfg.clean.duplicates:
        rep["duplicates"] = {"rows_dropped": 0, "disabled": True}
        return
    dup = clean.duplicate_mask(parts["train"])
    if dup.any():
        parts["train"] = parts["train"].take(np.flatnonzero(~dup))
    rep["duplicates"] = {"rows_dropped": int(dup.sum())}


def _check_finite_images(raw: RawData, parts: dict[str, Part | None]) -> None:
    for s, p in parts.items():
        if p is not None and p.x.dtype.kind == "f" and not np.isfinite(p.x).all():
            i = int(np.argmax(~np.isfinite(p.x.reshape(len(p), -1)).all(1)))
            raise DataError(f"{raw.row_label(s, int(p.rows[i]))}: image holds NaN or infinite values; "
                            "fix or remove the example")


def _encode_arrays(raw: RawData, parts: dict[str, Part | None], stats: FeatureStats, cfg: DataConfig,
                   fit: bool, keep_raw_train: bool) -> tuple[dict[str, np.ndarray], set[str]]:
    """Each split as float32 in the feature shape, and which are normalized already: with the
    normalizer known first (saved, or fitted on integer pixels, which float32 holds exactly),
    conversion and normalization are one pass over each split, never a second one over it."""
    train = parts["train"].x
    if fit:
        stats.feature_shape = [int(np.prod(train.shape[1:]))] if cfg.flatten else list(train.shape[1:])
    elif int(np.prod(train.shape[1:])) != int(np.prod(stats.feature_shape)):
        raise DataError(f"{raw.where}: examples have shape {list(train.shape[1:])} but the saved "
                        f"statistics expect {stats.feature_shape}; the data does not match the run")
    early = fit and train.dtype.kind in "ui" and train.dtype.itemsize <= 2
    if early:
        stats.normalize = _array_normalizer(train, cfg)
    enc, normalized = {}, set()
    for s, p in parts.items():
        if p is None:
            continue
        now = (early or not fit) and not (s == "train" and keep_raw_train)
        enc[s] = encoder.encode_arrays(stats, p.x, raw.where, normalize=now)
        if now:
            normalized.add(s)
    return enc, normalized


def _array_normalizer(x: np.ndarray, cfg: DataConfig):
    width = int(np.prod(x.shape[1:]))
    scope = "feature" if cfg.normalize_scope == "feature" else "global"
    return transforms.fit_normalizer_on(x, width, cfg.normalize, scope)


def _encode_tables(raw: RawData, parts: dict[str, Part | None], stats: FeatureStats, fit: bool,
                   rep: dict[str, Any], normalized: set[str]) -> dict[str, np.ndarray]:
    """Every split through the encoder (`normalized` ones normalized in the same pass: the
    normalizer was fitted with the other statistics); what it imputed, clipped and did not
    know is counted."""
    if not fit and list(raw.num_names) != list(stats.numeric_columns):
        raise DataError(f"{raw.where}: numeric columns {raw.num_names} but the saved statistics expect "
                        f"{stats.numeric_columns}; the data does not match the run")
    enc, counts = {}, {}
    for s, p in parts.items():
        if p is not None:
            where, lines = raw.source_of(s)
            line_of = (lambda i, rows=p.rows, lines=lines: lines(int(rows[i]))) if lines else None
            # In place: a split's raw numbers are not read after encoding (no copy of the block).
            enc[s], counts[s] = encoder.encode_table(stats, p.num, p.txt, where, line_of, s in normalized)
    count_into_report(counts, stats, rep)
    return enc


def count_into_report(counts: dict[str, encoder.Counts], stats: FeatureStats, rep: dict[str, Any]) -> None:
    """What the encoder did to each split: imputed, non-finite, clipped, unseen categories."""
    miss, out = rep["missing"], rep["outliers"]
    rep["unseen_categories"] = {s: c.unseen for s, c in counts.items() if s != "train" and c.unseen}
    for s in ("val", "test"):
        if s in counts and counts[s].missing:
            miss["imputed"][s] = sum(counts[s].missing.values())
            miss.setdefault("per_column_eval", {})[s] = counts[s].missing
        if s in counts and counts[s].non_finite:
            miss.setdefault("non_finite_eval", {})[s] = counts[s].non_finite
    if stats.outliers.bounds is not None and stats.numeric_columns:
        if stats.outliers.action == "clip":
            out["per_column"] = counts["train"].outliers
            out["values_clipped"] = {s: sum(c.outliers.values()) for s, c in counts.items()}
        else:
            out["kept_in_eval"] = {s: sum(c.outliers.values()) for s, c in counts.items() if s != "train"}


class PartColumns:
    """The training split of an in-memory table, as `tablefit` reads it (columns in parallel:
    the block is in memory already)."""
    parallel = True

    def __init__(self, raw: RawData, part: Part):
        self.part, self.num_names, self.txt_kinds, self.where = part, raw.num_names, raw.txt_kinds, raw.where
        self.line_of = (lambda i: raw.line_of(int(part.rows[i]))) if raw.line_of else None

    def __len__(self) -> int:
        return len(self.part)

    def numeric(self, j: int) -> np.ndarray:
        return self.part.num[:, j].astype(np.float64)

    def view(self, j: int) -> np.ndarray:
        return self.part.num[:, j]

    def text(self, name: str) -> pa.Array:
        return self.part.txt[name]


def _fit_outputs(raw: RawData, train: Part, enc_train: np.ndarray, stats: FeatureStats, cfg: DataConfig) -> None:
    """The normalizer on the encoded training split, the feature names and shapes, the target scale."""
    table = raw.kind == "table"
    if not table and stats.normalize.width == 0:   # not fitted with the other statistics
        stats.normalize = _array_normalizer(enc_train, cfg)
    else:
        stats.feature_names = encoder.feature_names(stats)
        stats.feature_shape = [enc_train.shape[1]]
    # Images keep their shape here even when flattened for the model (reports plot them).
    stats.image_shape = list(raw.extra.get("image_shape") or (train.x.shape[1:] if not table else [])) or None
    fit_target(stats, train.y, cfg)


def fit_target(stats: FeatureStats, y: np.ndarray, cfg: DataConfig) -> None:
    """Regression: train on standardized targets (y - mean) / std, when configured."""
    if stats.task == "regression" and cfg.standardize_target:
        y = y.astype(np.float64)
        std = float(y.std())
        stats.target_mean, stats.target_scale = float(y.mean()), std if std > 0 else 1.0
