"""`jaxtrain report`: the expected files, and a confusion matrix NumPy agrees with."""

import json
import struct

import numpy as np

from jaxtrain.runs.api import evaluate, load_trained, train
from jaxtrain.cli.main import main
from jaxtrain.util.events import Console
from jaxtrain.runs.report import read_history, sample_indices

PNG = b"\x89PNG\r\n\x1a\n"


def test_classification_report_on_digits_images(tmp_path):
    run = tmp_path / "digits"
    train("digits_mlp", workdir=run, console=Console("none"),
          overrides={"train.epochs": 2, "parallel.data_axis_size": 1, "model.hidden_sizes": [16]})
    assert main(["report", str(run)]) == 0
    for name in ("curves.png", "confusion_matrix.png", "samples.png"):
        assert (run / name).read_bytes()[:8] == PNG, name
    md = (run / "report.md").read_text()
    assert "![samples](samples.png)" in md and "confusion_matrix.png" in md

    trained = load_trained(run)
    assert trained.dataset.image_shape == (8, 8)
    y = trained.dataset.test.y
    pred = np.argmax(trained.outputs(trained.dataset.test.x), axis=1)
    want = np.bincount(y * 10 + pred, minlength=100).reshape(10, 10)
    got = np.loadtxt(run / "confusion_matrix.csv", delimiter=",", dtype=np.int64)
    np.testing.assert_array_equal(got, want)
    summary = json.loads((run / "summary.json").read_text())
    assert np.trace(got) / got.sum() == summary["test"]["accuracy"]

    history = read_history(run)
    assert [e for e, _ in history["loss"]["train"]] == [1, 2]
    assert [e for e, _ in history["accuracy"]["val"]] == [1, 2]


def test_sample_indices_put_mistakes_in_the_grid():
    y = np.zeros(100, np.int64)
    pred = y.copy()
    pred[[3, 50, 90]] = 1
    pick = sample_indices(pred, y)
    assert len(pick) == 25 and {3, 50, 90} <= set(pick.tolist())
    assert list(pick) == sorted(pick)


def test_regression_report(tmp_path, capsys):
    run = tmp_path / "houses"
    train("house_prices_linear", workdir=run, console=Console("none"),
          overrides={"train.epochs": 3, "parallel.data_axis_size": 1, "data.synthetic_rows": 300})
    assert main(["report", str(run)]) == 0
    assert (run / "regression.png").read_bytes()[:8] == PNG
    assert (run / "curves.png").read_bytes()[:8] == PNG
    assert not (run / "confusion_matrix.png").exists()
    md = (run / "report.md").read_text()
    assert "regression.png" in md
    # train, val and test rows with mse, mae and r2 in the target's units; no empty column
    table = [line for line in md.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header == ["split", "loss", "mse", "mae", "r2"]
    rows = {r[0]: r[1:] for r in ([c.strip() for c in line.strip("|").split("|")] for line in table[2:])}
    assert list(rows) == ["train", "val", "test"] and all(all(cells) for cells in rows.values())
    summary = json.loads((run / "summary.json").read_text())
    for split in ("train", "test"):  # the train row: the final parameters, as `jaxtrain eval` gives them
        want = evaluate(run, split=split, verbose=0)
        assert [float(c) for c in rows[split]] == [float(f"{want[m]:.4g}") for m in header[1:]]
    assert float(rows["test"][1]) == float(f"{summary['test']['mse']:.4g}")
    width, height = struct.unpack(">II", (run / "curves.png").read_bytes()[16:24])
    assert width < 2 * height  # a 2x2 grid, not a strip
    # A damaged summary.json is one line, exit 2, not a traceback.
    (run / "summary.json").write_text('{"test": ')
    assert main(["report", str(run)]) == 2
    assert "summary.json: cannot read the run's summary" in capsys.readouterr().err


def test_report_on_a_non_run_exits_2(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "metrics.jsonl" in capsys.readouterr().err


def test_curves_are_a_grid_of_panels_with_units_and_the_restored_epoch(tmp_path, monkeypatch):
    from jaxtrain.runs.report import curve_titles, restored_epoch
    from jaxtrain.util import plots
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    val = [(1, 3.0), (2, 2.0), (3, 2.5)]
    history = {"loss": {"train": [(1, 1.0), (2, 0.5), (3, 0.4)], "val": val},
               "mse": {"train": [], "val": val}, "mae": {"train": [], "val": val}, "r2": {"train": [], "val": val}}
    summary = {"task": "regression", "early_stopping": {"best_epoch": 2, "restored_best": True}}
    plots.curves(history, tmp_path / "c.png", curve_titles(summary), restored_epoch(summary))
    plots.curves({"loss": {"train": [(1, 1.0)], "val": [(1, 2.0)]}}, tmp_path / "one.png")
    grid, one = figures
    assert grid.axes[0].get_subplotspec().get_gridspec().get_geometry() == (2, 2)
    loss, mse, mae, r2 = grid.axes
    assert loss.get_title() == "loss (standardized target)" and mae.get_title() == "mae (target units)"
    assert [t.get_text() for t in loss.get_legend().get_texts()] == ["train", "val", "restored (epoch 2)"]
    for ax in grid.axes:  # the restored epoch marked in every panel
        assert any(list(line.get_xdata()) == [2, 2] for line in ax.lines)
    assert list(one.axes[0].get_xticks()) == [1]  # a one-epoch run: one whole-epoch tick, points
    assert all(line.get_linestyle() == "None" and line.get_marker() == "o" for line in one.axes[0].lines)
    assert restored_epoch({"early_stopping": {"best_epoch": 2, "restored_best": False}}) is None
    assert curve_titles({"task": "classification"}) == {}


def test_report_on_colour_image_folders_shows_the_images_with_class_names(tmp_path, monkeypatch):
    """Colour PNGs in class folders: the sample grid gets the folder names as class names and the
    test images themselves (an affine rescaling of their pixels to [0, 1] for imshow)."""
    from image_folders import write_folder
    from jaxtrain.util import plots
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 160)
    x = rng.integers(0, 80, (160, 6, 6, 3))
    x[np.arange(160), :, :, y] += 170                  # class k: channel k bright
    x = x.astype(np.uint8)
    write_folder(tmp_path / "train", x[:120], y[:120], ["blue", "green", "red"])
    write_folder(tmp_path / "test", x[120:], y[120:], ["blue", "green", "red"])
    run = tmp_path / "run"
    cfg = {"name": "colours", "data": {"source": "images", "path": str(tmp_path / "train"),
                                       "test_path": str(tmp_path / "test"), "cache_dir": str(tmp_path / "c")},
           "model": {"hidden_sizes": [8]}, "train": {"epochs": 2}, "parallel": {"data_axis_size": 1}}
    train(cfg, workdir=run, console=Console("none"))
    shown = {}
    real_grid = plots.image_grid

    def grid(images, predicted, true, class_names, path):
        shown.update(images=images, class_names=class_names)
        return real_grid(images, predicted, true, class_names, path)

    monkeypatch.setattr(plots, "image_grid", grid)
    assert main(["report", str(run)]) == 0
    assert (run / "samples.png").read_bytes()[:8] == PNG
    assert shown["class_names"] == ["blue", "green", "red"]
    images = shown["images"]
    assert images.shape == (25, 6, 6, 3) and images.min() >= 0 and images.max() <= 1
    originals = x[120:].reshape(40, -1).astype(np.float64)
    for img in images.reshape(25, -1):
        best = max(np.corrcoef(img, o)[0, 1] for o in originals)
        assert best > 0.9999
