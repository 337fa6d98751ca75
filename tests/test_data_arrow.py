"""CSV through Arrow: delimiters, quoted newlines, missing markers, non-finite values; streaming on
the NumPy backend with every cleaning rule; the versioned statistics record."""

import json

import numpy as np
import pytest

from jaxtrain.config.data import CleanConfig, DataConfig
from jaxtrain.data import load_dataset, load_stats, write_artifacts
from jaxtrain.data.featurestats import FeatureStats
from jaxtrain.util.errors import DataError


def rows_csv(n=300, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = "" if i % 11 == 0 else f"{rng.normal(10, 3) * (15 if i % 37 == 0 else 1):.4f}"
        b = "NA" if i % 13 == 0 else f"{rng.exponential(2):.4f}"
        city = ["north", "south", "east"][i % 3] if i % 17 else "null"
        out.append([a, b, city, f"{rng.integers(0, 3)}"])
    return ["a", "b", "city", "y"], out + out[:7]           # 7 exact duplicates


def write(path, header, rows, sep=","):
    path.write_text("\n".join(sep.join(r) for r in [header] + rows) + "\n")
    return str(path)


def cfg(path, **kw):
    kw.setdefault("val_fraction", 0.1)
    return DataConfig(source="csv", path=path, target="y", task="classification", **kw)


@pytest.mark.parametrize("sep", [";", "\t", "|"])
def test_delimiter_sniffed_from_the_header_and_reported(tmp_path, sep):
    header, rows = rows_csv()
    a = load_dataset(cfg(write(tmp_path / "c.csv", header, rows)))
    b = load_dataset(cfg(write(tmp_path / "s.csv", header, rows, sep)))
    assert b.report["delimiter"] == sep and a.report["delimiter"] == ","
    np.testing.assert_array_equal(a.train.x, b.train.x)
    np.testing.assert_array_equal(a.test.x, b.test.x)
    c = load_dataset(cfg(str(tmp_path / "s.csv"), delimiter=sep))    # set explicitly: not "sniffed"
    assert "delimiter" not in c.report
    np.testing.assert_array_equal(a.train.x, c.train.x)


def test_quoted_newlines_and_markers_in_any_case(tmp_path):
    lines = ["note,v,y", '"two\nlines, with a comma",1,0', "plain,nA,1", "x, NULL ,0", "y,n/A,1", "z,4,0",
             "w,None,1", "q,5,0", "r,oops,1"]
    p = tmp_path / "q.csv"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"q\.csv line 10 column 'v': 'oops' is not a number") as e:
        load_dataset(cfg(str(p), val_fraction=0.0, test_fraction=0.0))
    assert "\n" not in str(e.value)
    p.write_text("\n".join(lines[:-1]) + "\n")
    ds = load_dataset(cfg(str(p), val_fraction=0.0, test_fraction=0.0, normalize="none",
                          clean=CleanConfig(duplicates=False)))
    assert ds.report["missing"]["per_column"] == {"v": 4}
    assert sorted(np.unique(ds.train.x[:, 0]).tolist()) == [1.0, 4.0, 5.0]   # missing -> median 4


def test_non_finite_values_count_as_missing(tmp_path):
    vals = ["1", "inf", "3", "-Infinity", "10", "2", "INF", "7"]
    p = write(tmp_path / "i.csv", ["a", "y"], [[v, str(i % 2)] for i, v in enumerate(vals)])
    ds = load_dataset(cfg(p, val_fraction=0.0, test_fraction=0.0, normalize="none"))
    miss = ds.report["missing"]
    assert miss["non_finite"] == {"a": 3} and miss["per_column"] == {"a": 3} and miss["imputed"]["train"] == 3
    finite = [1, 3, 10, 2, 7]
    assert np.isfinite(ds.train.x).all()
    assert sorted(ds.train.x[:, 0].tolist()) == sorted(finite + [np.median(finite)] * 3)
    dropped = load_dataset(cfg(p, val_fraction=0.0, test_fraction=0.0, clean=CleanConfig(missing="drop")))
    assert dropped.num_train == 5 and dropped.report["missing"]["rows_dropped"] == 3


def test_an_infinite_target_is_refused_naming_line_and_column(tmp_path):
    p = write(tmp_path / "t.csv", ["a", "y"], [[str(i), str(i * 0.5)] for i in range(20)] + [["3", "inf"]])
    with pytest.raises(DataError, match=r"t\.csv line 22 column 'y': target is infinite"):
        load_dataset(DataConfig(source="csv", path=p, target="y", task="regression", val_fraction=0.0,
                                test_fraction=0.0))


