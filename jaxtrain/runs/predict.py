"""`jaxtrain predict`: a finished run applied to new raw inputs, predictions as CSV.

The inputs go through the run's saved preprocessing (stats.json, via
`jaxtrain.data.apply`) and the saved parameters (`trained.load_trained`). Output:
classification: `row, predicted, prob_<class>...`; regression: `row, predicted[_k]`
in the target's original units.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

from jaxtrain.data import apply as apply_stats
from jaxtrain.data.featurestats import FeatureStats
from jaxtrain.data.sources import read_idx, read_npz
from jaxtrain.util.errors import DataError, UserError


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _is_idx(path: Path) -> bool:
    name = path.name.removesuffix(".gz")
    return name.endswith("ubyte") or name.endswith(".idx")


def read_inputs(path: str | Path, stats: FeatureStats, data_cfg) -> np.ndarray:
    """Raw inputs, by the file's type: a CSV or Parquet/Arrow file or directory (columns as in
    training), an .npz ('x') or an IDX images file."""
    path = Path(path)
    if apply_stats.is_table_file(str(path)) and path.exists() and stats.feature_columns():
        return apply_stats.read_parquet_features(str(path), stats, data_cfg)
    if not path.is_file():
        raise DataError(f"{path}: input file not found; pass --input with an existing CSV, Parquet, .npz "
                        "or IDX file")
    if path.suffix == ".npz":
        arrays = read_npz(str(path))
        key = next((k for k in ("x", "x_test") if k in arrays), None)
        if key is None:
            raise DataError(f"{path}: needs an array 'x' of inputs; found: {', '.join(arrays) or 'none'}")
        x = arrays[key]
    elif _is_idx(path):
        x = read_idx(str(path))
    elif not stats.feature_columns():  # trained on arrays (images): a CSV has no columns to match
        raise DataError(f"{path}: this run was trained on images, not table columns; image runs take "
                        f"an IDX images file or an .npz with an array 'x' of images, not a CSV")
    else:
        return apply_stats.read_csv_features(str(path), stats, data_cfg)
    return apply_stats.array_features(x, stats, str(path))


def predictions_table(outputs: np.ndarray, stats: FeatureStats) -> tuple[list[str], list[list]]:
    """(header, rows) for the model's raw outputs, in user units."""
    n = len(outputs)
    if stats.task == "classification":
        probs = _softmax(outputs)
        names = [str(c) for c in (stats.classes or range(probs.shape[1]))]
        pred = probs.argmax(1)
        header = ["row", "predicted"] + [f"prob_{c}" for c in names]
        return header, [[i, names[pred[i]], *probs[i].tolist()] for i in range(n)]
    values = outputs.astype(np.float64).reshape(n, -1) * stats.target_scale + stats.target_mean
    header = ["row"] + (["predicted"] if values.shape[1] == 1 else [f"predicted_{k}" for k in range(values.shape[1])])
    return header, [[i, *values[i].tolist()] for i in range(n)]


def predict(run_dir: str | Path, input_path: str | Path, model=None) -> tuple[list[str], list[list]]:
    """Predictions for every example in `input_path`, as (header, rows). A run trained with a
    Python `model` (an `nnx.Module`) needs a new instance of it here."""
    from jaxtrain.runs.trained import load_trained
    trained = load_trained(run_dir, with_data=False, model=model)
    x = read_inputs(input_path, trained.stats, trained.cfg.data)
    return predictions_table(trained.outputs(x), trained.stats)


def predict_file(run_dir: str | Path, input_path: str | Path, output: str | Path | None = None) -> None:
    """Write the predictions as CSV to `output`, or to stdout."""
    if output is not None:
        _check_output(Path(output))      # before the work, not after it
    header, rows = predict(run_dir, input_path)
    if output is None:
        _write_csv(sys.stdout, header, rows)
        return
    try:
        with open(output, "w", newline="") as f:
            _write_csv(f, header, rows)
    except OSError as e:
        raise UserError(f"{output}: cannot write the predictions ({e.strerror or e})") from None
    print(f"wrote {len(rows)} predictions to {output}", file=sys.stderr)


def _check_output(output: Path) -> None:
    if output.is_dir():
        raise UserError(f"{output}: --output is a directory; give a file path such as "
                        f"{output / 'predictions.csv'}")
    if not output.parent.is_dir():
        raise UserError(f"{output}: --output folder {output.parent} does not exist; create it or choose "
                        "another path")


def _write_csv(stream, header: list[str], rows: list[list]) -> None:
    writer = csv.writer(stream)
    writer.writerow(header)
    writer.writerows(rows)
