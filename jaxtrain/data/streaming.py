"""Streaming CSV through tf.data, for files that do not fit in memory.

Passes over the file (tf.data TextLineDataset -> parallel decode_csv -> chunks):
  0. count data lines (the seeded split needs n);
  1. parse; check labels; per train row a hash (exact duplicates), missing counts,
     sums for mean imputation, category counts;
  2. parse; impute, log, one-hot/hash; write encoded rows (float64) to a memory-mapped
     cache: train rows at their position in the same seeded split order the in-memory
     path uses, so both give the same examples in the same epoch order.
Outlier bounds and normalization statistics are then fitted in chunked passes over
the train cache; training batches come from the cache through the tf.data backend.
Rules that need every value at once (median / most_frequent imputation of numeric
columns, IQR outliers) are refused with a message naming the streaming alternative.
Val/test splits are kept in memory (set small fractions for very large files).
Limitations: one record per line (no newlines inside quoted fields); duplicates are
exact duplicate lines.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
import weakref
from typing import Any, Iterator

import numpy as np

from jaxtrain.data import pipeline_tf, transforms
from jaxtrain.data.csvfile import check_columns, infer_kinds, missing_mask, read_rows, to_float
from jaxtrain.data.dataset import Dataset, Split
from jaxtrain.data.options import DataConfig
from jaxtrain.data.preprocess import STATS_VERSION, split_indices
from jaxtrain.data.tfhelp import import_tf
from jaxtrain.errors import DataError

CHUNK = 65536
_NA = r"^\s*(?i:|na|nan|null|none|n/a)\s*$"


def _head(path: str, n: int = 5000) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Header and the first `n` rows, through the in-memory reader's checks."""
    tmp = tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f, tmp:
            for i, line in enumerate(f):
                if i > n:
                    break
                tmp.write(line)
        header, table, lines = read_rows(tmp.name)
    except DataError as e:
        raise DataError(str(e).replace(tmp.name, path)) from None
    finally:
        os.unlink(tmp.name)
    return header, table, lines


def _locate_error(path: str, header: list[str], kinds: dict[str, str], msg: str) -> DataError:
    """Find the bad line the fast parser tripped on, with the in-memory reader's checks."""
    numeric = [(header.index(n), n) for n, k in kinds.items() if k == "numeric"]
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        next(reader)
        for row in reader:
            if len(row) != len(header):
                return DataError(f"{path} line {reader.line_num}: {len(row)} fields, but the header has "
                                 f"{len(header)}; fix the row (one record per line in streaming mode)")
            for j, n in numeric:
                to_float(np.array([row[j]]), path, n, np.array([reader.line_num]))
    return DataError(f"{path}: cannot parse ({msg.splitlines()[0][:200]})")


