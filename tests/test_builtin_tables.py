"""The five built-in tables ship as package data (jaxtrain/data/tables/*.npz), not through
scikit-learn: their shapes, label counts and known rows are the published ones, and they
equal scikit-learn's arrays where scikit-learn is installed."""

import sys

import numpy as np
import pytest

from jaxtrain.config.data import DataConfig
from jaxtrain.data import load_dataset
from jaxtrain.data.sources import builtin_table

# (rows, features, examples per class) as the data sets' own descriptions give them.
PUBLISHED = {
    "digits": (1797, 64, [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]),
    "iris": (150, 4, [50, 50, 50]),
    "wine": (178, 13, [59, 71, 48]),
    "breast_cancer": (569, 30, [212, 357]),   # malignant, benign
    "diabetes": (442, 10, None),
}
FIRST_ROW = {"iris": [5.1, 3.5, 1.4, 0.2], "wine": [14.23, 1.71, 2.43, 15.6],
             "breast_cancer": [17.99, 10.38, 122.8, 1001.0]}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_tables_have_the_published_shape_and_labels(name):
    t = builtin_table(name)
    rows, features, counts = PUBLISHED[name]
    assert t["x"].shape == (rows, features) and t["y"].shape == (rows,)
    assert len(t["feature_names"]) == features
    if counts is not None:
        assert np.bincount(t["y"]).tolist() == counts
    if name in FIRST_ROW:
        np.testing.assert_array_equal(t["x"][0, :4], FIRST_ROW[name])


def test_digits_are_8x8_images_of_values_0_to_16():
    x = builtin_table("digits")["x"].astype(np.float64)
    assert x.min() == 0 and x.max() == 16 and np.array_equal(x, np.round(x))


def test_diabetes_columns_are_centred_with_unit_sum_of_squares():
    """The diabetes features are mean-centred and scaled to a sum of squares of 1 per column;
    its target is a disease-progression score from 25 to 346."""
    t = builtin_table("diabetes")
    np.testing.assert_allclose(t["x"].sum(0), 0, atol=1e-12)
    np.testing.assert_allclose((t["x"] ** 2).sum(0), 1, rtol=1e-6)
    assert (t["y"].min(), t["y"].max()) == (25, 346)


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_tables_equal_scikit_learns(name):
    datasets = pytest.importorskip("sklearn.datasets")
    d, t = getattr(datasets, f"load_{name}")(), builtin_table(name)
    np.testing.assert_array_equal(t["x"].astype(np.float64), d.data)
    np.testing.assert_array_equal(t["y"], d.target)
    assert list(t["feature_names"]) == [str(n) for n in d.feature_names]


def test_builtin_source_loads_without_scikit_learn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)   # `import sklearn` now fails
    ds = load_dataset(DataConfig(source="builtin", name="wine", val_fraction=0.0))
    assert ds.task == "classification" and ds.num_classes == 3
    assert len(ds.train) + len(ds.test) == 178 and ds.feature_shape == (13,)
