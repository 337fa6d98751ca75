"""The preprocessing stage: split, clean (train only), transform and normalize.

Everything is fitted on the training split (or taken from saved `stats`) and then
applied to every split. The result is a `Dataset`; what the stage did is counted in
`Dataset.report`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxtrain.data import clean, transforms
from jaxtrain.data.dataset import Dataset, Split
from jaxtrain.config.data import DataConfig
from jaxtrain.data.raw import Part, RawData
from jaxtrain.util.errors import DataError

STATS_VERSION = 1


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int):
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    return order[n_test + n_val:], order[n_test:n_test + n_val], order[:n_test]


def split_parts(raw: RawData, cfg: DataConfig) -> dict[str, Part | None]:
    """The source's own splits where it has them; otherwise a seeded shuffle."""
    if "all" in raw.parts:
        tr, va, te = split_indices(len(raw.parts["all"]), cfg.val_fraction, cfg.test_fraction, cfg.seed)
        p = raw.parts["all"]
        out = {"train": p.take(tr), "val": p.take(va) if len(va) else None, "test": p.take(te)}
    else:
        out = {"train": raw.parts["train"], "val": raw.parts.get("val"), "test": raw.parts.get("test")}
        if out["val"] is None and cfg.val_fraction > 0:
            tr, va, _ = split_indices(len(out["train"]), cfg.val_fraction, 0.0, cfg.seed)
            out["train"], out["val"] = out["train"].take(tr), out["train"].take(va)
        if out["test"] is None:
            raise DataError(f"{raw.where}: the source has a training split but no test split")
    if len(out["train"]) == 0:
        raise DataError(f"{raw.where}: no training examples after the split; add data or lower "
                        "data.val_fraction/test_fraction")
    if len(out["test"]) == 0 and cfg.test_fraction > 0:  # NaN test metrics would look measured
        raise DataError(f"{raw.where}: the test split is empty ({len(out['train'])} training rows); "
                        "add data or raise data.test_fraction")
    return out


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
        classes = raw.classes or sorted({str(v) for v in y if v is not None})
        return task, len(classes), classes
    task, nc = task_for_labels(raw.task, cfg.num_classes or raw.num_classes, y)
    return task, nc, raw.classes if task == "classification" else None


def _encode(raw: RawData, part: Part, stats: dict[str, Any], cfg: DataConfig) -> tuple[np.ndarray, int]:
    """Numeric block, one-hot categories, hashed text -> (n, features) float64. Returns (x, unseen)."""
    if part.x is not None:
        return part.x.reshape(len(part), int(np.prod(part.x.shape[1:]))) if cfg.flatten else part.x, 0
    blocks, unseen = [part.num], 0
    for name, cats in stats["categories"].items():
        oh, u = transforms.one_hot(part.txt[name], cats)
        blocks.append(oh)
        unseen += u
        stats.setdefault("_unseen", {})[name] = u
    for name in stats["text_columns"]:
        blocks.append(transforms.hash_text(part.txt[name], stats["hash_dim"]))
    return np.concatenate(blocks, axis=1) if len(blocks) > 1 else part.num, unseen


