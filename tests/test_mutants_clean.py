"""data/clean.py against NumPy and plain-Python references on random columns (Hypothesis): the
cases mutmut's surviving mutants showed untested (docs/testing.md)."""

import difflib

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxtrain.config.data import CleanConfig
from jaxtrain.data import clean
from jaxtrain.data.raw import Part

FAST = settings(max_examples=150, deadline=None, derandomize=True)
values = st.lists(st.one_of(st.integers(-5, 5).map(float), st.floats(-1e3, 1e3, allow_nan=False)),
                  min_size=1, max_size=25)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(present=st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=60),
       n_missing=st.integers(0, 40))
def test_median_and_quartiles_are_numpys_on_the_median_filled_column(present, n_missing):
    """Exactly NumPy's figures (the same interpolation, bit for bit)."""
    present = np.array(present)
    median, (q1, q3) = clean.median_and_quartiles(present.copy(), n_missing)
    assert median == np.median(present)
    filled = np.concatenate([present, np.full(n_missing, np.median(present))])
    assert (q1, q3) == tuple(np.percentile(filled, [25, 75]))


@FAST
@given(a=st.floats(-1e3, 1e3), b=st.floats(-1e3, 1e3), t=st.floats(0, 1))
def test_lerp_is_numpys_interpolation(a, b, t):
    """NumPy's quantile between two neighbouring values, on [a, b] itself, bit for bit."""
    a, b = min(a, b), max(a, b)
    assert clean._lerp(a, b, t) == np.quantile([a, b], t)
    assert clean._lerp(a, b, 0.0) == pytest.approx(a, abs=1e-12) and clean._lerp(a, b, 1.0) == pytest.approx(b, abs=1e-12)


@FAST
@given(col=values, k=st.floats(0.5, 3.0), threshold=st.floats(1.0, 4.0))
def test_fit_bound_is_the_iqr_or_zscore_rule(col, k, threshold):
    col = np.array(col)
    q1, q3 = np.percentile(col, [25, 75])
    assert clean.fit_bound(col, CleanConfig(outliers="iqr", iqr_k=k)) == \
        pytest.approx([q1 - k * (q3 - q1), q3 + k * (q3 - q1)])
    mu, sd = col.mean(), col.std()
    assert clean.fit_bound(col, CleanConfig(outliers="zscore", zscore_threshold=threshold)) == \
        pytest.approx([mu - threshold * sd, mu + threshold * sd])


cells = st.tuples(st.sampled_from([0.0, 1.0, -2.5, np.nan]), st.sampled_from(["a", "bb", "", None]),
                  st.sampled_from([0.0, 1.0]))


@FAST
@given(rows=st.lists(cells, min_size=1, max_size=30))
def test_duplicates_and_missing_counts_match_a_python_reference(rows):
    num = np.array([[r[0]] for r in rows], np.float64)
    txt = {"c": pa.array([r[1] for r in rows], pa.string())}
    y = np.array([r[2] for r in rows])
    part = Part(y=y, rows=np.arange(len(rows)), num=num, txt=txt)
    seen, want = set(), []
    for r in rows:  # NaN equals NaN here: two missing values are the same value
        key = ("nan" if np.isnan(r[0]) else r[0], r[1], r[2])
        want.append(key in seen)
        seen.add(key)
    assert clean.duplicate_mask(part).tolist() == want
    # Every row one hash (a collision everywhere): each row is compared word by word with the
    # first, so only copies of the first row are dropped, and never a row that differs.
    keys = [("nan" if np.isnan(r[0]) else r[0], r[1], r[2]) for r in rows]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(clean, "hash_words", lambda words, first_key=0: np.zeros(len(words), np.uint64))
        assert clean.duplicate_mask(part).tolist() == [i > 0 and k == keys[0] for i, k in enumerate(keys)]
    counts, any_missing = clean.missing_counts(num, {"c": txt["c"]}, ["a"])
    miss_a = [bool(np.isnan(r[0])) for r in rows]
    miss_c = [r[1] is None for r in rows]
    assert counts == {k: v for k, v in (("a", sum(miss_a)), ("c", sum(miss_c))) if v}
    assert any_missing.tolist() == [a or c for a, c in zip(miss_a, miss_c)]
    for low, high in ((-1.0, 0.5), (-2.5, 1.0)):        # the second: values on the bounds are inside
        mask = clean.outlier_mask(num, [[low, high]])[:, 0].tolist()
        assert mask == [bool(v < low or v > high) for v in num[:, 0]]
        np.testing.assert_array_equal(clean.clip_(num.copy(), [[low, high]]), np.clip(num, low, high))
    counts, any_missing = clean.missing_counts(num, {}, ["a"])          # numbers only
    assert counts == ({"a": sum(miss_a)} if any(miss_a) else {}) and any_missing.tolist() == miss_a
    labels = np.array([None if r[2] else "x" for r in rows], object)    # text labels (None: missing)
    text_part = Part(y=labels, rows=np.arange(len(rows)), num=num, txt=txt)
    seen, want_text = set(), []
    for r, label in zip(rows, labels):
        key = ("nan" if np.isnan(r[0]) else r[0], r[1], label)
        want_text.append(key in seen)
        seen.add(key)
    assert clean.duplicate_mask(text_part).tolist() == want_text


