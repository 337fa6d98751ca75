"""Parquet / Arrow sources (a file, a directory, a glob; in memory and streamed) against the
same table read from CSV, and separate validation/test files (data.val_path / test_path)."""

import csv
import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from jaxtrain.cli.main import main
from jaxtrain.config.data import DataConfig
from jaxtrain.data import load_dataset
from jaxtrain.runs.api import train
from jaxtrain.runs.predict import predict
from jaxtrain.util.errors import ConfigError, DataError
from jaxtrain.util.events import Console


def table(n=600, seed=0):
    """Two numeric columns (one with nulls), a category column with nulls, an integer label."""
    rng = np.random.default_rng(seed)
    a = rng.normal(10, 3, n)
    a[::11] = np.nan
    b = rng.exponential(2, n)
    city = np.array(["north", "south", "east"], object)[rng.integers(0, 3, n)]
    city[::17] = None
    y = (np.nan_to_num(a, nan=10) > 10).astype(np.int64) + (b > 2) + (city == "north")
    return pa.table({"a": pa.array(a, from_pandas=True), "b": b, "city": pa.array(city, pa.string()),
                     "y": np.minimum(y, 2)})


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("parquet")
    t = table()
    pq.write_table(t, d / "t.parquet", row_group_size=128)       # several row groups
    (d / "dir").mkdir()
    for k, (start, stop) in enumerate([(0, 150), (150, 420), (420, 600)]):  # name order = row order
        pq.write_table(t.slice(start, stop - start), d / "dir" / f"part-{k}.parquet", row_group_size=100)
    feather.write_feather(t, str(d / "t.feather"))
    pcsv.write_csv(t, d / "t.csv")
    return d


def cfg(path, source="parquet", **kw):
    return DataConfig(source=source, path=str(path), target="y", task="classification", **kw)


@pytest.mark.parametrize("where", ["t.parquet", "dir", "dir/*.parquet", "t.feather"])
def test_parquet_reads_the_same_table_as_csv(files, where):
    a = load_dataset(cfg(files / "t.csv", "csv"))
    b = load_dataset(cfg(files / where))
    for key in ("rows_in", "rows_out", "duplicates", "missing", "unseen_categories"):
        assert b.report[key] == a.report[key], key
    assert b.stats.categories == a.stats.categories and b.stats.fills == a.stats.fills
    np.testing.assert_allclose(b.train.x, a.train.x, rtol=1e-6)
    np.testing.assert_array_equal(b.train.y, a.train.y)
    np.testing.assert_allclose(b.test.x, a.test.x, rtol=1e-6)


def test_streamed_directory_equals_in_memory(files, tmp_path):
    a = load_dataset(cfg(files / "dir"))
    b = load_dataset(cfg(files / "dir", streaming=True, cache_dir=str(tmp_path)))
    assert b.streaming and b.num_train == len(a.train)
    for key in ("rows_in", "rows_out", "duplicates", "missing", "outliers", "unseen_categories"):
        assert b.report[key] == a.report[key], key
    assert b.stats == a.stats
    ax, ay, _ = map(np.concatenate, zip(*a.train_batches(64, 1, 0)))
    bx, by, _ = map(np.concatenate, zip(*b.train_batches(64, 1, 0)))
    np.testing.assert_allclose(bx, ax, atol=1e-6)
    np.testing.assert_array_equal(by, ay)
    np.testing.assert_allclose(b.test.x, a.test.x, atol=1e-6)


def _run(tmp_path, name, data):
    conf = {"name": name, "data": {"target": "y", "task": "classification", "batch_size": 32, **data},
            "model": {"hidden_sizes": [8]}, "train": {"epochs": 2}, "parallel": {"data_axis_size": 1}}
    return train(conf, workdir=tmp_path / name, console=Console("none"))


