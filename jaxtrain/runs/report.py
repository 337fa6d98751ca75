"""`jaxtrain report DIR`: plots and a markdown summary of a finished run, written into DIR.

- `curves.png`: training and validation curves per metric, from metrics.jsonl;
- classification: `confusion_matrix.png` (+ `.csv`), and for images `samples.png`,
  a 5x5 grid of test images titled with the predicted label, mistakes in red;
- regression: `regression.png`, predicted against actual and residuals, in the
  target's original units;
- `report.md` tying them together with the final metrics.

Test-split predictions come from the saved parameters and preprocessing
(`trained.load_trained`), exactly as `jaxtrain eval` computes them; a run that kept no
checkpoint gets the curves and the metrics only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from jaxtrain.data.featurestats import FeatureStats
from jaxtrain.util import plots
from jaxtrain.util.errors import Arg, UserError

CURVE_METRICS = ("loss", "accuracy", "mse", "mae", "r2")


def read_summary(run_dir: Path) -> dict:
    """The run's summary.json; {} when the run did not finish (no summary yet)."""
    path = run_dir / "summary.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read the run's summary ({e}); remove it to write "
                        f"the report without the final metrics") from None


def read_history(run_dir: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{metric: {'train': [(epoch, value)], 'val': [...]}} from metrics.jsonl."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"'{run_dir}' has no metrics.jsonl; pass the ", Arg("workdir"), " of a training run")
    history: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for line in path.read_text().splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a killed run
        if event.get("event") == "train":
            split = "train"
        elif event.get("event") == "eval" and event.get("split") == "val":
            split = "val"
        else:
            continue
        for m in CURVE_METRICS:
            if isinstance(event.get(m), (int, float)):
                history.setdefault(m, {"train": [], "val": []})[split].append((event["epoch"], event[m]))
    return history


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class; counts."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (y_true.astype(np.int64), y_pred.astype(np.int64)), 1)
    return matrix


def sample_indices(pred: np.ndarray, y: np.ndarray, total: int = 25, max_mistakes: int = 8) -> np.ndarray:
    """Test examples to show: the first few mistakes (so the grid shows what goes wrong),
    then the first correct ones, kept in test order."""
    wrong = np.flatnonzero(pred != y)[:max_mistakes]
    right = np.flatnonzero(pred == y)[:total - len(wrong)]
    return np.sort(np.concatenate([wrong, right]))


def display_images(x: np.ndarray, stats: FeatureStats, image_shape: tuple[int, ...]) -> np.ndarray:
    """Normalized model inputs back to pixel values (the saved normalization inverted)."""
    from jaxtrain.data.user_input import invert_normalizer
    images = invert_normalizer(x, stats).reshape(len(x), *image_shape)
    if images.ndim == 4 and images.shape[-1] == 3:   # colour: imshow wants [0, 1]
        low, high = images.min(), images.max()
        return (images - low) / (high - low if high > low else 1.0)
    return images[..., 0] if images.ndim == 4 and images.shape[-1] == 1 else images


def _metrics_table(summary: dict, final_train: dict | None) -> list[str]:
    """Final metrics per split, only the columns some split has. The train row is the final
    parameters on the training split when they could be loaded (`final_train`), else the
    last epoch's running averages from the summary."""
    rows = {"train": final_train or summary.get("train") or {}, "val": summary.get("val") or {},
            "test": summary.get("test") or {}}
    shown = [m for m in CURVE_METRICS if any(isinstance(v.get(m), (int, float)) for v in rows.values())]
    lines = ["| split | " + " | ".join(shown) + " |", "|" + " --- |" * (len(shown) + 1)]
    for split, values in rows.items():
        if any(m in values for m in shown):
            lines.append(f"| {split} | " + " | ".join(
                f"{values[m]:.4g}" if isinstance(values.get(m), (int, float)) else "" for m in shown) + " |")
    how = ("the final parameters evaluated on the training split, as val and test are" if final_train else
           "the last epoch's running average while the parameters changed (no checkpoint to evaluate)")
    return lines + ["", f"train: {how}."]


def curve_titles(summary: dict) -> dict[str, str]:
    """Panel titles that name the unit where the metric's name does not: a regression's loss
    is on the standardized target, its mse and mae in the target's units."""
    if summary.get("task") != "regression":
        return {}
    return {"loss": "loss (standardized target)", "mse": "mse (target units squared)",
            "mae": "mae (target units)"}


def restored_epoch(summary: dict) -> int | None:
    """The epoch whose parameters early stopping put back, if it did."""
    stopping = summary.get("early_stopping") or {}
    return stopping.get("best_epoch") if stopping.get("restored_best") else None


def write_report(run_dir: str | Path, model=None) -> list[Path]:
    """Write the PNGs and report.md into `run_dir`; return the paths written, report.md last.

    The curves come from metrics.jsonl alone, so a run that kept no checkpoint still gets
    them; the test-split figures need its saved parameters (and, for a run trained with a
    Python model, a new instance of that `model`)."""
    from jaxtrain.ckpt.checkpoint import has_checkpoint
    from jaxtrain.runs.trained import load_trained
    plots.require_matplotlib()
    run = Path(run_dir)
    history = read_history(run)
    summary = read_summary(run)
    trained = load_trained(run, model=model) if has_checkpoint(run / "checkpoints") else None
    written: list[Path] = []
    md = [f"# Run report: {summary.get('config_name') or run.name}", "", f"Run directory: `{run}`.", ""]
    md += ["## Final metrics", ""] + _metrics_table(summary, _final_train(trained)) + [""]
    if history:
        plots.curves(history, run / "curves.png", curve_titles(summary), restored_epoch(summary))
        written.append(run / "curves.png")
        md += ["## Training and validation curves", "", "![curves](curves.png)", ""]
    if trained is not None:
        md += _test_figures(run, trained, written)
    else:
        md += ["No checkpoint was kept (checkpoint.enabled: false), so there are no test-split figures.", ""]
    path = run / "report.md"
    path.write_text("\n".join(md))
    return written + [path]


def _final_train(trained) -> dict | None:
    """The saved parameters' metrics on the training split (None without them, or when the
    training split is not in memory)."""
    train = trained.dataset.train if trained is not None else None
    if train is None or not len(train):
        return None
    return trained.evaluator.evaluate(trained.params, trained.rest, train)


def _test_figures(run: Path, trained, written: list[Path]) -> list[str]:
    """The test split's figures from the saved parameters; appends their paths to `written`."""
    ds, stats = trained.dataset, trained.dataset.stats
    md = [f"Task: {ds.task}; data: {ds.name} (train {ds.num_train}, val {len(ds.val) if ds.val else 0}, "
          f"test {len(ds.test)}).", ""]
    outputs = trained.outputs(ds.test.x)
    if ds.task == "classification":
        names = [str(c) for c in (stats.classes or range(ds.num_classes))]
        pred = outputs.argmax(1)
        matrix = confusion_matrix(ds.test.y, pred, ds.num_classes)
        np.savetxt(run / "confusion_matrix.csv", matrix, fmt="%d", delimiter=",",
                   header="rows: true class, columns: predicted class; classes " + " ".join(names))
        plots.confusion(matrix, names, run / "confusion_matrix.png")
        written += [run / "confusion_matrix.png", run / "confusion_matrix.csv"]
        per_class = np.diag(matrix) / np.maximum(matrix.sum(1), 1)
        md += ["## Confusion matrix (test)", "", "![confusion matrix](confusion_matrix.png)", "",
               "| class | test examples | recall |", "| --- | --- | --- |"]
        md += [f"| {n} | {int(matrix[i].sum())} | {per_class[i]:.3f} |" for i, n in enumerate(names)]
        md.append("")
        if ds.image_shape:
            pick = sample_indices(pred, ds.test.y)
            images = display_images(ds.test.x[pick], stats, ds.image_shape)
            plots.image_grid(images, pred[pick], ds.test.y[pick], names, run / "samples.png")
            written.append(run / "samples.png")
            md += ["## Test images", "", f"{len(pick)} test images (the first mistakes, up to 8, then the "
                   "first correct ones, in test order), titled with the predicted label; mistakes in red, "
                   "with the true label.", "", "![samples](samples.png)", ""]
    else:
        actual = ds.to_original_units(ds.test.y.astype(np.float64)).reshape(len(ds.test), -1)[:, 0]
        predicted = ds.to_original_units(outputs.astype(np.float64)).reshape(len(ds.test), -1)[:, 0]
        target = trained.cfg.data.target or "target"
        plots.regression(actual, predicted, target, run / "regression.png")
        written.append(run / "regression.png")
        md += ["## Predictions (test)", "", "![predicted vs actual and residuals](regression.png)", ""]
    return md