@pytest.mark.parametrize("streaming", [False, True], ids=["in_memory", "streamed"])
def test_missing_markers_in_a_category_column_are_missing_not_categories(tmp_path, streaming):
    """NA, n/a, null and empty (any case, any padding) in a category column are missing values,
    imputed with the most frequent category; only red and blue are categories."""
    colors = ["red", "NA", "blue", "n/a", "red", "", " N/A ", "blue", "red", "null", "na", "red"]
    rows = [[c, str(i % 3), str(i)] for i, c in enumerate(colors)]
    p = write(tmp_path / "k.csv", ["color", "v", "y"], rows)
    ds = load_dataset(DataConfig(source="csv", path=p, target="y", task="regression", val_fraction=0.0,
                                 test_fraction=0.0, normalize="none", standardize_target=False,
                                 columns={"color": "category"}, streaming=streaming,
                                 cache_dir=str(tmp_path), clean=CleanConfig(missing="most_frequent",
                                                                            duplicates=False)))
    assert ds.stats.categories == {"color": ["blue", "red"]}
    assert ds.report["missing"]["per_column"] == {"color": 6}
    filled = [c if c in ("red", "blue") else "red" for c in colors]
    assert ds.stats.feature_names == ["v", "color=blue", "color=red"]
    expected = np.array([[i % 3, float(c == "blue"), float(c == "red")] for i, c in enumerate(filled)])
    if streaming:
        x, y, mask = map(np.concatenate, zip(*ds.train_batches(5, 0, 0)))
        x, y = x[mask > 0], y[mask > 0]
    else:
        x, y = ds.train.x, ds.train.y
    order = np.argsort(y)
    np.testing.assert_array_equal(y[order], np.arange(len(colors)))
    np.testing.assert_allclose(x[order], expected)


RULES = [CleanConfig(missing="median"), CleanConfig(missing="most_frequent", outliers="iqr"),
         CleanConfig(missing="drop", outliers="zscore", outlier_action="drop"),
         CleanConfig(missing="mean", outliers="iqr", outlier_action="drop", iqr_k=1.0)]


@pytest.mark.parametrize("clean", RULES, ids=["median", "most_frequent_iqr", "drop_zscore_drop", "mean_iqr_drop"])
def test_streaming_on_numpy_applies_every_rule_as_in_memory(tmp_path, clean):
    header, rows = rows_csv()
    p = write(tmp_path / "m.csv", header, rows)
    kw = dict(clean=clean, log_columns=("b",), cache_dir=str(tmp_path))
    a = load_dataset(cfg(p, **kw))
    b = load_dataset(cfg(p, streaming=True, **kw))
    assert b.streaming and b.train is None and b.num_train == len(a.train)
    for key in ("rows_in", "rows_out", "duplicates", "missing", "outliers", "unseen_categories"):
        assert b.report[key] == a.report[key], key
    assert b.stats == a.stats
    for epoch in (0, 1):
        ax, ay, am = map(np.concatenate, zip(*a.train_batches(32, 3, epoch)))
        bx, by, bm = map(np.concatenate, zip(*b.train_batches(32, 3, epoch)))
        np.testing.assert_allclose(ax, bx, atol=1e-6)
        np.testing.assert_array_equal(ay, by)
        np.testing.assert_array_equal(am, bm)
    np.testing.assert_allclose(a.test.x, b.test.x, atol=1e-6)
    np.testing.assert_allclose(a.val.x, b.val.x, atol=1e-6)


def test_stats_record_round_trip_old_version_read_unknown_refused(tmp_path):
    header, rows = rows_csv()
    ds = load_dataset(cfg(write(tmp_path / "c.csv", header, rows), clean=CleanConfig(outliers="iqr")))
    write_artifacts(ds, tmp_path)
    saved = json.loads((tmp_path / "stats.json").read_text())
    assert saved["version"] == 2 and load_stats(tmp_path) == ds.stats
    old = dict(saved, version=1, target={"mean": 0.0, "scale": 1.0})    # the untyped dict of version 1
    old.pop("target_mean"), old.pop("target_scale")
    assert FeatureStats.from_dict(old, "x") == ds.stats
    (tmp_path / "stats.json").write_text(json.dumps(dict(saved, version=99)))
    with pytest.raises(DataError, match=r"stats\.json: preprocessing statistics of version 99") as e:
        load_stats(tmp_path)
    assert "\n" not in str(e.value)