@FAST
@given(y=st.lists(st.sampled_from([0.0, 1.0, 2.0, 3.0, -1.0, 1.5, np.nan, np.inf]), min_size=1, max_size=12),
       task=st.sampled_from(["classification", "regression"]))
def test_number_label_problems_match_a_python_reference(y, task):
    arr = np.array(y)
    bad, problem = clean.label_problems(arr, task, 3, None)
    for i, v in enumerate(y):
        if np.isnan(v):
            want = "missing label" if task == "classification" else "missing target"
        elif task == "regression":
            want = "target is infinite" if np.isinf(v) else None
        elif np.isinf(v):
            want = f"label {v:g} is out of range [0, 3); closest known: {2 if v > 0 else 0}"
        elif v != round(v):
            want = f"label {v:g} is not an integer"
        elif not 0 <= v < 3:
            want = f"label {v:g} is out of range [0, 3); closest known: {min(max(v, 0), 2):g}"
        else:
            want = None
        assert bool(bad[i]) == (want is not None), (v, task)
        if want is not None:
            assert problem(i) == want


@FAST
@given(y=st.lists(st.sampled_from(["cat", "dog", "Cat", "bird", None]), min_size=1, max_size=12),
       task=st.sampled_from(["classification", "regression"]))
def test_text_label_problems_match_a_python_reference(y, task):
    classes = ["cat", "dog"]
    bad, problem = clean.label_problems(np.array(y, object), task, None, classes)
    for i, v in enumerate(y):
        if v is None:
            want = "missing label"
        elif task == "regression":
            want = f"target '{v}' is not a number"
        elif v not in classes:
            want = f"label '{v}' is not one of the classes seen in training (cat, dog)"
        else:
            want = None
        assert bool(bad[i]) == (want is not None), (v, task)
        if want is not None:
            assert problem(i).startswith(want)
            if task == "classification" and v is not None:
                # a label is suggested only when it is close (0.6: difflib's own default), so
                # 'bird' gets none and 'Cat' gets 'cat'
                close = difflib.get_close_matches(v, classes, n=1, cutoff=0.6)
                assert problem(i) == want + (f"; closest known: '{close[0]}'" if close else "")


@FAST
@given(picks=st.lists(st.integers(0, 3), min_size=1, max_size=20), width=st.integers(1, 5),
       dtype=st.sampled_from([np.uint8, np.float32]))
