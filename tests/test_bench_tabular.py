"""bench/tabular.py: its split, files and metrics against scikit-learn's own, and a --quick run
on a tiny synthetic table (only where LightGBM and XGBoost are installed: the bench extra)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_tabular", ROOT / "bench" / "tabular.py")
tabular = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tabular)


def _csv(path: Path, n: int, seed: int = 0) -> Path:
    """A small table: two numbers (one with missing values), a text column and a text class."""
    rng = np.random.default_rng(seed)
    rows = ["a,b,kind,label"]
    for i in range(n):
        a, b = rng.normal(), rng.normal()
        kind = ["red", "green", "blue"][i % 3]
        label = "yes" if a + (kind == "red") > 0.3 else "no"
        rows.append(f"{a:.4f},{'' if i % 7 == 0 else f'{b:.4f}'},\"{kind}\",\"{label}\"")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_metrics_agree_with_sklearn():
    from sklearn.metrics import accuracy_score, mean_squared_error
    rng = np.random.default_rng(1)
    y, p = rng.normal(size=50) * 1000, rng.normal(size=50) * 1000
    assert tabular.rmse(y, p) == pytest.approx(np.sqrt(mean_squared_error(y, p)), rel=1e-12)
    labels, guesses = rng.integers(0, 4, 60), rng.integers(0, 4, 60)
    assert tabular.accuracy(labels, guesses) == pytest.approx(accuracy_score(labels, guesses))


def test_split_is_the_issues_split_and_stratified_for_classes():
    from sklearn.model_selection import train_test_split
    y = np.array(["a"] * 30 + ["b"] * 70 + ["c"] * 100, dtype=object)
    train, test = tabular.split_indices(y, classes=True)
    rows = np.arange(len(y))
    want_train, want_test = train_test_split(rows, test_size=0.2, random_state=0, stratify=y)
    np.testing.assert_array_equal(train, want_train)
    np.testing.assert_array_equal(test, want_test)
    assert {c: int((y[test] == c).sum()) for c in "abc"} == {"a": 6, "b": 14, "c": 20}
    train, test = tabular.split_indices(np.arange(200.0), classes=False)
    np.testing.assert_array_equal(test, train_test_split(rows, test_size=0.2, random_state=0)[1])


def test_split_files_keep_the_source_lines(tmp_path):
    source = _csv(tmp_path / "t.csv", 40)
    columns = tabular.read_columns(source)
    assert tabular.is_classification(columns["label"]) and not tabular.is_classification(columns["a"])
    assert np.isnan(columns["b"][0]) and not np.isnan(columns["b"][1])
    train, test = tabular.split_indices(columns["label"], classes=True)
    out = tmp_path / "out"
    out.mkdir()
    train_file, test_file = tabular.write_split(source, train, test, out)
    lines = source.read_text().splitlines()
    got_train, got_test = train_file.read_text().splitlines(), test_file.read_text().splitlines()
    assert got_train[0] == got_test[0] == lines[0]
    assert got_train[1:] == [lines[1 + i] for i in train] and got_test[1:] == [lines[1 + i] for i in test]
    assert sorted(got_train[1:] + got_test[1:]) == sorted(lines[1:])


def test_text_codes_come_from_the_training_split_only():
    train = np.array(["b", "a", None, "b"], dtype=object)
    test = np.array(["a", "z", "b"], dtype=object)
    got_train, got_test, levels = tabular.codes(train, test)
    assert levels == ["a", "b"]
    np.testing.assert_array_equal(got_train, [1.0, 0.0, np.nan, 1.0])
    np.testing.assert_array_equal(got_test, [0.0, np.nan, 1.0])   # an unseen value is missing


@pytest.mark.skipif(importlib.util.find_spec("lightgbm") is None or importlib.util.find_spec("xgboost") is None,
                    reason="lightgbm and xgboost are in the bench extra, not the test extra")
def test_quick_run_scores_every_model(tmp_path):
    source = _csv(tmp_path / "tiny.csv", 300)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "tabular.py"), "--quick", "--out", str(out),
                           "--tables", f"{source}:label", "--recipe", str(ROOT / "configs" / "tabular.yaml")],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "tabular.json").read_text())["results"]["tiny"]
    assert result["metric"] == "accuracy" and result["rows"] == [240, 60]
    for model in tabular.MODELS:
        assert result["models"][model]["status"] == "ok", result["models"][model]
        assert 0.0 <= result["models"][model]["metric"] <= 1.0
    # the accuracy computed from `jaxtrain predict` is the one the run's own summary reports
    details = result["models"]["jaxtrain"]["details"]
    assert result["models"]["jaxtrain"]["metrics"][0] == pytest.approx(details["summary_test"][0], abs=1e-9)
    assert "| tiny | test accuracy |" in (out / "tabular.md").read_text()
