"""Streaming CSV through tf.data, for files that do not fit in memory.

Passes over the file (tf.data: TextLineDataset -> batches of lines -> parallel decode_csv;
numeric columns parse straight to float64, and a chunk holding missing-value words
such as NA falls back to a string decode for the rest of the file):
  0. count data lines (the seeded split needs n);
  1. labels (then the task and the label checks, by the in-memory rules); per train row
     a 64-bit hash (exact duplicates), missing counts, category counts;
  2. encode (one-hot/hash) and append the kept train rows, in file order, to a float64
     cache file; val/test rows stay in memory (set small fractions for huge files).
Then block passes over the cache fit mean imputation, z-score outlier bounds and the
normalization statistics, and a last pass writes normalized float32 rows (computed in
float64 exactly as the NumPy backend does) to the file an epoch gathers from, through
the tf.data backend in the same `epoch_permutation` order as in memory. What lives in
memory per row is small: a split tag, a position, a label, a hash, a few flags.
Rules that need every value at once (median / most_frequent imputation of numeric
columns, IQR outliers, dropping outlier rows) are refused with a message naming the
streaming alternative; with missing=drop, evaluation rows are imputed with the mean
(the in-memory path uses the median). Limitations: one record per line (no newlines
inside quoted fields); numeric labels only (text class names need the in-memory backend).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from typing import Any, Iterator

import numpy as np

from jaxtrain.data import clean, csvstream, pipeline_tf, rowcache, transforms
from jaxtrain.data.csvfile import _parseable, check_columns, infer_kinds, missing_mask
from jaxtrain.data.dataset import Dataset, Split
from jaxtrain.config.data import DataConfig
from jaxtrain.data.preprocess import STATS_VERSION, split_indices, task_for_labels
from jaxtrain.data.raw import Part, RawData
from jaxtrain.util.errors import DataError

def _stripped(col: np.ndarray) -> np.ndarray:
    """Text values as the in-memory reader keeps them: stripped, one marker for missing."""
    out = np.char.strip(col).astype(object)
    out[missing_mask(col)] = None
    return out


class _CacheDir:
    """A temp directory for the row cache, deleted when this object is garbage (or at exit)."""

    def __init__(self, parent: str | None):
        self.path = tempfile.mkdtemp(prefix="jaxtrain-stream-", dir=parent)
        self._remove = weakref.finalize(self, shutil.rmtree, self.path, True)

    def hand_over(self, owner: object) -> None:
        """Delete the directory with `owner` instead."""
        self._remove.detach()
        weakref.finalize(owner, shutil.rmtree, self.path, True)


def load_streaming(cfg: DataConfig, stats: dict[str, Any] | None = None) -> Dataset:
    path = str(cfg.path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: CSV file not found; set data.path to an existing file")
    header, head, _ = csvstream.head(path)
    check_columns(header, cfg, path)
    kinds = infer_kinds(header, head, cfg)
    c, fit = cfg.clean, stats is None
    num_names = [n for n in header if kinds.get(n) == "numeric"]
    cat_names = [n for n in header if kinds.get(n) == "category"]
    txt_names = [n for n in header if kinds.get(n) == "text"]
    text_cols = cat_names + txt_names
    if c.outliers == "iqr":
        raise DataError(f"{path}: IQR outliers need every value at once; in streaming mode use "
                        "data.clean.outliers=zscore, or the in-memory backend")
    ob = stats["outliers"] if not fit else {"method": c.outliers, "action": c.outlier_action}
    if ob["method"] != "none" and ob["action"] == "drop":
        raise DataError(f"{path}: data.clean.outlier_action=drop is not available in streaming mode; use clip")
    ycol = head[:, header.index(cfg.target)]
    ylabels = ycol[~missing_mask(ycol)]
    # Mostly numbers: a numeric target (a stray word is an error naming its line). Mostly words:
    # class names, which would need a vocabulary fitted over the whole file first.
    if _parseable(ylabels) <= 0.5 and len(ylabels):
        word = next(v.strip() for v in ylabels if _parseable([v]) == 0.0)
        raise DataError(f"{path} column '{cfg.target}': text labels such as '{word}' are not supported "
                        "in streaming mode; encode the classes as integers 0..k-1, or set data.streaming=false")
    numeric = set(num_names) | ({cfg.target} if len(ylabels) else set())
    keep_cols = set(text_cols) | {cfg.target}

    def chunks():
        return csvstream.chunks(path, header, numeric, keep_cols, cfg)

    # ---- pass 0: count rows, seeded split as in memory
    n = csvstream.count_rows(path)
    tr, va, te = split_indices(n, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    n_tr, n_va, n_te = len(tr), len(va), len(te)
    which = np.zeros(n, np.int8)
    which[va], which[te] = 1, 2
    pos = np.empty(n, np.int32)                     # position within its split, in split order
    for idx in (tr, va, te):
        pos[idx] = np.arange(len(idx), dtype=np.int32)

    # ---- pass 1: labels, duplicates, missing, categories
    labels = np.empty(n, np.float64)    # the task and the label checks need them all (after the pass)
    hashes = np.zeros(n_tr, np.uint64)
    any_missing = np.zeros(n_tr, bool)
    k = len(num_names)
    miss, present = np.zeros(k, np.int64), np.zeros(k, np.int64)
    # Text values of train rows as codes into a vocabulary (-1: missing): the fills and
    # categories are fitted on the rows that survive cleaning, known only after this pass.
    vocab: dict[str, dict[str, int]] = {m: {} for m in text_cols}
    codes = {m: np.full(n_tr, -1, np.int32) for m in text_cols}
    seen = 0
    for start, ch in chunks():
        rows = np.arange(start, start + len(ch[cfg.target]))
        if rows[-1:] >= n:
            raise csvstream.miscounted(path, n, start + len(rows))
        y = csvstream.target(ch, cfg, path, start)
        labels[rows] = y
        t = which[rows] == 0
        tp = pos[rows[t]]
        num = np.stack([ch[m] for m in num_names], 1)[t] if k else np.zeros((int(t.sum()), 0))
        texts = {m: _stripped(ch[m][t]) for m in text_cols}
        hashes[tp] = rowcache.row_hashes(num, y[t], list(texts.values()))
        nan = np.isnan(num)
        rowmiss = nan.any(1)
        miss += nan.sum(0)
        present += (~nan).sum(0)
        for m, col in texts.items():
            mm = col == None  # noqa: E711  (elementwise on an object array)
            rowmiss |= mm
            u, inv = np.unique(col[~mm].astype(str), return_inverse=True)
            ids = np.array([vocab[m].setdefault(v, len(vocab[m])) for v in u], np.int32)
            cm = np.full(len(col), -1, np.int32)
            cm[~mm] = ids[inv]
            codes[m][tp] = cm
        any_missing[tp] = rowmiss
        seen = start + len(rows)
    if seen != n:
        raise csvstream.miscounted(path, n, seen)
    # Task and label checks exactly as in memory: same rule, same messages, train split first.
    if fit:
        task, nc = task_for_labels(None if cfg.task == "auto" else cfg.task, cfg.num_classes, labels[tr])
    else:
        task, nc = stats["task"], stats["num_classes"]
    lines = RawData("table", {}, where=path, target=cfg.target, extra={"row_kind": "line"})
    bad_label = clean.invalid_labels(lines, "train", Part(labels[tr], tr + 2), task, nc, None, c.invalid_labels)
    for s_, idx in (("val", va), ("test", te)):
        clean.invalid_labels(lines, s_, Part(labels[idx], idx + 2), task, nc, None, "error")
    del labels, tr, va, te
    for m_, q in list(zip(num_names, present)) + [(m_, len(vocab[m_])) for m_ in text_cols]:
        if fit and q == 0:
            raise DataError(f"{path} column '{m_}': every value in the training split is missing; "
                            "drop it with data.drop_columns or fill it in")
    rep: dict[str, Any] = {"source": "csv", "name": os.path.basename(path), "where": path, "streaming": True,
                           "rows_in": {"train": n_tr, "val": n_va, "test": n_te}}
    keep = ~bad_label
    rep["invalid_labels"] = {"policy": c.invalid_labels, "rows_dropped": int(bad_label.sum())}
    dup = np.zeros(n_tr, bool)
    if c.duplicates:
        kept = np.flatnonzero(keep)
        _, first = np.unique(hashes[kept], return_index=True)   # first occurrence, in train order
        dup[kept] = True
        dup[kept[first]] = False
        del kept, first
    del hashes
    keep &= ~dup
    rep["duplicates"] = {"rows_dropped": int(dup.sum())}
    cleaned = keep.copy()          # rows the missing-value rule sees (counted per column in pass 2)
    rep["missing"] = {"policy": c.missing, "per_column": {}, "rows_dropped": 0, "imputed": {}}
    if c.missing == "drop":
        rep["missing"]["rows_dropped"] = int((keep & any_missing).sum())
        keep &= ~any_missing
    del any_missing, bad_label, dup
    if fit:
        if c.missing in ("median", "most_frequent") and miss.any():
            raise DataError(f"{path}: missing values in numeric columns and data.clean.missing={c.missing}, "
                            "which needs every value at once; in streaming mode use mean, constant or drop")
        fills: dict[str, Any] = {m_: c.fill_value for m_ in num_names}   # means: fitted on the cache below
        categories = {}
        for m_ in text_cols:               # as in memory: most frequent (ties: smallest) after cleaning
            names = np.array(sorted(vocab[m_], key=vocab[m_].get), dtype=object)
            fitted = codes[m_][cleaned]
            counts = np.bincount(fitted[fitted >= 0], minlength=len(names))
            fills[m_] = c.fill_text if c.missing == "constant" else \
                min(names[counts > 0], key=lambda v, ids=vocab[m_]: (-counts[ids[v]], v))
            final_codes = codes[m_][keep]
            cats = set(names[np.bincount(final_codes[final_codes >= 0], minlength=len(names)) > 0])
            categories[m_] = sorted(cats | ({fills[m_]} if (final_codes < 0).any() else set()))
        stats = {"version": STATS_VERSION, "task": task, "num_classes": nc, "classes": None,
                 "fills": fills, "log_columns": list(cfg.log_columns), "numeric_columns": num_names,
                 "categories": {m_: categories[m_] for m_ in cat_names}, "text_columns": txt_names,
                 "hash_dim": cfg.hash_dim}
    del codes, vocab
    n_train = int(keep.sum())
    if n_train == 0:
        raise DataError(f"{path}: no training rows left after cleaning; see the cleaning rules in data.clean")

    # ---- pass 2: encode; kept train rows appended in file order, val/test in memory
    feat = k + sum(len(v) for v in stats["categories"].values()) + len(txt_names) * stats["hash_dim"]
    final = np.cumsum(keep, dtype=np.int32) - 1     # position among kept train rows (the in-memory order)
    cache = _CacheDir(cfg.cache_dir)     # removed if an error below leaves it behind
    cache_dir = cache.path
    enc_path, rows_path = os.path.join(cache_dir, "encoded.f64"), os.path.join(cache_dir, "train.f32")
    file_rank_pos = np.empty(n_train, np.int32)     # file-order row r of the cache -> training position
    ytr = np.zeros(n_train, np.float64)
    ev = {1: (np.zeros((n_va, feat)), np.zeros(n_va)), 2: (np.zeros((n_te, feat)), np.zeros(n_te))}
    unseen: dict[int, dict[str, int]] = {1: {}, 2: {}}
    imputed = {0: 0, 1: 0, 2: 0}
    written = 0
    missing_per_col = np.zeros(k + len(text_cols), np.int64)
    with open(enc_path, "wb") as enc:
        for start, ch in chunks():
            rows = np.arange(start, start + len(ch[cfg.target]))
            y = csvstream.target(ch, cfg, path, start)
            w = which[rows]
            num = np.stack([ch[m_] for m_ in num_names], 1) if k else np.zeros((len(rows), 0))
            blocks = [num]                  # numeric columns: imputed and logged in the block passes
            missing = {m_: missing_mask(ch[m_]) for m_ in text_cols}
            for m_, cats in stats["categories"].items():
                col = np.char.strip(ch[m_].astype(str)).astype(object)
                col[missing[m_]] = stats["fills"][m_]
                oh, _ = transforms.one_hot(col, cats)
                blocks.append(oh)
                for s_ in (1, 2):
                    u = int((oh[w == s_].sum(1) == 0).sum())
                    if u:
                        unseen[s_][m_] = unseen[s_].get(m_, 0) + u
            for m_ in txt_names:
                col = ch[m_].astype(str).astype(object)
                col[missing[m_]] = stats["fills"][m_]
                blocks.append(transforms.hash_text(col, stats["hash_dim"]))
            x = np.concatenate(blocks, 1) if len(blocks) > 1 else num
            nanm = np.concatenate([np.isnan(num)] + [mm[:, None] for mm in missing.values()], 1)
            t = np.flatnonzero(w == 0)
            missing_per_col += nanm[t[cleaned[pos[rows[t]]]]].sum(0)
            imputed[0] += int(nanm[t[keep[pos[rows[t]]]]].sum())
            for s_ in (1, 2):
                imputed[s_] += int(nanm[w == s_].sum())
            t = t[keep[pos[rows[t]]]]
            dst = final[pos[rows[t]]]
            enc.write(np.ascontiguousarray(x[t], np.float64).tobytes())
            file_rank_pos[written:written + len(t)] = dst
            written += len(t)
            ytr[dst] = y[t]
            for s_ in (1, 2):
                e = np.flatnonzero(w == s_)
                ev[s_][0][pos[rows[e]]] = x[e]
                ev[s_][1][pos[rows[e]]] = y[e]
    del which, pos, final, keep, cleaned
    rep["missing"]["per_column"] = {m_: int(q) for m_, q in zip(num_names + text_cols, missing_per_col) if q}
    rep["missing"]["imputed"] = {s: imputed[i] for i, s in ((0, "train"), (1, "val"), (2, "test")) if imputed[i]}
    rep["unseen_categories"] = {s: unseen[i] for i, s in ((1, "val"), (2, "test")) if unseen[i]}

    # ---- block passes over the cache: mean fills, outlier bounds, normalization, final rows
    def encoded() -> Iterator[np.ndarray]:
        return rowcache.read_blocks(enc_path, n_train, feat)

    if fit and c.missing != "constant":
        tot, num_ok = np.zeros(k), np.zeros(k)
        for blk in encoded():
            ok = ~np.isnan(blk[:, :k])
            tot += np.where(ok, blk[:, :k], 0).sum(0)
            num_ok += ok.sum(0)
        for j, m_ in enumerate(num_names):
            stats["fills"][m_] = float(tot[j] / num_ok[j])
    fillv = np.array([stats["fills"][m_] for m_ in num_names])

    def impute_log(num: np.ndarray) -> np.ndarray:
        num = np.where(np.isnan(num), fillv, num)
        return transforms.apply_log(num, num_names, stats["log_columns"], path)

    out: dict[str, Any] = {"method": ob["method"], "action": ob["action"]}
    if fit:
        bounds = None
        if c.outliers == "zscore":
            mu, sd = rowcache.moments((impute_log(b[:, :k]) for b in encoded()), k)
            bounds = np.stack([mu - c.zscore_threshold * sd, mu + c.zscore_threshold * sd], 1).tolist()
        stats["outliers"] = {"method": c.outliers, "action": c.outlier_action, "bounds": bounds}
    b = None if stats["outliers"]["bounds"] is None else np.asarray(stats["outliers"]["bounds"])
    clipped = np.zeros(k, np.int64)

    def finish(num: np.ndarray, count: np.ndarray | None = None) -> np.ndarray:
        """Numeric block: impute, log, clip to the outlier bounds (counting clipped values)."""
        num = impute_log(num)
        if b is None:
            return num
        if count is not None:
            count += ((num < b[:, 0]) | (num > b[:, 1])).sum(0)
        return np.clip(num, b[:, 0], b[:, 1])

    if fit:
        stats["normalize"] = rowcache.fit_normalizer((finish(blk[:, :k], clipped) for blk in encoded()), k,
                                                     cfg.normalize, cfg.normalize_scope)
        stats["feature_names"] = num_names + [f"{m_}={v}" for m_, cs in stats["categories"].items() for v in cs] + \
            [f"{m_}#{q}" for m_ in txt_names for q in range(stats["hash_dim"])]
        stats["feature_shape"] = [feat]
        if task == "regression":
            mean, std = (float(ytr.mean()), float(ytr.std())) if cfg.standardize_target else (0.0, 1.0)
            stats["target"] = {"mean": mean, "scale": std if std > 0 else 1.0}
    if feat != stats["feature_shape"][0]:
        raise DataError(f"{path}: rows encode to {feat} features but the saved statistics expect "
                        f"{stats['feature_shape'][0]}; the data does not match the run")
    count_now = clipped if not fit else None          # a fit already counted while fitting
    with open(rows_path, "wb") as f:                  # normalized in float64, stored float32: as NumPy does
        for blk in encoded():
            blk[:, :k] = finish(blk[:, :k], count_now)
            f.write(transforms.apply_normalizer(blk, stats["normalize"], k).tobytes())
    rowcache.remove(enc_path)
    if b is not None:
        out["per_column"] = {m_: int(q) for m_, q in zip(num_names, clipped) if q}
        out["values_clipped"] = {"train": int(clipped.sum())}
    for s_, name in ((1, "val"), (2, "test")):
        ex = ev[s_][0]
        cnt = np.zeros(k, np.int64)
        ex[:, :k] = finish(ex[:, :k], cnt)
        if b is not None:
            out["values_clipped"][name] = int(cnt.sum())
    rep["outliers"] = out
    tmean, tscale = (stats["target"]["mean"], stats["target"]["scale"]) if task == "regression" else (0.0, 1.0)

    def target(y: np.ndarray) -> np.ndarray:
        return ((y - tmean) / tscale).astype(np.float32) if task == "regression" else y.astype(np.int32)

    def split(s_: int) -> Split:
        x, y = ev[s_]
        return Split(transforms.apply_normalizer(x, stats["normalize"], k), target(y))

    rep["rows_out"] = {"train": n_train, "val": n_va, "test": n_te}
    rep["features"], rep["task"], rep["cache_dir"] = feat, task, cache_dir
    ds = Dataset(task=task, num_classes=nc, feature_shape=(feat,), train=None,
                 val=split(1) if n_va else None, test=split(2), name=rep["name"], stats=stats, report=rep,
                 target_mean=tmean, target_scale=tscale, num_train=n_train, streaming=True)
    # The cache holds rows in file order; training position p is cache row row_of[p].
    row_of = np.empty(n_train, np.int32)
    row_of[file_rank_pos] = np.arange(n_train, dtype=np.int32)
    del file_rank_pos
    rows = rowcache.MappedRows(rows_path, n_train, feat)
    ytrain = target(ytr)
    del ytr

    def gather(i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return rows.take(row_of[i]), ytrain[i]

    cache.hand_over(ds)                   # the cache files live as long as the dataset
    return pipeline_tf.attach_rows(ds, cfg, gather, (np.float32, ytrain.dtype))