def prepare(raw: RawData, cfg: DataConfig, stats: dict[str, Any] | None = None,
            keep_raw_train: bool = False) -> Dataset:
    fit = stats is None
    c = cfg.clean
    parts = split_parts(raw, cfg)
    rep: dict[str, Any] = {"source": cfg.source, "name": raw.name, "where": raw.where,
                           "rows_in": {s: len(p) for s, p in parts.items() if p is not None}}
    if fit:
        task, nc, classes = resolve_task(raw, parts["train"], cfg)
        stats = {"version": STATS_VERSION, "task": task, "num_classes": nc, "classes": classes}
    else:
        stats = dict(stats)
        task, nc, classes = stats["task"], stats["num_classes"], stats["classes"]

    # ---- labels: invalid ones dropped from train (by policy) or an error
    parts["train"], dropped = clean.check_labels(raw, "train", parts["train"], task, nc, classes,
                                                 c.invalid_labels)
    rep["invalid_labels"] = {"policy": c.invalid_labels, "rows_dropped": dropped}
    for s in ("val", "test"):
        if parts[s] is not None:
            clean.check_labels(raw, s, parts[s], task, nc, classes, "error")

    # ---- duplicates (train only)
    if c.duplicates:
        dup = clean.duplicate_mask(parts["train"])
        parts["train"] = parts["train"].take(np.flatnonzero(~dup))
        rep["duplicates"] = {"rows_dropped": int(dup.sum())}
    else:
        rep["duplicates"] = {"rows_dropped": 0, "disabled": True}

    if raw.kind == "array":
        for s, p in parts.items():
            if p is not None and p.x.dtype.kind == "f" and not np.isfinite(p.x).all():
                i = int(np.argmax(~np.isfinite(p.x.reshape(len(p), -1)).all(1)))
                raise DataError(f"{raw.row_label(s, int(p.rows[i]))}: image holds NaN or infinite values; "
                                "fix or remove the example")
        rep["missing"] = rep["outliers"] = {"applies": False, "reason": "image arrays"}
    else:
        _clean_table(raw, parts, stats, cfg, fit, rep)

    # ---- encode features
    if fit and raw.kind == "table":
        stats["numeric_columns"] = list(raw.num_names)
        stats["categories"] = {n: transforms.fit_categories(parts["train"].txt[n])
                               for n, k in raw.txt_kinds.items() if k == "category"}
        stats["text_columns"] = [n for n, k in raw.txt_kinds.items() if k == "text"]
        stats["hash_dim"] = cfg.hash_dim
    enc, rep["unseen_categories"] = {}, {}
    for s, p in parts.items():
        if p is None:
            continue
        enc[s], unseen = _encode(raw, p, stats, cfg)
        per_col = stats.pop("_unseen", {})
        if s != "train" and unseen:
            rep["unseen_categories"][s] = {k: v for k, v in per_col.items() if v}
    width = len(raw.num_names) if raw.kind == "table" else int(np.prod(enc["train"].shape[1:]))
    if fit:
        scope = cfg.normalize_scope if cfg.normalize_scope != "auto" else (
            "global" if raw.kind == "array" else "feature")
        stats["normalize"] = transforms.fit_normalizer(enc["train"].reshape(len(enc["train"]), -1)[:, :width],
                                                       cfg.normalize, scope)
        stats["normalize"]["width"] = width
        names = list(raw.num_names) + [f"{n}={v}" for n, cats in stats.get("categories", {}).items()
                                       for v in cats] + \
            [f"{n}#{k}" for n in stats.get("text_columns", []) for k in range(cfg.hash_dim)]
        stats["feature_names"] = names if raw.kind == "table" else []
        stats["feature_shape"] = list(enc["train"].shape[1:])
        # Images keep their shape here even when flattened for the model (reports plot them).
        stats["image_shape"] = list(raw.extra.get("image_shape") or
                                    (parts["train"].x.shape[1:] if raw.kind == "array" else [])) or None
    if list(enc["train"].shape[1:]) != list(stats["feature_shape"]):
        raise DataError(f"{raw.where}: examples have shape {list(enc['train'].shape[1:])} but the saved "
                        f"statistics expect {stats['feature_shape']}; the data does not match the run")

    # ---- targets
    if task == "regression":
        if fit:
            y = parts["train"].y
            mean, std = (float(y.mean()), float(y.std())) if cfg.standardize_target else (0.0, 1.0)
            stats["target"] = {"mean": mean, "scale": std if std > 0 else 1.0}
        tmean, tscale = stats["target"]["mean"], stats["target"]["scale"]

        def target(p: Part) -> np.ndarray:
            return ((p.y.astype(np.float64) - tmean) / tscale).astype(np.float32)
    else:
        tmean, tscale = 0.0, 1.0
        index = {cl: i for i, cl in enumerate(classes)} if parts["train"].y.dtype == object else None

        def target(p: Part) -> np.ndarray:
            if index is not None:
                return np.array([index[str(v)] for v in p.y], np.int32)
            return p.y.astype(np.int32)

    def make(s: str) -> Split | None:
        if parts[s] is None:
            return None
        return Split(transforms.apply_normalizer(enc[s], stats["normalize"], width), target(parts[s]))

    rep["rows_out"] = {s: len(p) for s, p in parts.items() if p is not None}
    rep["features"] = int(np.prod(stats["feature_shape"]))
    rep["task"] = task
    if "injected" in raw.extra:
        rep["injected_by_generator"] = raw.extra["injected"]
    ds = Dataset(task=task, num_classes=nc, feature_shape=tuple(stats["feature_shape"]),
                 train=None if keep_raw_train else make("train"), val=make("val"), test=make("test"),
                 name=raw.name, stats=stats, report=rep, target_mean=tmean, target_scale=tscale,
                 num_train=len(parts["train"]))
    if keep_raw_train:        # the tf.data backend normalizes on the fly from the encoded rows
        ds.raw_train = (enc["train"], target(parts["train"]), width)
    return ds


