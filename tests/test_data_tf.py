"""TensorFlow paths (grouped: TF costs seconds to import): tfds, tf.data backend, streaming CSV."""

import numpy as np
import pytest

from jaxtrain.data import epoch_permutation, load_dataset
from jaxtrain.config.data import CleanConfig, DataConfig
from jaxtrain.util.errors import DataError

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
        raw = np.stack([r["image"] for r in tfds.as_numpy(tfds.builder("mnist").as_dataset(split="train"))])
    assert a.feature_shape == (784,) and a.num_classes == 10 and len(a.train) == 40 and b.train is None
    # global z-score of the flattened images, fitted on train: check against NumPy on the raw pixels
    raw = raw.astype(np.float64)
    assert raw.shape == (40, 28, 28, 1) and raw.std() > 0
    assert a.stats.normalize.scope == "global" and len(a.stats.normalize.shift) == 1
    np.testing.assert_allclose(a.stats.normalize.shift, [raw.mean()], rtol=1e-12)
    np.testing.assert_allclose(a.stats.normalize.scale, [raw.std()], rtol=1e-12)
    assert b.stats.normalize == a.stats.normalize
    ax, ay, am = batches(a, 16, 1, 0)
    bx, by, bm = batches(b, 16, 1, 0)
    np.testing.assert_allclose(ax, bx, atol=1e-6)
    np.testing.assert_array_equal(ay, by)
    np.testing.assert_array_equal(am, bm)


def test_tfds_normalizer_is_fitted_on_the_training_split_only():
    """The mock's splits differ here (training pixels 0..99, test pixels 150..255), so a
    normalizer that also saw the test split would have another mean and deviation."""
    import tensorflow as tf
    rng = np.random.default_rng(6)
    images = {"train": rng.integers(0, 100, (24, 28, 28, 1)).astype(np.uint8),
              "test": rng.integers(150, 256, (8, 28, 28, 1)).astype(np.uint8)}

    def as_dataset(self, split, *args, **kwargs):
        x = images["test" if str(split).startswith("test") else "train"]
        return tf.data.Dataset.from_tensor_slices({"image": x, "label": np.arange(len(x)) % 10})

    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        ds = load_dataset(DataConfig(source="tfds", name="mnist", val_fraction=0.0))
    train = images["train"].astype(np.float64)
    np.testing.assert_allclose(ds.stats.normalize.shift, [train.mean()], rtol=1e-12)
    np.testing.assert_allclose(ds.stats.normalize.scale, [train.std()], rtol=1e-12)
    expected = (images["test"].reshape(8, -1) - train.mean()) / train.std()
    np.testing.assert_allclose(ds.test.x, expected, rtol=1e-5, atol=1e-5)


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


def messy_csv(path, n=600, na="NA"):
    rng = np.random.default_rng(3)
    lines = ["id,a,b,c,city,y"]
    for i in range(n):
        a = rng.normal(50, 10)
        sa = "" if i % 17 == 0 else (na if i % 19 == 0 else f"{a * (20 if i % 50 == 0 else 1):.4f}")
        city = "null" if i % 23 == 0 else "xyz"[i % 3]
        lines.append(f"{i % 7},{sa},{rng.exponential(3):.5f},{rng.integers(0, 5)},{city},{a * 2 + rng.normal():.4f}")
        if i % 97 == 5:
            lines.append("" if i % 2 else "  ")     # blank lines are skipped by both readers
    lines += lines[5:9]                             # duplicates
    path.write_text("\n".join(lines) + "\n")


# na="": numeric fields parse straight to float in decode_csv; na="NA": the string fallback.
@pytest.mark.parametrize("normalize,na,missing", [("zscore", "NA", "mean"), ("minmax_sym", "", "mean"),
                                                  ("minmax", "null", "constant")])
def test_streaming_csv_matches_in_memory(tmp_path, normalize, na, missing):
    messy_csv(tmp_path / "m.csv", na=na)
    kw = dict(source="csv", path=str(tmp_path / "m.csv"), target="y", drop_columns=("id",), log_columns=("b",),
              normalize=normalize, clean=CleanConfig(missing=missing, outliers="zscore"), cache_dir=str(tmp_path))
    a = load_dataset(DataConfig(**kw))
    b = load_dataset(DataConfig(backend="tfdata", streaming=True, **kw))
    assert b.streaming and b.train is None and b.num_train == len(a.train)
    assert b.report["rows_in"] == a.report["rows_in"]
    assert b.report["duplicates"]["rows_dropped"] == a.report["duplicates"]["rows_dropped"] > 0
    assert b.report["outliers"]["per_column"] == a.report["outliers"]["per_column"]
    assert b.report["missing"]["per_column"] == a.report["missing"]["per_column"]
    assert b.stats.categories == a.stats.categories and b.stats.fills["city"] == a.stats.fills["city"]
    ax, ay, am = batches(a, 64, 0, 2)
    bx, by, bm = batches(b, 64, 0, 2)
    np.testing.assert_allclose(ax, bx, atol=1e-6)
    np.testing.assert_allclose(ay, by, atol=1e-6)
    np.testing.assert_allclose(a.test.x, b.test.x, atol=1e-6)
    np.testing.assert_allclose(a.target_mean, b.target_mean, rtol=1e-9)
    # saved statistics reused (eval of a streaming run): same values, nothing refitted
    c = load_dataset(DataConfig(backend="tfdata", streaming=True, **kw), stats=b.stats)
    assert c.stats.normalize == b.stats.normalize
    np.testing.assert_array_equal(c.test.x, b.test.x)
    np.testing.assert_array_equal(batches(c, 64, 0, 2)[0], bx)


