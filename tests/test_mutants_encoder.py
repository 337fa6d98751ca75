"""data/encoder.py called directly against plain-Python / NumPy references built from a
hand-made FeatureStats: the table layout (numbers, one-hot, hashed text), the counts, the
line numbers in messages, images and arrays, and the targets. The cases mutmut's surviving
mutants showed untested (docs/testing.md)."""

import re
import zlib

import numpy as np
import pyarrow as pa
import pytest

from jaxtrain.data import encoder
from jaxtrain.data.featurestats import FeatureStats, Normalizer, OutlierRule
from jaxtrain.util.errors import DataError

WORDS = ["red", "Green", "blue's", "x9", "Red", "  ", "é", "a-b", "ok!"]
CATS = {"color": ["blue", "green", "red"], "size": ["L", "M", "S"]}


def table_stats(hash_dim: int = 7, clip: bool = True) -> FeatureStats:
    return FeatureStats(
        task="regression", numeric_columns=["a", "b", "c"], categories=dict(CATS),
        text_columns=["note", "title"], hash_dim=hash_dim,
        fills={"a": 1.5, "b": -0.25, "c": 2.0, "color": "red", "size": "XL", "note": "filled text",
               "title": ""},
        log_columns=["c"],
        outliers=OutlierRule("iqr", "clip" if clip else "drop", [[-2.0, 2.0], [-1.0, 3.0], [0.0, 1.0]]))


def hashed_reference(text: str, dim: int) -> np.ndarray:
    """Bag of words (ASCII runs of [a-z0-9'] in the lowercased text) by crc32 bucket, unit L2 norm."""
    row = np.zeros(dim)
    for token in re.findall(r"[a-z0-9']+", text.lower()):
        row[zlib.crc32(token.encode()) % dim] += 1
    norm = np.sqrt((row ** 2).sum())
    return row / norm if norm else row