def test_parquet_file_directory_and_streamed_train_to_the_csv_metrics(files, tmp_path):
    ref = _run(tmp_path, "csv", {"source": "csv", "path": str(files / "t.csv")})
    for name, data in [("file", {"path": str(files / "t.parquet")}), ("dir", {"path": str(files / "dir")}),
                       ("stream", {"path": str(files / "dir"), "streaming": True, "cache_dir": str(tmp_path)})]:
        got = _run(tmp_path, name, {"source": "parquet", **data})
        assert got["data"] == ref["data"], name
        assert got["test"]["accuracy"] == pytest.approx(ref["test"]["accuracy"], abs=1e-6), name
        assert got["test"]["loss"] == pytest.approx(ref["test"]["loss"], rel=1e-4), name
    rows = predict(tmp_path / "file", files / "dir")[1]        # predict reads Parquet too
    assert len(rows) == 600 and {r[1] for r in rows} <= {"0", "1", "2"}


def test_schema_types_decide_the_kinds_not_the_text(tmp_path):
    n = 40
    t = pa.table({"code": pa.array([str(i % 3) for i in range(n)]),   # digits, but a string column
                  "flag": pa.array([i % 2 == 0 for i in range(n)]),
                  "when": pa.array(np.arange(n).astype("datetime64[s]")), "y": np.arange(n) % 2})
    pq.write_table(t, tmp_path / "k.parquet")
    with pytest.raises(DataError, match=r"k\.parquet column 'when': type timestamp"):
        load_dataset(cfg(tmp_path / "k.parquet"))
    ds = load_dataset(cfg(tmp_path / "k.parquet", drop_columns=("when",)))
    assert ds.stats.numeric_columns == ["flag"] and ds.stats.categories == {"code": ["0", "1", "2"]}
    codes = pa.array([str(i % 3) if i != 5 else "x" for i in range(n)])            # declared numeric: parsed
    pq.write_table(t.drop_columns(["when"]).set_column(0, "code", codes), tmp_path / "d.parquet")
    with pytest.raises(DataError, match=r"d\.parquet row 5 column 'code': 'x' is not a number"):
        load_dataset(cfg(tmp_path / "d.parquet", columns={"code": "numeric"}))


