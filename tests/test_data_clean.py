"""Cleaning rules, transforms and fitted statistics against hand-computed / NumPy answers."""

import json
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

from jaxtrain.data import load_dataset, load_stats, summary, write_artifacts
from jaxtrain.config.data import CleanConfig, DataConfig
from jaxtrain.data.preprocess import split_indices
from jaxtrain.data.transforms import hash_text


def load(tmp_path, header, rows, **kw):
    """Whole file into train (no val/test), no normalization, raw targets; rows sorted by y."""
    p = tmp_path / "c.csv"
    p.write_text("\n".join([header] + rows) + "\n")
    kw.setdefault("normalize", "none")
    cfg = DataConfig(source="csv", path=str(p), target="y", val_fraction=0.0, test_fraction=0.0,
                     standardize_target=False, task="regression", **kw)
    ds = load_dataset(cfg)
    order = np.argsort(ds.train.y)
    return ds, ds.train.x[order], ds.train.y[order]


def test_duplicates_removed_and_counted(tmp_path):
    rows = ["1,2,10", "1,2,10", "3,4,20", "1,2,11", "3,4,20", "3,4,20"]
    ds, x, y = load(tmp_path, "a,b,y", rows)
    assert y.tolist() == [10, 11, 20] and ds.report["duplicates"]["rows_dropped"] == 3
    ds, _, y = load(tmp_path, "a,b,y", rows, clean=CleanConfig(duplicates=False))
    assert len(y) == 6


@pytest.mark.parametrize("rule", ["median", "mean", "most_frequent", "constant"])
def test_missing_imputation(tmp_path, rule):
    rows = ["1,1", "NA,2", "3,3", "10,4", "1,5"]
    vals = {"median": np.median([1, 3, 10, 1]), "mean": np.mean([1, 3, 10, 1]), "most_frequent": 1.0,
            "constant": -7.0}
    ds, x, y = load(tmp_path, "a,y", rows, clean=CleanConfig(missing=rule, fill_value=-7.0))
    np.testing.assert_allclose(x[:, 0], [1, vals[rule], 3, 10, 1], rtol=1e-6)
    assert ds.report["missing"]["per_column"] == {"a": 1}


def test_missing_drop_counts_rows(tmp_path):
    ds, x, y = load(tmp_path, "a,b,y", ["1,,1", "2,2,2", "null,NaN,3", "4,4,4"], clean=CleanConfig(missing="drop"))
    assert y.tolist() == [2, 4]
    rep = ds.report["missing"]
    assert rep["rows_dropped"] == 2 and rep["per_column"] == {"a": 1, "b": 2}


def test_outliers_iqr_clip(tmp_path):
    ds, x, y = load(tmp_path, "a,y", ["1,1", "2,2", "3,3", "4,4", "100,5"], clean=CleanConfig(outliers="iqr"))
    q1, q3 = 2.0, 4.0                      # np.percentile([1,2,3,4,100], [25, 75])
    np.testing.assert_allclose(x[:, 0], [1, 2, 3, 4, q3 + 1.5 * (q3 - q1)])
    assert ds.report["outliers"]["per_column"] == {"a": 1}
    assert ds.stats.outliers.bounds == [[q1 - 3.0, q3 + 3.0]]


def test_outliers_zscore_drop(tmp_path):
    rows = [f"0,{i}" for i in range(9)] + ["10,9"]      # mean 1, std 3: bounds [-3.5, 5.5] at t=1.5
    ds, x, y = load(tmp_path, "a,y", rows, clean=CleanConfig(outliers="zscore", outlier_action="drop",
                                                            zscore_threshold=1.5))
    assert y.tolist() == list(range(9)) and ds.report["outliers"]["rows_dropped"] == 1
    np.testing.assert_allclose(ds.stats.outliers.bounds, [[-3.5, 5.5]])


def test_log_transform(tmp_path):
    ds, x, y = load(tmp_path, "a,b,y", ["0,5,1", "9,5,2", "99,6,3"], log_columns=("a",))
    np.testing.assert_allclose(x[:, 0], np.log1p([0, 9, 99]), rtol=1e-6)
    np.testing.assert_allclose(x[:, 1], [5, 5, 6])


def test_invalid_labels_drop_text_and_regression(tmp_path):
    ds, x, y = load(tmp_path, "a,y", ["1,1", "2,", "3,3"], clean=CleanConfig(invalid_labels="drop"))
    assert y.tolist() == [1, 3] and ds.report["invalid_labels"]["rows_dropped"] == 1