def random_table(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    num = rng.normal(0, 1.5, (n, 3))
    num[:, 2] = rng.uniform(-0.5, 3, n)                # the log column: log1p defined
    num[rng.random((n, 3)) < 0.1] = np.nan
    num[rng.random((n, 3)) < 0.05] = np.inf
    num[rng.random((n, 3)) < 0.05] = -np.inf
    color = [None if r < 0.1 else v for r, v in zip(rng.random(n), rng.choice(["red", "green", "blue", "pink"], n))]
    size = [None if r < 0.1 else v for r, v in zip(rng.random(n), rng.choice(["S", "M", "L", "XS"], n))]
    note = [None if r < 0.15 else " ".join(rng.choice(WORDS, rng.integers(0, 5))) for r in rng.random(n)]
    title = [None if r < 0.1 else " ".join(rng.choice(WORDS, rng.integers(0, 3))) for r in rng.random(n)]
    txt = {"color": pa.array(color, pa.string()), "size": pa.array(size, pa.string()),
           "note": pa.array(note, pa.string()), "title": pa.array(title, pa.string())}
    return num, txt


def table_reference(stats: FeatureStats, num: np.ndarray, txt: dict) -> tuple[np.ndarray, dict]:
    """encode_table's answer, value by value in plain Python."""
    n = len(num)
    width = 3 + 3 + 3 + 2 * stats.hash_dim
    out = np.zeros((n, width))
    counts = {"missing": {}, "non_finite": {}, "outliers": {}, "unseen": {}}

    def bump(kind, name):
        counts[kind][name] = counts[kind].get(name, 0) + 1
    for j, name in enumerate(stats.numeric_columns):
        low, high = stats.outliers.bounds[j]
        for i in range(n):
            v = float(num[i, j])
            if np.isinf(v):
                bump("non_finite", name)
            if not np.isfinite(v):
                bump("missing", name)
                v = stats.fills[name]
            if name in stats.log_columns:
                v = float(np.log1p(v))
            if v < low or v > high:
                bump("outliers", name)
                if stats.outliers.action == "clip":
                    v = min(max(v, low), high)
            out[i, j] = v
    col = 3
    for name, cats in stats.categories.items():
        values = txt[name].to_pylist()
        for i, v in enumerate(values):
            if v is None:
                bump("missing", name)
                v = stats.fills[name]
            if v in cats:
                out[i, col + cats.index(v)] = 1
            else:
                bump("unseen", name)
        col += len(cats)
    for name in stats.text_columns:
        values = txt[name].to_pylist()
        for i, v in enumerate(values):
            if v is None:
                bump("missing", name)
                v = stats.fills[name]
            out[i, col:col + stats.hash_dim] = hashed_reference(v, stats.hash_dim)
        col += stats.hash_dim
    return out, counts


def as_dicts(counts: encoder.Counts) -> dict:
    return {"missing": counts.missing, "non_finite": counts.non_finite, "outliers": counts.outliers,
            "unseen": counts.unseen}


@pytest.mark.parametrize("n,clip", [(23, True), (31, False), (2 * encoder.TABLE_CHUNK_ROWS + 11, True)])
def test_encode_table_is_the_value_by_value_reference(n, clip):
    """Imputed, log1p'd, clipped numbers; one-hot categories; hashed text in its own slice of
    hash_dim columns; and every count, over several blocks of rows."""
    stats = table_stats(clip=clip)
    num, txt = random_table(n, seed=n)
    want, want_counts = table_reference(stats, num, txt)
    got, counts = encoder.encode_table(stats, num.copy(), dict(txt), "train.csv")
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert as_dicts(counts) == want_counts
    assert all(type(v) is int for d in as_dicts(counts).values() for v in d.values())


def test_encode_table_normalizes_only_when_asked():
    """normalize=True: (x - shift) / scale on the numeric columns (a table normalizer's width),
    in every block."""
    stats = table_stats()
    rng = np.random.default_rng(3)
    stats.normalize = Normalizer("zscore", "feature", rng.normal(0, 1, 3).tolist(),
                                 rng.uniform(0.5, 2, 3).tolist(), 3)
    n = encoder.TABLE_CHUNK_ROWS + 40
    num, txt = random_table(n, seed=1)
    want, _ = table_reference(stats, num, txt)
    raw, _ = encoder.encode_table(stats, num.copy(), dict(txt), "w")
    np.testing.assert_allclose(raw, want, rtol=1e-6, atol=1e-6)
    got, _ = encoder.encode_table(stats, num.copy(), dict(txt), "w", normalize=True)
    want[:, :3] = (want[:, :3] - np.array(stats.normalize.shift)) / np.array(stats.normalize.scale)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hash_dim", [1, 5, 32])
def test_hashed_text_fills_hash_dim_columns_after_the_one_hots(hash_dim):
    stats = FeatureStats(task="classification", text_columns=["t", "u"], hash_dim=hash_dim,
                         categories={"k": ["p", "q"]}, fills={"t": "", "u": "", "k": "p"})
    t = ["the cat", "dog dog cat", None, "Zebra's 42"]
    u = ["one", "", "two two two", "three"]
    txt = {"k": pa.array(["q", "p", None, "z"], pa.string()), "t": pa.array(t, pa.string()),
           "u": pa.array(u, pa.string())}
    got, counts = encoder.encode_table(stats, np.zeros((4, 0)), txt, "w")
    assert got.shape == (4, 2 + 2 * hash_dim)
    np.testing.assert_array_equal(got[:, :2], [[0, 1], [1, 0], [1, 0], [0, 0]])
    want_t = np.array([hashed_reference(v or "", hash_dim) for v in t])
    want_u = np.array([hashed_reference(v, hash_dim) for v in u])
    np.testing.assert_allclose(got[:, 2:2 + hash_dim], want_t, rtol=1e-6)
    np.testing.assert_allclose(got[:, 2 + hash_dim:], want_u, rtol=1e-6)
    assert counts.missing == {"k": 1, "t": 1} and counts.unseen == {"k": 1}


def test_feature_width_and_names_follow_the_layout():
    stats = table_stats(hash_dim=3)
    names = ["a", "b", "c", "color=blue", "color=green", "color=red", "size=L", "size=M", "size=S",
             "note#0", "note#1", "note#2", "title#0", "title#1", "title#2"]
    assert encoder.feature_names(stats) == names
    assert encoder.feature_width(stats) == len(names)


@pytest.mark.parametrize("bad_row", [4, encoder.TABLE_CHUNK_ROWS + 3, 2 * encoder.TABLE_CHUNK_ROWS])
def test_a_value_with_no_log1p_names_its_source_line(bad_row):
    """line_of maps a row of the whole table (not of its block) to the line in the file."""
    stats = FeatureStats(task="regression", numeric_columns=["x", "y"], fills={"x": 0.0, "y": 0.0},
                         log_columns=["y"])
    num = np.abs(np.random.default_rng(0).normal(size=(2 * encoder.TABLE_CHUNK_ROWS + 5, 2)))
    num[bad_row, 1] = -3.5
    with pytest.raises(DataError) as e:
        encoder.encode_table(stats, num.copy(), {}, "data.csv", line_of=lambda i: 7 + 3 * i)
    assert str(e.value) == (f"data.csv line {7 + 3 * bad_row} column 'y': value -3.5 <= -1 has no log1p; "
                            "remove the column from data.log_columns")
    with pytest.raises(DataError) as e:
        encoder.encode_table(stats, num.copy(), {}, "data.csv")
    assert str(e.value).startswith("data.csv column 'y': value -3.5 <= -1")


def test_counts_add_sums_per_column_and_field():
    a = encoder.Counts(missing={"x": 2}, non_finite={"x": 1}, outliers={"y": 4}, unseen={})
    b = encoder.Counts(missing={"x": 3, "z": 1}, non_finite={}, outliers={"y": 1, "x": 2}, unseen={"k": 5})
    assert a.add(b) is a
    assert as_dicts(a) == {"missing": {"x": 5, "z": 1}, "non_finite": {"x": 1}, "outliers": {"y": 5, "x": 2},
                           "unseen": {"k": 5}}
    assert as_dicts(b) == {"missing": {"x": 3, "z": 1}, "non_finite": {}, "outliers": {"y": 1, "x": 2},
                           "unseen": {"k": 5}}


def test_non_finite_to_missing_counts_and_blanks_infinities_in_place():
    num = np.array([[1.0, np.inf, 2.0], [-np.inf, np.inf, np.nan], [0.0, 3.0, 4.0]])
    want = np.where(np.isinf(num), np.nan, num)
    assert encoder.non_finite_to_missing(num, ["a", "b", "c"]) == {"a": 1, "b": 2}
    np.testing.assert_array_equal(num, want)
    assert encoder.non_finite_to_missing(num, ["a", "b", "c"]) == {}


# ---------------------------------------------------------------- arrays and images


def image_stats(shape, norm: Normalizer | None = None) -> FeatureStats:
    return FeatureStats(task="classification", num_classes=3, feature_shape=list(shape),
                        normalize=norm or Normalizer())


def per_feature(width: int, seed: int = 0) -> Normalizer:
    rng = np.random.default_rng(seed)
    return Normalizer("zscore", "feature", rng.normal(100, 20, width).tolist(), rng.uniform(10, 60, width).tolist(),
                      width)


@pytest.mark.parametrize("given,trained", [((4, 3), (12,)), ((12,), (4, 3)), ((2, 3, 2), (4, 3)),
                                           ((4, 3), (4, 3)), ((1, 4, 3), (4, 3))])
def test_encode_arrays_reshapes_to_the_trained_shape(given, trained):
    x = np.random.default_rng(1).integers(0, 256, (5, *given), dtype=np.uint8)
    got = encoder.encode_arrays(image_stats(trained, per_feature(12)), x, "w")   # not normalized by default
    assert got.dtype == np.float32 and got.shape == (5, *trained)
    np.testing.assert_array_equal(got, x.reshape(5, *trained).astype(np.float32))


@pytest.mark.parametrize("dtype", [np.bool_, np.int16, np.uint8, np.float64])
def test_encode_arrays_takes_every_numeric_dtype(dtype):
    x = (np.arange(12).reshape(2, 6) % 2).astype(dtype)
    np.testing.assert_array_equal(encoder.encode_arrays(image_stats((6,)), x, "w"), x.astype(np.float32))


@pytest.mark.parametrize("values", [np.array([["a", "b"]]), np.array([[1 + 2j, 3j]]),
                                    np.array([[None, 1]], object)])
def test_encode_arrays_refuses_non_numbers(values):
    with pytest.raises(DataError) as e:
        encoder.encode_arrays(image_stats((2,)), values, "pics.npz")
    assert str(e.value) == f"pics.npz: inputs must be numeric, got {values.dtype}"


@pytest.mark.parametrize("given", [(3, 5), (2, 4, 3), (4,)])
def test_encode_arrays_names_both_shapes_when_the_sizes_differ(given):
    with pytest.raises(DataError) as e:
        encoder.encode_arrays(image_stats((4, 3)), np.zeros((2, *given)), "new.npz")
    assert str(e.value) == (f"new.npz: examples have shape {given} but the model was trained on (4, 3); "
                            "pass inputs shaped like the training data")


@pytest.mark.parametrize("shape,n", [((8, 8), 3 * encoder.CHUNK_VALUES // 64 + 17), ((3,), 5),
                                     ((encoder.CHUNK_VALUES + 9,), 3)])
def test_encode_arrays_normalizes_every_chunk(shape, n):
    """normalize=True gives the normalized float32 array, in however many chunks it takes."""
    width = int(np.prod(shape))
    x = np.random.default_rng(2).integers(0, 256, (n, width), dtype=np.uint8)
    norm = per_feature(width)
    got = encoder.encode_arrays(image_stats(shape, norm), x, "w", normalize=True)
    shift, scale = np.array(norm.shift, np.float32), np.array(norm.scale, np.float32)
    want = ((x.astype(np.float32) - shift) / scale).reshape(n, *shape)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_encode_arrays_normalizes_with_one_global_pair():
    x = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    norm = Normalizer("minmax", "global", [3.0], [23.0], 12)
    got = encoder.encode_arrays(image_stats((3, 4), norm), x, "w", normalize=True)
    np.testing.assert_allclose(got, (x - 3) / 23, rtol=1e-6)


def test_normalize_works_in_place_on_the_first_width_features():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    want = x.astype(np.float64)
    want[:, :2] = (want[:, :2] - [1, 2]) / [2, 4]
    stats = image_stats((4,), Normalizer("zscore", "feature", [1.0, 2.0], [2.0, 4.0], 2))
    assert encoder.normalize(stats, x) is x
    np.testing.assert_allclose(x, want, rtol=1e-6)


# ---------------------------------------------------------------- targets


@pytest.mark.parametrize("y", [np.array([3.0, -1.5, 10.25, 0.0]), np.array([7, -2, 0, 40], np.int64),
                               np.array([1e6, 2e6 + 1], np.float32)])
def test_regression_targets_are_standardized_with_the_training_mean_and_scale(y):
    stats = FeatureStats(task="regression", target_mean=2.5, target_scale=4.0)
    got = encoder.encode_targets(stats, y)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, [(float(v) - 2.5) / 4.0 for v in y], rtol=1e-6)


def test_text_classes_map_to_their_index_in_stats_classes():
    """Index in the saved (label-ordered, not sorted) class list."""
    stats = FeatureStats(task="classification", num_classes=4, classes=["zebra", "ant", "mole", "Bee"])
    y = np.array(["ant", "zebra", "Bee", "mole", "ant", "zebra"], object)
    got = encoder.encode_targets(stats, y)
    assert got.dtype == np.int32
    assert got.tolist() == [stats.classes.index(v) for v in y]


def test_numeric_class_labels_become_int32():
    y = np.array([2, 0, 1, 2], np.int64)
    got = encoder.encode_targets(FeatureStats(task="classification", num_classes=3), y)
    assert got.dtype == np.int32 and got.tolist() == y.tolist()