def test_tfds_text_becomes_hashed_bag_of_words():
    from jaxtrain.data.transforms import hash_text
    with tfds.testing.mock_data(num_examples=12):
        ds = load_dataset(DataConfig(source="tfds", name="imdb_reviews", val_fraction=0.0, hash_dim=32))
        texts = [r["text"].decode() for r in tfds.as_numpy(tfds.builder("imdb_reviews").as_dataset(split="test"))]
    assert ds.feature_shape == (32,) and ds.num_classes == 2 and ds.stats.text_columns == ["text"]
    # free text is not normalized (only numeric columns are): the vectors are the hashed counts
    np.testing.assert_allclose(ds.test.x, hash_text(np.array(texts, dtype=object), 32), atol=1e-6)


def test_streaming_bad_rows_name_line_and_column(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("a,y\n" + "1,2\n" * 10 + "1,x\n")
    with pytest.raises(DataError, match=r"bad\.csv line 12 column 'y': 'x' is not a number"):
        load_dataset(DataConfig(source="csv", path=str(p), target="y", backend="tfdata", streaming=True))
    p.write_text("a,y\n" + "1,2\n" * 10 + "1,2,3\n")
    with pytest.raises(DataError, match=r"bad\.csv line 12: 3 fields"):
        load_dataset(DataConfig(source="csv", path=str(p), target="y", backend="tfdata", streaming=True))


def test_streaming_cache_removed_after_an_error_and_with_the_dataset(tmp_path):
    import gc
    p = tmp_path / "x.csv"
    p.write_text("a,y\n" + "".join(f"{i},{i}\n" for i in range(50)) + "-5,3\n")
    kw = dict(source="csv", path=str(p), target="y", backend="tfdata", streaming=True, cache_dir=str(tmp_path),
              clean=CleanConfig(missing="mean"))
    with pytest.raises(DataError, match=r"x\.csv line 52 column 'a': value -5 <= -1 has no log1p"):
        load_dataset(DataConfig(log_columns=("a",), **kw))     # fails after the cache was written
    gc.collect()
    assert not list(tmp_path.glob("jaxtrain-stream-*"))
    ds = load_dataset(DataConfig(**kw))
    assert len(list(tmp_path.glob("jaxtrain-stream-*"))) == 1
    del ds
    gc.collect()
    assert not list(tmp_path.glob("jaxtrain-stream-*"))


def _labels_csv(path, labels):
    rng = np.random.default_rng(5)
    path.write_text("a,b,y\n" + "".join(f"{rng.normal():.5f},{rng.normal():.5f},{v}\n" for v in labels))
    return str(path)


# (labels, task, num_classes, expected task and class count by the documented rule)
TASK_CASES = {
    "auto_small_ints": ([i % 3 for i in range(90)], "auto", None, ("classification", 3)),
    "classification_no_num_classes": ([i % 4 for i in range(90)], "classification", None, ("classification", 4)),
    "auto_many_ints": ([i % 30 for i in range(90)], "auto", None, ("regression", None)),
    "auto_fractions": ([i / 7 for i in range(90)], "auto", None, ("regression", None)),
    "auto_num_classes": ([i % 3 for i in range(90)], "auto", 5, ("classification", 5)),
}


@pytest.mark.parametrize("case", list(TASK_CASES))
def test_streaming_decides_the_task_as_in_memory(tmp_path, case):
    labels, task, nc, expected = TASK_CASES[case]
    kw = dict(source="csv", path=_labels_csv(tmp_path / "t.csv", labels), target="y", task=task,
              num_classes=nc, cache_dir=str(tmp_path))
    a = load_dataset(DataConfig(**kw))
    b = load_dataset(DataConfig(backend="tfdata", streaming=True, **kw))
    assert (a.task, a.num_classes) == (b.task, b.num_classes) == expected
    assert (b.stats.task, b.stats.num_classes) == expected
    ay, by = batches(a, 16, 0, 0)[1], batches(b, 16, 0, 0)[1]
    assert ay.dtype == by.dtype
    np.testing.assert_allclose(ay, by, atol=1e-6)


def test_streaming_label_errors_read_as_in_memory(tmp_path):
    labels = [i % 3 for i in range(40)]
    labels[17] = 2.5
    kw = dict(source="csv", path=_labels_csv(tmp_path / "l.csv", labels), target="y", task="classification",
              val_fraction=0.0, test_fraction=0.0)
    with pytest.raises(DataError) as mem:
        load_dataset(DataConfig(**kw))
    with pytest.raises(DataError) as streamed:
        load_dataset(DataConfig(backend="tfdata", streaming=True, **kw))
    assert str(streamed.value) == str(mem.value)
    assert "l.csv line 19 column 'y': label 2.5 is not an integer" in str(mem.value)


def test_streaming_refuses_text_labels_in_one_line(tmp_path):
    p = tmp_path / "pets.csv"
    p.write_text("a,y\n" + "".join(f"{i},{'dog' if i % 2 else 'cat'}\n" for i in range(20)))
    with pytest.raises(DataError, match=r"pets\.csv column 'y': text labels such as 'cat' are not supported "
                                         r"in streaming mode") as e:
        load_dataset(DataConfig(source="csv", path=str(p), target="y", backend="tfdata", streaming=True))
    assert "\n" not in str(e.value)