def test_duplicate_images_match_a_python_reference(picks, width, dtype):
    """Array examples (images): rows of any byte width (padded to 8-byte words), equal bytes and
    label = a duplicate."""
    pool = np.arange(4 * width * 3, dtype=np.float64).reshape(4, width, 3) % 7
    x = pool[picks].astype(dtype)
    y = np.array([p % 2 for p in picks], np.float64)
    part = Part(y=y, rows=np.arange(len(picks)), x=x)
    seen, want = set(), []
    for p in picks:
        key = (x[picks.index(p)].tobytes(), p % 2)
        want.append(key in seen)
        seen.add(key)
    assert clean.duplicate_mask(part).tolist() == want


# ---------------------------------------------------------------- labels: the whole message

NUM_POOL = [0.0, 1.0, 2.0, -1.0, 3.0, 4.0, 5.0, 7.0, 9.0, 1.5, 2.5, np.nan]     # num_classes 3
TXT_POOL = ["cat", "dog", "cow", "ant", "bee", "elk", "fox", "gnu", "Cat", "dgo", None]
CLASSES = ["cat", "dog"]


def _label_text(v) -> str:
    return f"'{v}'" if isinstance(v, str) else f"{v:g}"


def _reference_problem(v) -> str | None:
    """What is wrong with one label (classification, 3 numeric classes or CLASSES), None if nothing."""
    if v is None or (not isinstance(v, str) and np.isnan(v)):
        return "missing label"
    if isinstance(v, str):
        if v in CLASSES:
            return None
        close = difflib.get_close_matches(v, CLASSES, n=1, cutoff=0.6)
        return (f"label '{v}' is not one of the classes seen in training (cat, dog)"
                + (f"; closest known: '{close[0]}'" if close else ""))
    if v != round(v):
        return f"label {v:g} is not an integer"
    if 0 <= v < 3:
        return None
    return f"label {v:g} is out of range [0, 3); closest known: {min(max(v, 0), 2):g}"


def _reference_others(bad_labels: list, first) -> str:
    """The other distinct bad labels (missing ones never named), the first four, then a count."""
    shown, first_text = [], None if first is None else _label_text(first)
    for v in bad_labels:
        if v is None or (not isinstance(v, str) and np.isnan(v)):
            continue
        t = _label_text(v)
        if t != first_text and t not in shown:
            shown.append(t)
    if not shown:
        return ""
    return "; also " + ", ".join(shown[:4]) + (f" and {len(shown) - 4} more" if len(shown) > 4 else "")


def _raw(source: str):
    """A data set of file f.csv (lines: record r on line r + 2), of no lines, or with the val split
    read from its own file v.csv."""
    from jaxtrain.data.raw import RawData
    lines = (lambda r: r + 2) if source != "no lines" else None
    files = {"val": ("v.csv", lambda r: r + 10)} if source == "val file" else {}
    return RawData("table", {}, where="f.csv", target="band", line_of=lines, split_files=files)


def _reference_where(source: str, split: str, row: int) -> str:
    if source == "val file" and split == "val":
        return f"v.csv line {row + 10}"
    return f"f.csv line {row + 2}" if source != "no lines" else f"f.csv {split} example {row}"


@settings(max_examples=200, deadline=None, derandomize=True)
@given(picks=st.lists(st.integers(0, 10), min_size=1, max_size=14), text=st.booleans(),
       split=st.sampled_from(["train", "val", "test"]), source=st.sampled_from(["lines", "no lines", "val file"]),
       policy=st.sampled_from(["error", "drop"]), first_row=st.integers(0, 50))