def test_eval_rows_never_dropped(tmp_path):
    xtr = np.array([[1.0], [2.0], [np.nan], [4.0]])
    xte = np.array([[np.nan], [100.0], [3.0]])
    np.savez(tmp_path / "e.npz", x_train=xtr, y_train=np.array([0, 1, 0, 1]), x_test=xte, y_test=np.array([0, 1, 1]))
    ds = load_dataset(DataConfig(source="npz", path=str(tmp_path / "e.npz"), val_fraction=0.0, normalize="none",
                                 clean=CleanConfig(missing="drop", outliers="zscore", outlier_action="drop")))
    assert len(ds.train) == 3 and len(ds.test) == 3      # train lost the NaN row; test keeps every row
    np.testing.assert_allclose(ds.test.x[:, 0], [2.0, 100.0, 3.0])   # imputed with the train median
    assert ds.report["missing"]["imputed"]["test"] == 1


def test_one_hot_unseen_category_maps_to_zeros(tmp_path):
    n = 20
    _, _, te = split_indices(n, 0.0, 0.25, 0)
    cats = np.array(["a", "b"] * 10, dtype=object)
    cats[te[0]] = "z"
    p = tmp_path / "u.csv"
    p.write_text("c,v,y\n" + "".join(f"{cats[i]},{i},{i}\n" for i in range(n)))
    ds = load_dataset(DataConfig(source="csv", path=str(p), target="y", val_fraction=0.0, test_fraction=0.25,
                                 task="regression", standardize_target=False))
    assert ds.stats.categories == {"c": ["a", "b"]}
    row = int(np.flatnonzero(ds.test.y == te[0])[0])
    assert ds.test.x[row, 1:].tolist() == [0.0, 0.0]
    assert ds.report["unseen_categories"] == {"test": {"c": 1}}


def test_hashed_text_deterministic_and_independent():
    texts = np.array(["The cat sat", "the CAT sat on the mat", ""], dtype=object)
    h = hash_text(texts, 32)
    expect = np.zeros((3, 32))
    for i, t in enumerate(texts):
        for w in t.lower().split():
            expect[i, zlib.crc32(w.encode()) % 32] += 1
    expect[:2] /= np.linalg.norm(expect[:2], axis=1, keepdims=True)
    np.testing.assert_allclose(h, expect)
    code = ("import numpy as np; from jaxtrain.data.transforms import hash_text; "
            "print(hash_text(np.array(['the cat sat'], dtype=object), 32).argmax())")
    env = dict(os.environ, PYTHONHASHSEED="123")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert int(out.stdout) == int(h[0].argmax())


@pytest.mark.parametrize("kind,scope", [("zscore", "feature"), ("minmax", "feature"), ("minmax_sym", "global"),
                                        ("zscore", "global")])
def test_normalization_fit_on_train_only(tmp_path, kind, scope):
    rng = np.random.default_rng(0)
    xtr, xte = rng.normal(3, 2, (30, 4)) * [1, 10, 100, 0.1], rng.normal(0, 1, (6, 4))
    ytr, yte = rng.integers(0, 2, 30), rng.integers(0, 2, 6)
    np.savez(tmp_path / "n.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    cfg = DataConfig(source="npz", path=str(tmp_path / "n.npz"), val_fraction=0.0, normalize=kind,
                     normalize_scope=scope)
    ds = load_dataset(cfg)
    data = xtr.reshape(-1) if scope == "global" else xtr
    if kind == "zscore":
        shift, scale = data.mean(0), data.std(0)
    elif kind == "minmax":
        shift, scale = data.min(0), data.max(0) - data.min(0)
    else:
        shift, scale = (data.max(0) + data.min(0)) / 2, (data.max(0) - data.min(0)) / 2
    np.testing.assert_allclose(ds.test.x, (xte - shift) / scale, rtol=1e-5, atol=1e-5)
    # changing only the test data leaves the statistics unchanged
    np.savez(tmp_path / "n.npz", x_train=xtr, y_train=ytr, x_test=xte * 50 + 7, y_test=yte)
    assert load_dataset(cfg).stats == ds.stats
    np.savez(tmp_path / "n.npz", x_train=xtr + 1, y_train=ytr, x_test=xte, y_test=yte)
    assert load_dataset(cfg).stats != ds.stats


def test_artifacts_roundtrip_and_stats_reuse(tmp_path):
    cfg = DataConfig(source="synthetic", name="house_prices", clean=CleanConfig(outliers="iqr"))
    ds = load_dataset(cfg)
    write_artifacts(ds, tmp_path)
    assert json.loads((tmp_path / "preprocess_report.json").read_text()) == ds.report
    stats = load_stats(tmp_path)
    # different data, saved statistics: transformed exactly as in training
    other = load_dataset(DataConfig(source="synthetic", name="house_prices", seed=5), stats=stats)
    assert other.stats.normalize == ds.stats.normalize and other.target_mean == ds.target_mean
    again = load_dataset(cfg, stats=stats)
    np.testing.assert_array_equal(again.test.x, ds.test.x)
    np.testing.assert_allclose(ds.to_original_units(ds.test.y) , again.to_original_units(again.test.y))
    assert "duplicate rows dropped" in summary(ds)
