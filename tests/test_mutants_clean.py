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