def test_invalid_labels_raise_the_message_built_from_the_inputs_or_are_dropped(picks, text, split, source,
                                                                              policy, first_row):
    """check_labels against a plain-Python reference: the exact message (which row and file, the
    column only for line-based sources, the problem, the count, up to four other distinct bad
    labels and how many more), or, for training rows with policy=drop, the rows kept and the count
    dropped (0 when nothing is bad)."""
    from jaxtrain.util.errors import DataError
    labels = [TXT_POOL[p] if text else NUM_POOL[p] for p in picks]
    y = np.array(labels, object) if text else np.array(labels, np.float64)
    rows = first_row + 3 * np.arange(len(y))          # source record numbers, not positions
    part = Part(y=y, rows=rows, num=np.arange(len(y), dtype=np.float64)[:, None])
    raw = _raw(source)
    problems = [_reference_problem(v) for v in labels]
    bad = [p is not None for p in problems]
    args = (raw, split, part, "classification", None if text else 3, CLASSES if text else None, policy)
    if not any(bad):
        kept, dropped = clean.check_labels(*args)
        assert kept is part and dropped == 0
        return
    if split == "train" and policy == "drop":
        kept, dropped = clean.check_labels(*args)
        assert dropped == sum(bad)
        assert kept.rows.tolist() == [r for r, b in zip(rows.tolist(), bad) if not b]
        assert kept.num[:, 0].tolist() == [float(i) for i, b in enumerate(bad) if not b]
        return
    i = bad.index(True)
    where = _reference_where(source, split, int(rows[i]))
    col = " column 'band'" if source != "no lines" else ""
    others = _reference_others([v for v, b in zip(labels, bad) if b], labels[i])
    if split == "train":
        want = (f"{where}{col}: {problems[i]} ({sum(bad)} such rows in the training split{others}); "
                "fix the data, set data.num_classes, or set data.clean.invalid_labels=drop")
    else:
        want = (f"{where}{col}: {problems[i]} in the {split} split ({sum(bad)} such rows{others}); "
                "evaluation rows are never dropped: fix the data or the classes")
    with pytest.raises(DataError) as e:
        clean.check_labels(*args)
    assert str(e.value) == want


@pytest.mark.parametrize("labels, others", [
    ([5.0], ""),                                    # one bad label: nothing else to name
    ([5.0, 5.0, np.nan], ""),                       # missing labels are counted, never named
    ([5.0, np.nan, 7.0, 1.5], "; also 7, 1.5"),
    ([5.0, 4.0, 7.0, 9.0], "; also 4, 7, 9"),
    ([5.0, 4.0, 7.0, 9.0, -1.0], "; also 4, 7, 9, -1"),
    ([5.0, 4.0, 7.0, 9.0, -1.0, 1.5], "; also 4, 7, 9, -1 and 1 more"),
    ([5.0, 4.0, 7.0, 9.0, -1.0, 1.5, 2.5, 5.0], "; also 4, 7, 9, -1 and 2 more"),
])
def test_other_bad_labels_name_four_then_count_the_rest(labels, others):
    """The cases around UNSEEN_EXAMPLES (five labels in one message), written out by hand."""
    y = np.array(labels)
    assert clean._other_bad_labels(y, np.ones(len(y), bool), 0) == others
    assert _reference_others(labels, labels[0]) == others


@pytest.mark.parametrize("labels, others", [([None], ""), ([None, "cow", None, "ant"], "; also 'cow', 'ant'")])
def test_a_missing_text_label_first_gives_the_message_not_a_crash(labels, others):
    """The first invalid row's label missing (a text target): the one-line error, not a
    TypeError from formatting None as a number."""
    from jaxtrain.util.errors import DataError
    part = Part(y=np.array(labels, object), rows=np.arange(len(labels)), num=np.zeros((len(labels), 1)))
    with pytest.raises(DataError) as e:
        clean.check_labels(_raw("lines"), "train", part, "classification", None, CLASSES, "error")
    assert str(e.value) == (f"f.csv line 2 column 'band': missing label ({len(labels)} such rows in the training "
                            f"split{others}); fix the data, set data.num_classes, or set data.clean.invalid_labels=drop")


@pytest.mark.parametrize("where", ["", "f.csv"])
def test_all_missing_names_the_column_and_the_fix(where):
    err = clean.all_missing(where, "rooms")
    assert str(err) == (f"{where + ' ' if where else ''}column 'rooms': every value in the training split "
                        "is missing; drop it with data.drop_columns or fill it in")


# ---------------------------------------------------------------- missing values: most frequent


@FAST
@given(values=st.lists(st.integers(-3, 3), min_size=1, max_size=30))
def test_most_frequent_fill_is_the_commonest_value_ties_the_smallest(values):
    from collections import Counter
    counts = Counter(values)
    top = max(counts.values())
    assert clean.fit_fill(np.array(values, np.float64), "most_frequent", 0.0) == \
        float(min(v for v, c in counts.items() if c == top))


