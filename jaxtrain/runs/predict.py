"""`jaxtrain predict`: a finished run applied to new raw inputs, predictions as CSV.

The inputs go through the run's saved preprocessing (stats.json, via
`jaxtrain.data.user_input.read_input`, the one reader `eval --input` shares) and the saved
parameters (`trained.load_trained`). Output: classification: `row, [kept columns,]
predicted, prob_<class>...`; regression: `row, [kept columns,] predicted[_k]` in the
target's original units. What preprocessing had to guess (missing values filled, values
clipped, categories training never saw) is said on stderr, per column.
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import numpy as np

from jaxtrain.data import user_input
from jaxtrain.data.featurestats import FeatureStats
from jaxtrain.util.errors import UserError
from jaxtrain.util.events import write_out

PROBABILITY_DIGITS = 6      # significant digits of a printed probability (--full-precision: all)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def guessed(data: user_input.UserInput, stats: FeatureStats, fill_rule: str, where: str) -> list[str]:
    """One line per column where preprocessing filled, clipped or did not know values."""
    c, n, lines = data.counts, data.rows, []
    for name in stats.feature_columns():
        if c.missing.get(name):
            fill = stats.fills[name]
            shown = f"'{fill}'" if isinstance(fill, str) else f"{fill:g}"
            origin = user_input.FILL_ORIGIN.get(fill_rule, fill_rule) if not isinstance(fill, str) else \
                ("data.clean.fill_text" if fill_rule == "constant" else "the most frequent training value")
            lines.append(f"{where} column '{name}': {c.missing[name]} of {n} values missing, filled with "
                         f"{shown} ({origin})")
        if c.outliers.get(name) and stats.outliers.action == "clip":
            low, high = stats.outliers.bounds[stats.numeric_columns.index(name)]
            lines.append(f"{where} column '{name}': {c.outliers[name]} of {n} values outside the training "
                         f"bounds [{low:g}, {high:g}]" + (" after log1p" if name in stats.log_columns else "")
                         + ", clipped")
        if c.unseen.get(name):
            examples = ", ".join(f"'{v}'" for v in data.unseen.get(name, []))
            more = ", ..." if c.unseen[name] > len(data.unseen.get(name, [])) else ""
            lines.append(f"{where} column '{name}': {c.unseen[name]} of {n} values not seen in training, "
                         f"one-hot encoded as all zeros: {examples}{more}")
    return lines


def read_user_input(trained, path: str | Path, keep: list[str] | tuple = (),
                    labels: bool = False) -> user_input.UserInput:
    """`path` through the run's saved preprocessing, what it guessed said on stderr."""
    data = user_input.read_input(path, trained.stats, trained.cfg.data, keep=keep, labels=labels)
    for line in guessed(data, trained.stats, trained.cfg.data.clean.missing, str(path)):
        print(line, file=sys.stderr)
    return data


def predictions_table(outputs: np.ndarray, stats: FeatureStats, kept: dict[str, list[str]] | None = None
                      ) -> tuple[list[str], list[list]]:
    """(header, rows) for the model's raw outputs, in user units; `kept` columns after `row`."""
    n = len(outputs)
    kept = kept or {}
    ids = [[kept[k][i] for k in kept] for i in range(n)]
    if stats.task == "classification":
        probs = _softmax(outputs)
        names = [str(c) for c in (stats.classes or range(probs.shape[1]))]
        pred = probs.argmax(1)
        header = ["row", *kept, "predicted"] + [f"prob_{c}" for c in names]
        return header, [[i, *ids[i], names[pred[i]], *probs[i].tolist()] for i in range(n)]
    values = outputs.astype(np.float64).reshape(n, -1) * stats.target_scale + stats.target_mean
    header = ["row", *kept] + (["predicted"] if values.shape[1] == 1 else
                               [f"predicted_{k}" for k in range(values.shape[1])])
    return header, [[i, *ids[i], *values[i].tolist()] for i in range(n)]


def _check_kept(kept: list[str]) -> None:
    clash = [k for k in kept if k in ("row", "predicted") or k.startswith(("prob_", "predicted_"))]
    if clash:
        raise UserError(f"--keep {clash[0]}: the output has a column of that name; rename the column "
                        "in the input to keep it")


def predict(run_dir: str | Path, input_path: str | Path, model=None, keep: list[str] | tuple = ()
            ) -> tuple[list[str], list[list]]:
    """Predictions for every example in `input_path`, as (header, rows), full precision;
    `keep` columns of the input copied after `row`. A run trained with a Python `model`
    (an `nnx.Module`) needs a new instance of it here."""
    from jaxtrain.runs.trained import load_trained
    _check_kept(list(keep))
    trained = load_trained(run_dir, with_data=False, model=model)
    data = read_user_input(trained, input_path, keep)
    return predictions_table(trained.outputs(data.x), trained.stats, data.kept)


def predict_file(run_dir: str | Path, input_path: str | Path, output: str | Path | None = None,
                 keep: list[str] | tuple = (), full_precision: bool = False) -> None:
    """Write the predictions as CSV to `output`, or to stdout; probabilities to
    PROBABILITY_DIGITS significant digits unless `full_precision`."""
    if output is not None:
        _check_output(Path(output))      # before the work, not after it
    header, rows = predict(run_dir, input_path, keep=keep)
    if not full_precision:
        rows = _rounded_probabilities(header, rows)
    if output is None:  # all at once: a reader that leaves early (`| head`) just ends the output
        text = io.StringIO()
        _write_csv(text, header, rows)
        write_out(text.getvalue())
        return
    try:
        with open(output, "w", newline="") as f:
            _write_csv(f, header, rows)
    except OSError as e:
        raise UserError(f"{output}: cannot write the predictions ({e.strerror or e})") from None
    print(f"wrote {len(rows)} predictions to {output}", file=sys.stderr)


def _rounded_probabilities(header: list[str], rows: list[list]) -> list[list]:
    first = header.index("predicted") + 1 if "predicted" in header else len(header)
    if not all(h.startswith("prob_") for h in header[first:]):
        return rows
    return [row[:first] + [f"{p:.{PROBABILITY_DIGITS}g}" for p in row[first:]] for row in rows]


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
