"""Cleaning rules: duplicates, missing values, outliers, invalid labels.

Each rule is a fit (on the training split) and an apply, and returns counts for the
report. Rows are dropped only from the training split; evaluation splits are
transformed (imputed, clipped) and every change is counted.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jaxtrain.config.data import CleanConfig
from jaxtrain.data.raw import Part, RawData
from jaxtrain.util.errors import DataError

# ---------------------------------------------------------------- duplicates

UNSEEN_EXAMPLES = 5       # invalid labels one message names
# difflib's ratio under which a known label is no "closest" suggestion ('9' for 'cat' is noise).
CLOSE_ENOUGH = 0.6
_KEYS = np.random.default_rng(20261129).integers(1, 2**63, 4096, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


def is_missing(col: pa.Array | np.ndarray) -> np.ndarray:
    """True where a text column (Arrow: null) or text labels (object array: None) are missing."""
    if isinstance(col, np.ndarray):
        return np.equal(col, None)
    return col.is_null().to_numpy(zero_copy_only=False)


def _codes(col: pa.Array | np.ndarray) -> np.ndarray:
    """A text column as integer codes (equal strings, equal codes; missing: -1)."""
    if isinstance(col, np.ndarray):
        col = pa.array(col, pa.string())
    return pc.fill_null(col.dictionary_encode().indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)


def row_words(part: Part) -> list[np.ndarray]:
    """Each row as 64-bit words (features and label), in blocks side by side: equal rows, equal
    words (NaN bytes compare equal, so two missing values are the same). A table's numeric
    block is a view of its numbers, not a copy."""
    n = len(part)
    if part.x is not None:
        raw = np.ascontiguousarray(part.x.reshape(n, -1)).view(np.uint8).reshape(n, -1)
        pad = (-raw.shape[1]) % 8
        blocks = [(np.pad(raw, ((0, 0), (0, pad))) if pad else raw).view(np.uint64)]
    else:
        blocks = [np.ascontiguousarray(part.num, np.float64).view(np.uint64)]
    extra = [_codes(c).view(np.uint64) for c in part.txt.values()]
    extra.append((_codes(part.y) if part.y.dtype == object else part.y.astype(np.float64)).view(np.uint64))
    return blocks + [np.stack(extra, 1)]


def hash_words(words: np.ndarray, first_key: int = 0) -> np.ndarray:
    """A 64-bit multilinear hash of each row of uint64 words (wrapping arithmetic: an integer
    matrix-vector product, no temporaries); word j takes key `first_key + j` (blocks of one
    row hash to the sum of their hashes)."""
    keys = np.resize(np.roll(_KEYS, -first_key), words.shape[1])
    return words @ keys


def first_occurrences(h: np.ndarray) -> np.ndarray:
    """For each row, the index of the first row with the same hash."""
    _, first, group = np.unique(h, return_index=True, return_inverse=True)
    return first[group]


def duplicate_mask(part: Part) -> np.ndarray:
    """True for every row that repeats an earlier row exactly (features and label).

    Vectorized: a hash of each row's words groups candidates, and each candidate is
    compared word for word with the first row of its group."""
    if len(part) == 0:
        return np.zeros(0, bool)
    blocks = row_words(part)
    h, offset = np.zeros(len(part), np.uint64), 0
    for block in blocks:
        h += hash_words(block, offset)
        offset += block.shape[1]
    ordered = np.sort(h)
    if not (ordered[1:] == ordered[:-1]).any():      # no two rows share a hash: no duplicates
        return np.zeros(len(part), bool)
    lead = first_occurrences(h)
    cand = np.flatnonzero(lead != np.arange(len(part)))
    same = np.ones(len(cand), bool)
    for block in blocks:
        same &= (block[cand] == block[lead[cand]]).all(1)
    dup = np.zeros(len(part), bool)
    dup[cand] = same
    return dup


# ---------------------------------------------------------------- missing values


def _most_frequent(values: np.ndarray) -> Any:
    uniq, counts = np.unique(values, return_counts=True)
    return uniq[np.argmax(counts)]      # ties: the smallest value


def fit_fill(values: np.ndarray, rule: str, fill_value: float) -> float:
    """The fill of one numeric column from its present training values."""
    if rule == "mean":
        return float(values.mean())
    if rule == "most_frequent":
        return float(_most_frequent(values))
    if rule == "constant":
        return float(fill_value)
    return float(np.median(values))       # median, and drop (for evaluation rows)


def all_missing(where: str, name: str) -> DataError:
    return DataError(f"{where + ' ' if where else ''}column '{name}': every value in the training split is "
                     "missing; drop it with data.drop_columns or fill it in")


def missing_counts(num: np.ndarray | None, txt: dict[str, np.ndarray], num_names: list[str]
                      ) -> tuple[dict[str, int], np.ndarray]:
    """Missing values per column, and a per-row mask of rows with any missing value."""
    n = len(num) if num is not None else len(next(iter(txt.values())))
    counts, any_missing = {}, np.zeros(n, bool)
    if num is not None:
        m = np.isnan(num)
        any_missing |= m.any(1)
        counts.update(zip(num_names, m.sum(0).tolist()))
    for name, col in txt.items():
        m = is_missing(col)
        any_missing |= m
        counts[name] = int(m.sum())
    return {k: int(v) for k, v in counts.items() if v}, any_missing


def impute(num: np.ndarray, txt: dict[str, np.ndarray], num_names: list[str], fills: dict[str, Any],
           nan: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Missing values replaced by the fitted fills (numeric in place; text columns copied).
    `nan`: `np.isnan(num)` when the caller has it already."""
    if num.shape[1]:
        nan = np.isnan(num) if nan is None else nan
        if nan.any():
            fillv = np.array([fills[n] for n in num_names], num.dtype)
            np.copyto(num, np.broadcast_to(fillv, num.shape), where=nan)
    return num, {name: pc.fill_null(col, fills[name]) for name, col in txt.items()}