def _chunks(path: str, header: list[str], kinds: dict[str, str], cfg: DataConfig
            ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """(first row index, {column: float64 values | bytes}) per chunk of data lines."""
    tf = import_tf()
    numeric = {n for n, k in kinds.items() if k == "numeric"}
    keep = [n for n in header if n in kinds or n == cfg.target]

    def decode(lines):
        cols = tf.io.decode_csv(lines, [""] * len(header))
        out = {}
        for n, c in zip(header, cols):
            if n in numeric:
                out[n] = tf.strings.to_number(tf.strings.regex_replace(c, _NA, "nan"), tf.float64)
            elif n in keep:
                out[n] = c
        return out

    parallel = tf.data.AUTOTUNE if cfg.num_parallel_calls == -1 else cfg.num_parallel_calls
    ds = (tf.data.TextLineDataset(path).skip(1).filter(lambda s: tf.strings.length(tf.strings.strip(s)) > 0)
          .batch(CHUNK).map(decode, num_parallel_calls=parallel, deterministic=True).prefetch(2))
    start = 0
    try:
        for chunk in ds.as_numpy_iterator():
            n = len(next(iter(chunk.values())))
            yield start, chunk
            start += n
    except tf.errors.InvalidArgumentError as e:
        raise _locate_error(path, header, kinds, str(e)) from None


def _target(chunk: dict[str, np.ndarray], cfg: DataConfig, path: str, start: int) -> np.ndarray:
    col = chunk[cfg.target]
    if col.dtype == np.float64:
        return col
    s = col.astype(str)
    return to_float(s, path, cfg.target, np.arange(start, start + len(s)) + 2)


def load_streaming(cfg: DataConfig, stats: dict[str, Any] | None = None) -> Dataset:
    path = str(cfg.path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: CSV file not found; set data.path to an existing file")
    header, head, _ = _head(path)
    check_columns(header, cfg, path)
    kinds = infer_kinds(header, head, cfg, path)
    kinds[cfg.target] = "target"
    c, fit = cfg.clean, stats is None
    num_names = [n for n in header if kinds.get(n) == "numeric"]
    cat_names = [n for n in header if kinds.get(n) == "category"]
    txt_names = [n for n in header if kinds.get(n) == "text"]
    if c.outliers == "iqr":
        raise DataError(f"{path}: IQR outliers need every value at once; in streaming mode use "
                        "data.clean.outliers=zscore, or the in-memory backend")

    # ---- pass 0: count rows, seeded split as in memory
    n = sum(len(ch[cfg.target]) for _, ch in _chunks(path, header, {}, cfg))
    tr, va, te = split_indices(n, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    which = np.zeros(n, np.int8)
    which[va], which[te] = 1, 2
    pos = np.empty(n, np.int64)
    for idx in (tr, va, te):
        pos[idx] = np.arange(len(idx))

    # ---- pass 1: labels, duplicates, missing, sums, categories
    task = stats["task"] if not fit else ("regression" if cfg.task != "classification" else "classification")
    nc = cfg.num_classes if fit else stats["num_classes"]
    hashes = np.zeros(len(tr), np.int64)
    any_missing = np.zeros(len(tr), bool)
    bad_label = np.zeros(len(tr), bool)
    k = len(num_names)
    s1, cnt, miss = np.zeros(k), np.zeros(k), np.zeros(k, np.int64)
    cat_counts: dict[str, dict[str, int]] = {m: {} for m in cat_names + txt_names}
    text_missing = {m: 0 for m in cat_names + txt_names}
    for start, ch in _chunks(path, header, kinds, cfg):
        rows = np.arange(start, start + len(ch[cfg.target]))
        y = _target(ch, cfg, path, start)
        bad = ~np.isfinite(y)
        if task == "classification":
            bad |= (y != np.round(y)) | (y < 0) | (y >= (nc or np.inf))
        evalbad = bad & (which[rows] != 0)
        if evalbad.any() or (bad.any() and c.invalid_labels == "error"):
            i = int(np.argmax(evalbad if evalbad.any() else bad))
            raise DataError(f"{path} line {rows[i] + 2} column '{cfg.target}': invalid label {y[i]:g}; fix the "
                            "data" + ("" if evalbad.any() else " or set data.clean.invalid_labels=drop"))
        t = which[rows] == 0
        tp = pos[rows[t]]
        bad_label[tp] = bad[t]
        num = np.stack([ch[m] for m in num_names], 1) if k else np.zeros((len(rows), 0))
        m = np.isnan(num)
        key = np.ascontiguousarray(np.concatenate([num, y[:, None]], 1))
        h = [hash(r.tobytes()) for r in key[t]]
        for name in cat_names + txt_names:
            col = ch[name]
            mm = missing_mask(col)
            m = np.concatenate([m, mm[:, None]], 1)
            h = [hash((a, b)) for a, b in zip(h, col[t])]
            if fit:
                u, cn = np.unique(col[t][~mm[t]], return_counts=True)
                for v, q in zip(u, cn):
                    cat_counts[name][v.decode()] = cat_counts[name].get(v.decode(), 0) + int(q)
                text_missing[name] += int(mm[t].sum())
        hashes[tp] = np.array(h, np.int64)
        any_missing[tp] = m[t].any(1)
        mt = np.isnan(num[t])
        miss += mt.sum(0)
        s1 += np.where(mt, 0, num[t]).sum(0)
        cnt += (~mt).sum(0)
    rep: dict[str, Any] = {"source": "csv", "name": os.path.basename(path), "where": path, "streaming": True,
                           "rows_in": {"train": len(tr), "val": len(va), "test": len(te)}}
    keep = ~bad_label
    rep["invalid_labels"] = {"policy": c.invalid_labels, "rows_dropped": int(bad_label.sum())}
    dup = np.zeros(len(tr), bool)
    if c.duplicates:
        _, first = np.unique(hashes[keep], return_index=True)
        kept = np.flatnonzero(keep)
        dup[kept] = True
        dup[kept[first]] = False
    keep &= ~dup
    rep["duplicates"] = {"rows_dropped": int(dup.sum())}
    per_col = {n_: int(q) for n_, q in zip(num_names, miss) if q} | {n_: q for n_, q in text_missing.items() if q}
    rep["missing"] = {"policy": c.missing, "per_column": per_col, "rows_dropped": 0, "imputed": {}}
    if c.missing == "drop":
        rep["missing"]["rows_dropped"] = int((keep & any_missing).sum())
        keep &= ~any_missing
    if fit:
        if c.missing in ("median", "most_frequent") and miss.any():
            raise DataError(f"{path}: missing values in numeric columns and data.clean.missing={c.missing}, "
                            "which needs every value at once; in streaming mode use mean, constant or drop")
        fills = {m_: c.fill_value for m_ in num_names}     # means: fitted on the cache below
        for name, counts in cat_counts.items():
            fills[name] = c.fill_text if c.missing == "constant" else min(counts, key=lambda v: (-counts[v], v))
        stats = {"version": STATS_VERSION, "task": task, "num_classes": nc, "classes": None,
                 "fills": fills, "log_columns": list(cfg.log_columns), "numeric_columns": num_names,
                 "categories": {m_: sorted(cat_counts[m_]) for m_ in cat_names}, "text_columns": txt_names,
                 "hash_dim": cfg.hash_dim}

    # ---- pass 2: encode into caches
    width = k
    feat = k + sum(len(v) for v in stats["categories"].values()) + len(txt_names) * stats["hash_dim"]
    final = np.cumsum(keep) - 1                     # position among kept train rows
    cache_dir = tempfile.mkdtemp(prefix="jaxtrain-stream-", dir=cfg.cache_dir)
    n_train = int(keep.sum())
    xtr = np.lib.format.open_memmap(os.path.join(cache_dir, "train_x.npy"), "w+", np.float64, (max(n_train, 1), feat))
    ytr = np.zeros(n_train, np.float64)
    ev = {1: (np.zeros((len(va), feat)), np.zeros(len(va))), 2: (np.zeros((len(te), feat)), np.zeros(len(te)))}
    unseen: dict[int, dict[str, int]] = {1: {}, 2: {}}
    imputed = {0: 0, 1: 0, 2: 0}
    for start, ch in _chunks(path, header, kinds, cfg):
        rows = np.arange(start, start + len(ch[cfg.target]))
        y = _target(ch, cfg, path, start)
        num = np.stack([ch[m_] for m_ in num_names], 1) if k else np.zeros((len(rows), 0))
        nanm = np.isnan(num)          # numeric columns are imputed and logged in the cache, below
        blocks = [num]
        for m_, cats in stats["categories"].items():
            col = np.char.strip(ch[m_].astype(str)).astype(object)
            col[missing_mask(ch[m_])] = stats["fills"][m_]
            oh, _ = transforms.one_hot(col, cats)
            blocks.append(oh)
            for s_ in (1, 2):
                u = int((oh[which[rows] == s_].sum(1) == 0).sum())
                if u:
                    unseen[s_][m_] = unseen[s_].get(m_, 0) + u
        for m_ in txt_names:
            col = ch[m_].astype(str).astype(object)
            col[missing_mask(ch[m_])] = stats["fills"][m_]
            blocks.append(transforms.hash_text(col, stats["hash_dim"]))
        x = np.concatenate(blocks, 1)
        w = which[rows]
        for s_ in (0, 1, 2):
            imputed[s_] += int(nanm[w == s_].sum()) + sum(int(missing_mask(ch[m_])[w == s_].sum())
                                                          for m_ in cat_names + txt_names)
        t = np.flatnonzero(w == 0)
        t = t[keep[pos[rows[t]]]]
        dst = final[pos[rows[t]]]
        order = np.argsort(dst)
        xtr[dst[order]] = x[t[order]]
        ytr[dst] = y[t]
        for s_ in (1, 2):
            e = np.flatnonzero(w == s_)
            ev[s_][0][pos[rows[e]]] = x[e]
            ev[s_][1][pos[rows[e]]] = y[e]
    # ---- numeric imputation (mean fitted on the kept train rows) and log, over the caches
    if fit and c.missing != "constant":
        tot, num_ok = np.zeros(k), np.zeros(k)
        for i in range(0, n_train, 1 << 16):
            blk = xtr[i:i + (1 << 16), :k]
            ok = ~np.isnan(blk)
            tot += np.where(ok, blk, 0).sum(0)
            num_ok += ok.sum(0)
        for j, m_ in enumerate(num_names):
            stats["fills"][m_] = float(tot[j] / num_ok[j]) if num_ok[j] else c.fill_value
    fillv = np.array([stats["fills"][m_] for m_ in num_names])

    def impute_log(blk):
        blk = np.where(np.isnan(blk), fillv, blk)
        return transforms.apply_log(blk, num_names, stats["log_columns"], path)
    for i in range(0, n_train, 1 << 16):
        xtr[i:i + (1 << 16), :k] = impute_log(xtr[i:i + (1 << 16), :k])
    for s_ in (1, 2):
        ev[s_][0][:, :k] = impute_log(ev[s_][0][:, :k])
    rep["missing"]["imputed"] = {s: imputed[i] for i, s in ((0, "train"), (1, "val"), (2, "test")) if imputed[i]}
    rep["unseen_categories"] = {s: unseen[i] for i, s in ((1, "val"), (2, "test")) if unseen[i]}

    # ---- outliers and normalization, fitted in chunked passes over the train cache
    def chunks_of(a):
        for i in range(0, n_train, 1 << 16):
            yield a[i:i + (1 << 16), :width]

    out = {"method": c.outliers, "action": c.outlier_action}
    if fit:
        bounds = None
        if c.outliers == "zscore":
            mu, sd = _moments(chunks_of(xtr), width)
            bounds = np.stack([mu - c.zscore_threshold * sd, mu + c.zscore_threshold * sd], 1).tolist()
        stats["outliers"] = {"method": c.outliers, "action": c.outlier_action, "bounds": bounds}
    if stats["outliers"]["bounds"] is not None:
        if stats["outliers"]["action"] == "drop":
            raise DataError(f"{path}: outlier_action=drop is not available in streaming mode; use clip")
        b = np.asarray(stats["outliers"]["bounds"])
        clipped = np.zeros(width, np.int64)
        for i in range(0, n_train, 1 << 16):
            blk = xtr[i:i + (1 << 16), :width]
            clipped += ((blk < b[:, 0]) | (blk > b[:, 1])).sum(0)
            xtr[i:i + (1 << 16), :width] = np.clip(blk, b[:, 0], b[:, 1])
        out["per_column"] = {m_: int(q) for m_, q in zip(num_names, clipped) if q}
        out["values_clipped"] = {"train": int(clipped.sum())}
        for s_, name in ((1, "val"), (2, "test")):
            ex = ev[s_][0]
            out["values_clipped"][name] = int(((ex[:, :width] < b[:, 0]) | (ex[:, :width] > b[:, 1])).sum())
            ex[:, :width] = np.clip(ex[:, :width], b[:, 0], b[:, 1])
    rep["outliers"] = out
    if fit:
        stats["normalize"] = _fit_norm_streaming(chunks_of(xtr), width, cfg)
        stats["feature_names"] = num_names + [f"{m_}={v}" for m_, cs in stats["categories"].items() for v in cs] + \
            [f"{m_}#{q}" for m_ in txt_names for q in range(stats["hash_dim"])]
        stats["feature_shape"] = [feat]
        if task == "regression":
            mean, std = (float(ytr.mean()), float(ytr.std())) if cfg.standardize_target else (0.0, 1.0)
            stats["target"] = {"mean": mean, "scale": std if std > 0 else 1.0}
    xtr.flush()
    tmean, tscale = (stats["target"]["mean"], stats["target"]["scale"]) if task == "regression" else (0.0, 1.0)

    def target(y):
        return ((y - tmean) / tscale).astype(np.float32) if task == "regression" else y.astype(np.int32)

    def split(s_):
        x, y = ev[s_]
        return Split(transforms.apply_normalizer(x, stats["normalize"], width), target(y))

    rep["rows_out"] = {"train": n_train, "val": len(va), "test": len(te)}
    rep["features"], rep["task"], rep["cache_dir"] = feat, task, cache_dir
    ds = Dataset(task=task, num_classes=nc, feature_shape=(feat,), train=None,
                 val=split(1) if len(va) else None, test=split(2), name=rep["name"], stats=stats, report=rep,
                 target_mean=tmean, target_scale=tscale, num_train=n_train, streaming=True)
    ds.raw_train = (xtr[:n_train], target(ytr), width)
    weakref.finalize(ds, shutil.rmtree, cache_dir, True)     # the cache lives as long as the dataset
    return pipeline_tf.attach(ds, cfg)


def _moments(chunks, width: int, glob: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std in one pass, merging chunk moments (Chan et al.), stable like NumPy's two-pass."""
    n, mean, m2 = 0, np.zeros(1 if glob else width), np.zeros(1 if glob else width)
    for blk in chunks:
        blk = blk.reshape(-1, 1) if glob else blk
        nb = len(blk)
        if nb == 0:
            continue
        mb = blk.mean(0)
        m2b = ((blk - mb) ** 2).sum(0)
        tot = n + nb
        delta = mb - mean
        mean = mean + delta * nb / tot
        m2 = m2 + m2b + delta ** 2 * n * nb / tot
        n = tot
    return mean, np.sqrt(m2 / max(n, 1))


def _fit_norm_streaming(chunks, width: int, cfg: DataConfig) -> dict[str, Any]:
    scope = "global" if cfg.normalize_scope == "global" else "feature"
    if cfg.normalize == "none" or width == 0:
        return {"kind": "none", "scope": scope, "shift": [], "scale": [], "width": width}
    if cfg.normalize == "zscore":
        shift, span = _moments(chunks, width, scope == "global")
    else:
        lo, hi = np.full(width, np.inf), np.full(width, -np.inf)
        for blk in chunks:
            lo, hi = np.minimum(lo, blk.min(0, initial=np.inf)), np.maximum(hi, blk.max(0, initial=-np.inf))
        if scope == "global":
            lo, hi = lo.min(keepdims=True), hi.max(keepdims=True)
        shift, span = (lo, hi - lo) if cfg.normalize == "minmax" else ((lo + hi) / 2, (hi - lo) / 2)
    scale = np.where(span > 0, span, 1.0)
    return {"kind": cfg.normalize, "scope": scope, "shift": shift.tolist(), "scale": scale.tolist(),
            "width": width}