def _clean_table(raw: RawData, parts: dict[str, Part | None], stats: dict[str, Any], cfg: DataConfig,
                 fit: bool, rep: dict[str, Any]) -> None:
    c = cfg.clean
    names = raw.num_names
    train = parts["train"]
    # ---- missing values
    if fit:
        stats["fills"] = clean.fit_fills(train, names, c)
    counts, any_missing = clean.missing_counts(train, names)
    miss: dict[str, Any] = {"policy": c.missing, "per_column": counts, "rows_dropped": 0, "imputed": {}}
    if c.missing == "drop":
        train = train.take(np.flatnonzero(~any_missing))
        miss["rows_dropped"] = int(any_missing.sum())
    else:
        miss["imputed"]["train"] = int(sum(counts.values()))
    train = clean.impute(train, names, stats["fills"])
    for s in ("val", "test"):
        if parts[s] is not None:
            ecounts, _ = clean.missing_counts(parts[s], names)
            if ecounts:
                miss["imputed"][s] = int(sum(ecounts.values()))
                miss.setdefault("per_column_eval", {})[s] = ecounts
            parts[s] = clean.impute(parts[s], names, stats["fills"])
    rep["missing"] = miss
    # ---- log transform
    logs = stats.setdefault("log_columns", list(cfg.log_columns)) if fit else stats.get("log_columns", [])
    for s, p in [("train", train)] + [(s, parts[s]) for s in ("val", "test")]:
        if p is not None:
            p.num = transforms.apply_log(p.num, names, logs, raw.where, p.rows)
    # ---- outliers
    out: dict[str, Any] = {"method": c.outliers, "action": c.outlier_action}
    if fit:
        stats["outliers"] = {"method": c.outliers, "action": c.outlier_action,
                             "bounds": clean.fit_bounds(train.num, c) if c.outliers != "none" else None}
    ob = stats["outliers"]
    if ob["bounds"] is not None and names:
        m = clean.outlier_mask(train.num, ob["bounds"])
        out["per_column"] = {n: int(k) for n, k in zip(names, m.sum(0)) if k}
        if ob["action"] == "drop":
            keep = ~m.any(1)
            out["rows_dropped"] = int((~keep).sum())
            train = train.take(np.flatnonzero(keep))
        else:
            out["values_clipped"] = {"train": int(m.sum())}
            train.num = clean.clip(train.num, ob["bounds"])
        for s in ("val", "test"):
            p = parts[s]
            if p is not None:
                em = clean.outlier_mask(p.num, ob["bounds"])
                if ob["action"] == "clip":
                    out["values_clipped"][s] = int(em.sum())
                    p.num = clean.clip(p.num, ob["bounds"])
                else:
                    out.setdefault("kept_in_eval", {})[s] = int(em.sum())
    rep["outliers"] = out
    parts["train"] = train
