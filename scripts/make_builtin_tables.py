"""Write jaxtrain/data/tables/*.npz, the five built-in tables, from scikit-learn (run once).

jaxtrain ships these files as package data so that `pip install .` needs no scikit-learn.
Each file holds `x` (features; digits as uint8, whose values are the integers 0..16),
`y` (labels as uint8, or the regression target as float64) and `feature_names`.
tests/test_builtin_tables.py checks shapes, label counts and known rows, and compares
with scikit-learn's arrays where it is installed.

    python scripts/make_builtin_tables.py
"""

import pathlib

import numpy as np
import sklearn.datasets

OUT = pathlib.Path(__file__).resolve().parent.parent / "jaxtrain" / "data" / "tables"


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name in ("digits", "iris", "wine", "breast_cancer", "diabetes"):
        d = getattr(sklearn.datasets, f"load_{name}")()
        x = d.data.astype(np.uint8) if name == "digits" else d.data
        y = d.target.astype(np.uint8) if d.target.dtype.kind == "i" else d.target
        assert np.array_equal(x.astype(np.float64), d.data) and np.array_equal(y, d.target)
        names = np.array([str(n) for n in d.feature_names])
        np.savez_compressed(OUT / f"{name}.npz", x=x, y=y, feature_names=names)
        print(f"{OUT / name}.npz: {(OUT / f'{name}.npz').stat().st_size} bytes")


if __name__ == "__main__":
    main()