# ---------------------------------------------------------------- duplicates: the hash


u64 = st.integers(0, 2**64 - 1)


@FAST
@given(rows=st.integers(1, 4), wa=st.integers(1, 5), wb=st.integers(1, 5), first_key=st.integers(0, 9000),
       data=st.data())
def test_hash_of_blocks_side_by_side_is_the_sum_of_their_hashes(rows, wa, wb, first_key, data):
    """hash_words' contract: word j takes key first_key + j (any first key, past the key table's
    length too), so a row's blocks can be hashed apart and summed."""
    a = np.array(data.draw(st.lists(st.lists(u64, min_size=wa, max_size=wa), min_size=rows, max_size=rows)),
                 np.uint64)
    b = np.array(data.draw(st.lists(st.lists(u64, min_size=wb, max_size=wb), min_size=rows, max_size=rows)),
                 np.uint64)
    both = np.concatenate([a, b], 1)
    np.testing.assert_array_equal(clean.hash_words(both), clean.hash_words(a) + clean.hash_words(b, wa))
    np.testing.assert_array_equal(clean.hash_words(both, first_key),
                                  clean.hash_words(a, first_key) + clean.hash_words(b, first_key + wa))


def _reference_duplicates(keys: list) -> list[bool]:
    seen, out = set(), []
    for k in keys:
        out.append(k in seen)
        seen.add(k)
    return out


@pytest.mark.parametrize("with_text", [False, True])
def test_a_row_with_its_number_and_label_swapped_is_no_duplicate_but_its_copy_is(with_text):
    """(1, 2), (2, 1), (2, 1): the third row repeats the second. A hash that gave the number and
    the label the same key would put all three in one group, compare the copy with the first row
    only, and keep it."""
    num, y = [1.0, 2.0, 2.0, 1.0], [2.0, 1.0, 1.0, 2.0]
    txt = {"c": pa.array(["a"] * 4, pa.string())} if with_text else {}
    part = Part(y=np.array(y), rows=np.arange(4), num=np.array(num)[:, None], txt=txt)
    assert clean.duplicate_mask(part).tolist() == _reference_duplicates(list(zip(num, y))) == \
        [False, False, True, True]


def test_rows_whose_hashes_differ_in_the_last_bit_stay_apart():
    """Images of one 8-byte word: the second's word is chosen so that its hash is the first's + 1
    (the multilinear hash with odd keys: word * key mod 2**64), so only an exact 64-bit sum of the
    blocks' hashes (no float rounding) tells the rows apart and finds the third row's copy."""
    key = int(clean._KEYS[0])
    inverse = pow(key, -1, 2**64)
    words = [(2**63 * inverse) % 2**64, ((2**63 + 1) * inverse) % 2**64]
    x = np.array([words[0], words[1], words[1]], np.uint64).view(np.uint8).reshape(3, 8)
    part = Part(y=np.ones(3), rows=np.arange(3), x=x)
    assert clean.hash_words(x.view(np.uint64)).tolist() == [2**63, 2**63 + 1, 2**63 + 1]
    assert clean.duplicate_mask(part).tolist() == [False, False, True]


@pytest.mark.parametrize("n, copies", [(0, False), (3, False), (3, True)])
def test_duplicate_mask_is_a_boolean_mask_of_every_row(n, copies):
    """Empty, without duplicates, with one: one bool per row, which callers negate to keep rows."""
    num = np.zeros((n, 1)) if copies else np.arange(n, dtype=np.float64)[:, None]
    part = Part(y=np.zeros(n), rows=np.arange(n), num=num)
    mask = clean.duplicate_mask(part)
    assert mask.dtype == np.bool_ and mask.shape == (n,)
    kept = part.take(np.flatnonzero(~mask))
    assert kept.rows.tolist() == ([0] if copies else list(range(n)))