def test_missing_and_unreadable_parquet_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="no such file or directory"):
        load_dataset(cfg(tmp_path / "nope.parquet"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .parquet"):
        load_dataset(cfg(tmp_path / "empty"))
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"bad\.parquet: cannot read as Parquet"):
        load_dataset(cfg(tmp_path / "bad.parquet"))


# ---------------------------------------------------------------- separate split files


def _csv_rows(n, seed):
    rng = np.random.default_rng(seed)
    return [[f"{rng.normal(0, 1):.5f}", rng.choice(["red", "green", "blue"]), str(rng.integers(0, 3))]
            for _ in range(n)]


def _write(path, rows, header=("x", "colour", "y")):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


def test_test_path_is_the_test_split_row_for_row(tmp_path):
    train_rows, test_rows = _csv_rows(200, 0), _csv_rows(50, 1)
    test_rows[3][1] = "purple"                                  # a category unseen in training
    kw = dict(val_fraction=0.1, test_fraction=0.3)
    ds = load_dataset(cfg(_write(tmp_path / "train.csv", train_rows), "csv", test_path=_write(
        tmp_path / "test.csv", test_rows), **kw))
    assert ds.report["rows_in"] == {"train": 180, "val": 20, "test": 50}   # the fraction is not used
    assert ds.report["split_files"] == {"test": str(tmp_path / "test.csv")}
    assert ds.report["unseen_categories"] == {"test": {"colour": 1}}
    # Independent answer: encode the test rows by hand with the training statistics.
    x = np.array([float(r[0]) for r in test_rows])
    norm = ds.stats.normalize
    np.testing.assert_allclose(ds.test.x[:, 0], (x - norm.shift[0]) / norm.scale[0], rtol=1e-5, atol=1e-6)
    cats = ds.stats.categories["colour"]
    hot = np.array([[r[1] == c for c in cats] for r in test_rows], np.float32)
    np.testing.assert_array_equal(ds.test.x[:, 1:], hot)
    np.testing.assert_array_equal(ds.test.y, [int(r[2]) for r in test_rows])
    # The encoder is fitted on the training file alone: the same statistics without the test file.
    alone = load_dataset(cfg(str(tmp_path / "train.csv"), "csv", val_fraction=0.1, test_fraction=0.0))
    assert alone.stats == ds.stats


def test_val_path_and_test_path_leave_all_of_path_for_training(tmp_path):
    p = _write(tmp_path / "a.csv", _csv_rows(100, 0))
    v = _write(tmp_path / "v.csv", [r[::-1] for r in _csv_rows(30, 2)], header=("y", "colour", "x"))  # any order
    t = _write(tmp_path / "t.csv", _csv_rows(40, 3))
    ds = load_dataset(cfg(p, "csv", val_path=v, test_path=t))
    assert ds.report["rows_in"] == {"train": 100, "val": 30, "test": 40}
    np.testing.assert_allclose(ds.val.x[:, 0] * ds.stats.normalize.scale[0] + ds.stats.normalize.shift[0],
                               [float(r[2]) for r in [r[::-1] for r in _csv_rows(30, 2)]], rtol=1e-5)


def test_a_label_unseen_in_training_is_an_error_naming_it_and_the_closest(tmp_path):
    rows = [[f"{i / 10}", "red", ["cat", "dog"][i % 2]] for i in range(40)]
    p = _write(tmp_path / "a.csv", rows)
    t = _write(tmp_path / "t.csv", rows[:5] + [["1.0", "red", "dgo"]])
    with pytest.raises(DataError, match=r"t\.csv line 7 column 'y': label 'dgo' is not one of the classes "
                                        r"seen in training \(cat, dog\); closest known: 'dog'"):
        load_dataset(cfg(p, "csv", test_path=t))


def test_split_files_on_parquet_and_npz_and_refused_where_unsupported(files, tmp_path):
    t = table()
    pq.write_table(t.slice(0, 500), tmp_path / "train.parquet")
    pq.write_table(t.slice(500), tmp_path / "test.parquet")
    ds = load_dataset(cfg(tmp_path / "train.parquet", test_path=str(tmp_path / "test.parquet")))
    assert ds.report["rows_in"]["test"] == 100 and ds.report["rows_in"]["train"] + ds.report["rows_in"]["val"] == 500
    x = np.arange(40, dtype=np.float64).reshape(20, 2)
    np.savez(tmp_path / "a.npz", x=x, y=np.arange(20) % 2)
    np.savez(tmp_path / "b.npz", x=x[:5] + 100, y=np.arange(5) % 2)
    ds = load_dataset(DataConfig(source="npz", path=str(tmp_path / "a.npz"), test_path=str(tmp_path / "b.npz"),
                                 normalize="none", val_fraction=0.0))
    np.testing.assert_array_equal(ds.test.x, x[:5] + 100)
    with pytest.raises(ConfigError, match="data.test_path"):
        DataConfig(source="builtin", test_path="x.csv").validate("data")


# ---------------------------------------------------------------- split files, streamed


@pytest.fixture(scope="module")
def split_files(tmp_path_factory):
    """train/val/test tables (different seeds) as CSV and Parquet; the val file's columns in
    another order, the test file holds a city training never saw."""
    d = tmp_path_factory.mktemp("splits")
    for name, n, seed in [("train", 600, 0), ("val", 120, 1), ("test", 150, 2)]:
        t = table(n, seed)
        if name == "test":
            city = np.array(t.column("city").to_pylist(), object)
            city[[4, 40, 99]] = "west"
            t = t.set_column(2, "city", pa.array(city, pa.string()))
        if name == "val":
            t = t.select(["y", "b", "city", "a"])
        pcsv.write_csv(t, d / f"{name}.csv")
        pq.write_table(t, d / f"{name}.parquet", row_group_size=100)    # several row groups
    return d


@pytest.mark.parametrize("given", [("val", "test"), ("test",)], ids=["val_and_test", "test_only"])
@pytest.mark.parametrize("source", ["csv", "parquet"])
def test_streamed_split_files_are_the_in_memory_splits(split_files, tmp_path, source, given):
    kw = {f"{s}_path": str(split_files / f"{s}.{source}") for s in given}
    a = load_dataset(cfg(split_files / f"train.{source}", source, **kw))
    b = load_dataset(cfg(split_files / f"train.{source}", source, streaming=True, cache_dir=str(tmp_path), **kw))
    assert b.streaming and b.num_train == len(a.train)
    for key in ("rows_in", "rows_out", "split_files", "duplicates", "missing", "unseen_categories"):
        assert b.report[key] == a.report[key], key
    assert b.report["rows_in"]["test"] == 150 and b.report["unseen_categories"] == {"test": {"city": 3}}
    # a split given as a file is not held out of the training file; the other one is
    assert b.report["rows_in"]["train"] + (0 if "val" in given else b.report["rows_in"]["val"]) == 600
    assert b.stats == a.stats
    ax, ay, _ = map(np.concatenate, zip(*a.train_batches(64, 1, 0)))
    bx, by, _ = map(np.concatenate, zip(*b.train_batches(64, 1, 0)))
    np.testing.assert_allclose(bx, ax, atol=1e-6)
    np.testing.assert_array_equal(by, ay)
    for split in ("val", "test"):
        np.testing.assert_allclose(getattr(b, split).x, getattr(a, split).x, atol=1e-6)
        np.testing.assert_array_equal(getattr(b, split).y, getattr(a, split).y)


def _train_file_normalizer(path):
    """z-score of the training file's numeric columns by NumPy: missing values filled with the
    column's median, as float32 (the encoder's output), mean and population std."""
    t = pq.read_table(path)
    shift, scale = [], []
    for name in ("a", "b"):
        col = t.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
        col = np.where(np.isnan(col), np.nanmedian(col), col).astype(np.float32).astype(np.float64)
        shift.append(col.mean())
        scale.append(col.std())
    return np.array(shift), np.array(scale)


@pytest.mark.parametrize("source", ["csv", "parquet"])
def test_a_streamed_run_with_split_files_fits_on_training_alone_and_tests_as_in_memory(split_files, tmp_path,
                                                                                          source):
    data = {"source": source, "path": str(split_files / f"train.{source}"),
            "val_path": str(split_files / f"val.{source}"), "test_path": str(split_files / f"test.{source}")}
    ref = _run(tmp_path, "memory", data)
    got = _run(tmp_path, "stream", {**data, "streaming": True, "cache_dir": str(tmp_path)})
    assert got["data"] == ref["data"] == {"train": 600, "val": 120, "test": 150}
    assert got["test"]["accuracy"] == pytest.approx(ref["test"]["accuracy"], abs=1e-6)
    assert got["test"]["loss"] == pytest.approx(ref["test"]["loss"], rel=1e-4)
    with open(tmp_path / "stream" / "stats.json") as f:
        stats = json.load(f)
    shift, scale = _train_file_normalizer(split_files / "train.parquet")
    np.testing.assert_allclose(stats["normalize"]["shift"], shift, rtol=1e-6)
    np.testing.assert_allclose(stats["normalize"]["scale"], scale, rtol=1e-6)
    assert stats["categories"]["city"] == ["east", "north", "south"]       # never the test file's 'west'
    leaked = _train_file_normalizer(split_files / "test.parquet")[0]        # the oracle tells files apart
    assert not np.allclose(leaked, shift, rtol=1e-3)
    with open(tmp_path / "stream" / "preprocess_report.json") as f:
        report = json.load(f)
    assert report["streaming"] and report["unseen_categories"] == {"test": {"city": 3}}


@pytest.mark.parametrize("source", ["csv", "parquet"])
def test_a_streamed_test_file_label_unseen_in_training_exits_2_naming_it(split_files, tmp_path, capsys, source):
    t = pq.read_table(split_files / "test.parquet")
    y = t.column("y").to_numpy().copy()
    y[7] = 7                                                   # training labels are 0..2
    t = t.set_column(3, "y", pa.array(y))
    bad = tmp_path / f"bad.{source}"
    pcsv.write_csv(t, bad) if source == "csv" else pq.write_table(t, bad)
    code = main(["train", "digits_mlp", "--set", f"data.source={source}", "--set",
                 f"data.path={split_files / f'train.{source}'}", "--set", f"data.test_path={bad}",
                 "--set", "data.target=y", "--set", "data.streaming=true", "--set", f"data.cache_dir={tmp_path}",
                 "--set", "train.epochs=1", "--set", "parallel.data_axis_size=1",
                 "--workdir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    where = "line 9 column 'y'" if source == "csv" else "row 7"         # the header is line 1
    assert f"bad.{source} {where}: label 7 is out of range [0, 3)" in err, err