# ---------------------------------------------------------------- outliers


def fit_bound(col: np.ndarray, cfg: CleanConfig, quartiles: tuple[float, float] | None = None) -> list[float]:
    """[low, high] of one column: mean +- t*std (zscore) or [q1 - k*iqr, q3 + k*iqr] (IQR, exact;
    `quartiles` when already known)."""
    if cfg.outliers == "zscore":
        mu, sd = col.mean(dtype=np.float64), col.std(dtype=np.float64)
        return [float(mu - cfg.zscore_threshold * sd), float(mu + cfg.zscore_threshold * sd)]
    q1, q3 = quartiles if quartiles is not None else np.percentile(col, [25, 75])
    return [float(q1 - cfg.iqr_k * (q3 - q1)), float(q3 + cfg.iqr_k * (q3 - q1))]


def _lerp(a: float, b: float, t: float) -> float:
    """NumPy's interpolation between neighbouring order statistics (numpy/lib/_function_base_impl.py)."""
    return b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t


def median_and_quartiles(present: np.ndarray, n_missing: int) -> tuple[float, tuple[float, float]]:
    """The median of `present` and the 25th/75th percentiles (NumPy's linear rule) of the column
    with its `n_missing` values filled with that median, from one partition of `present`.

    Sorted, the filled column is `present` with the median inserted `n_missing` times after the
    values below it: its order statistic k is present's k, the median, or present's k - n_missing."""
    p, m = len(present), n_missing
    mids = sorted({(p - 1) // 2, p // 2})
    n = p + m
    spots = [(q * (n - 1), int(q * (n - 1))) for q in (0.25, 0.75)]
    wanted = {k for _, lo in spots for k in (lo, min(lo + 1, n - 1))}
    below_guess = sorted({k for k in wanted if k < p} | {k - m for k in wanted if 0 <= k - m < p})
    part = np.partition(present, sorted(set(mids) | set(below_guess)))
    median = float(np.mean(part[mids]))
    below = int(np.count_nonzero(part < median))

    def filled(k: int) -> float:
        return float(part[k]) if k < below else median if k < below + m else float(part[k - m])
    q = tuple(_lerp(filled(lo), filled(min(lo + 1, n - 1)), pos - lo) for pos, lo in spots)
    return median, q


def outlier_mask(num: np.ndarray, bounds: list[list[float]]) -> np.ndarray:
    b = np.asarray(bounds, np.float64).reshape(-1, 2)
    return (num < b[:, 0]) | (num > b[:, 1])


def clip_(num: np.ndarray, bounds: list[list[float]]) -> np.ndarray:
    """Clip each column to its [low, high] in place."""
    b = np.asarray(bounds, np.float64).reshape(-1, 2)
    return np.clip(num, b[:, 0], b[:, 1], out=num)


# ---------------------------------------------------------------- labels


def label_problems(y: np.ndarray, task: str, num_classes: int | None,
                   classes: list[str] | None) -> tuple[np.ndarray, Callable[[int], str]]:
    """(mask of invalid labels, the description of invalid row i)."""
    if y.dtype == object:
        miss = is_missing(y)
        known = np.isin(y.astype(str), np.asarray(classes or [], str))
        bad = miss | (~known if task == "classification" else np.ones(len(y), bool))

        def text_problem(i: int) -> str:
            if miss[i]:
                return "missing label"
            if task == "regression":
                return f"target '{y[i]}' is not a number"
            close = difflib.get_close_matches(str(y[i]), classes or [], n=1, cutoff=CLOSE_ENOUGH)
            return (f"label '{y[i]}' is not one of the classes seen in training ({', '.join(classes or [])})"
                    + (f"; closest known: '{close[0]}'" if close else ""))
        return bad, text_problem
    nan = np.isnan(y)
    not_int = ~nan & (np.round(y) != y)
    out_of_range = ~nan & ~not_int & ((y < 0) | (y >= (num_classes or np.inf)))
    bad = nan | ((not_int | out_of_range) if task == "classification" else np.isinf(y))

    def number_problem(i: int) -> str:
        if nan[i]:
            return "missing label" if task == "classification" else "missing target"
        if task != "classification":
            return "target is infinite"
        if not_int[i]:
            return f"label {y[i]:g} is not an integer"
        closest = f"; closest known: {min(max(y[i], 0), num_classes - 1):g}" if num_classes else ""
        return f"label {y[i]:g} is out of range [0, {num_classes}){closest}"
    return bad, number_problem


def invalid_labels(raw: RawData, split: str, part: Part, task: str, num_classes: int | None,
                   classes: list[str] | None, policy: str) -> np.ndarray:
    """Mask of the invalid labels in `part`; raises unless they are training rows and policy=drop."""
    bad_mask, problem = label_problems(part.y, task, num_classes, classes)
    if not bad_mask.any():
        return bad_mask
    i = int(np.argmax(bad_mask))
    where = raw.row_label(split, int(part.rows[i]))
    col = f" column '{raw.target}'" if raw.line_of is not None else ""
    others = _other_bad_labels(part.y, bad_mask, i)
    if split != "train":
        raise DataError(f"{where}{col}: {problem(i)} in the {split} split ({int(bad_mask.sum())} such rows"
                        f"{others}); evaluation rows are never dropped: fix the data or the classes")
    if policy == "error":
        raise DataError(f"{where}{col}: {problem(i)} ({int(bad_mask.sum())} such rows in the training split"
                        f"{others}); fix the data, set data.num_classes, or set data.clean.invalid_labels=drop")
    return bad_mask


def _other_bad_labels(y: np.ndarray, bad: np.ndarray, first: int) -> str:
    """The other distinct invalid labels beside row `first`'s, up to UNSEEN_EXAMPLES in all
    (one message names up to five, so a file with two typos shows both)."""
    def text(v) -> str:
        return f"'{v}'" if isinstance(v, str) else f"{v:g}"
    first_text = None if y[first] is None else text(y[first])      # a missing label has no text
    shown = [t for t in dict.fromkeys(text(v) for v in y[bad] if v is not None and v == v) if t != first_text]
    if not shown:
        return ""
    more = f" and {len(shown) - UNSEEN_EXAMPLES + 1} more" if len(shown) > UNSEEN_EXAMPLES - 1 else ""
    return f"; also {', '.join(shown[:UNSEEN_EXAMPLES - 1])}{more}"


def check_labels(raw: RawData, split: str, part: Part, task: str, num_classes: int | None,
                 classes: list[str] | None, policy: str) -> tuple[Part, int]:
    """Drop (training split, policy=drop) or raise on invalid labels. Returns (part, dropped)."""
    bad = invalid_labels(raw, split, part, task, num_classes, classes, policy)
    if not bad.any():
        return part, 0
    return part.take(np.flatnonzero(~bad)), int(bad.sum())
