"""TensorFlow paths (grouped: TF costs seconds to import): tfds, tf.data backend, streaming CSV."""

import numpy as np
import pytest

from jaxtrain.data import epoch_permutation, load_dataset
from jaxtrain.data.options import CleanConfig, DataConfig
from jaxtrain.errors import DataError

tfds = pytest.importorskip("tensorflow_datasets")


def batches(ds, bs, seed, epoch):
    xs, ys, ms = zip(*ds.train_batches(bs, seed, epoch))
    for x in xs:
        assert x.shape[0] == bs                     # fixed shapes, last batch padded
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(ms)


def test_tfds_mock_mnist_both_backends():
    with tfds.testing.mock_data(num_examples=40):
        a = load_dataset(DataConfig(source="tfds", name="mnist", val_fraction=0.0))
        b = load_dataset(DataConfig(source="tfds", name="mnist", val_fraction=0.0, backend="tfdata"))
    assert a.feature_shape == (784,) and a.num_classes == 10 and len(a.train) == 40 and b.train is None
    # global z-score of the flattened images, fitted on train: check against NumPy on the raw pixels
    assert a.stats["normalize"]["scope"] == "global" and len(a.stats["normalize"]["shift"]) == 1
    ax, ay, am = batches(a, 16, 1, 0)
    bx, by, bm = batches(b, 16, 1, 0)
    np.testing.assert_allclose(ax, bx, atol=1e-6)
    np.testing.assert_array_equal(ay, by)
    np.testing.assert_array_equal(am, bm)


def test_tfds_not_prepared_says_how(tmp_path):
    with pytest.raises(DataError, match=r"not prepared.*tfds build mnist"):
        load_dataset(DataConfig(source="tfds", name="mnist", data_dir=str(tmp_path)))


def test_backends_same_values_and_epoch_coverage(tmp_path):
    rng = np.random.default_rng(0)
    n = 103
    x = rng.normal(5, 3, (n, 3))
    np.savez(tmp_path / "r.npz", x=x, y=np.arange(n, dtype=np.float64))
    kw = dict(source="npz", path=str(tmp_path / "r.npz"), task="regression", standardize_target=False,
              val_fraction=0.1, test_fraction=0.1, normalize="minmax")
    a, b = load_dataset(DataConfig(**kw)), load_dataset(DataConfig(backend="tfdata", **kw))
    for epoch in (0, 1):
        ax, ay, am = batches(a, 10, 7, epoch)
        bx, by, bm = batches(b, 10, 7, epoch)
        np.testing.assert_allclose(ax, bx, atol=1e-6)
        np.testing.assert_array_equal(ay, by)
        np.testing.assert_array_equal(am, bm)
        # every training example exactly once, in epoch_permutation order (y = original row id)
        ids = by[bm == 1]
        assert sorted(ids) == sorted(a.train.y) and len(set(ids)) == b.num_train == len(a.train)
        np.testing.assert_array_equal(ids, a.train.y[epoch_permutation(len(a.train), 7, epoch)])
    # the values are the NumPy min-max of the train rows
    tr = a.train.y.astype(int)
    lo, hi = x[tr].min(0), x[tr].max(0)
    np.testing.assert_allclose(bx[bm == 1], (x[by[bm == 1].astype(int)] - lo) / (hi - lo), atol=1e-6)


def messy_csv(path, n=600):
    rng = np.random.default_rng(3)
    lines = ["id,a,b,c,city,y"]
    for i in range(n):
        a = rng.normal(50, 10)
        sa = "" if i % 17 == 0 else ("NA" if i % 19 == 0 else f"{a * (20 if i % 50 == 0 else 1):.4f}")
        city = "null" if i % 23 == 0 else "xyz"[i % 3]
        lines.append(f"{i % 7},{sa},{rng.exponential(3):.5f},{rng.integers(0, 5)},{city},{a * 2 + rng.normal():.4f}")
    lines += lines[5:9]                             # duplicates
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("normalize", ["zscore", "minmax_sym"])
def test_streaming_csv_matches_in_memory(tmp_path, normalize):
    messy_csv(tmp_path / "m.csv")
    kw = dict(source="csv", path=str(tmp_path / "m.csv"), target="y", drop_columns=("id",), log_columns=("b",),
              normalize=normalize, clean=CleanConfig(missing="mean", outliers="zscore"), cache_dir=str(tmp_path))
    a = load_dataset(DataConfig(**kw))
    b = load_dataset(DataConfig(backend="tfdata", streaming=True, **kw))
    assert b.streaming and b.train is None and b.num_train == len(a.train)
    assert b.report["duplicates"]["rows_dropped"] == a.report["duplicates"]["rows_dropped"] > 0
    assert b.report["outliers"]["per_column"] == a.report["outliers"]["per_column"]
    ax, ay, am = batches(a, 64, 0, 2)
    bx, by, bm = batches(b, 64, 0, 2)
    np.testing.assert_allclose(ax, bx, atol=1e-6)
    np.testing.assert_allclose(ay, by, atol=1e-6)
    np.testing.assert_allclose(a.test.x, b.test.x, atol=1e-6)
    np.testing.assert_allclose(a.target_mean, b.target_mean, rtol=1e-9)


def test_streaming_bad_rows_name_line_and_column(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("a,y\n" + "1,2\n" * 10 + "1,x\n")
    with pytest.raises(DataError, match=r"bad\.csv line 12 column 'y': 'x' is not a number"):
        load_dataset(DataConfig(source="csv", path=str(p), target="y", backend="tfdata", streaming=True))
    p.write_text("a,y\n" + "1,2\n" * 10 + "1,2,3\n")
    with pytest.raises(DataError, match=r"bad\.csv line 12: 3 fields"):
        load_dataset(DataConfig(source="csv", path=str(p), target="y", backend="tfdata", streaming=True))
