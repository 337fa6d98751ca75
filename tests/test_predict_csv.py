"""`jaxtrain predict`: saved preprocessing on raw CSV rows gives evaluate's outputs."""

import csv
import json
import re

import numpy as np
import pytest

from jaxtrain.runs import predict as predict_module
from jaxtrain.runs.api import evaluate, load_trained, train
from jaxtrain.cli.main import main
from jaxtrain.data import load_dataset
from jaxtrain.config.data import DataConfig
from jaxtrain.data.preprocess import split_indices
from jaxtrain.util.errors import UserError
from jaxtrain.util.events import Console


def _write_table(path, task, n=240, seed=0):
    rng = np.random.default_rng(seed)
    a, c = rng.normal(0, 2, n), rng.uniform(10, 50, n)
    b = rng.choice(["red", "green", "blue"], n)
    score = a + (b == "red") * 2.0 - 0.05 * c
    y = np.digitize(score, np.quantile(score, [1 / 3, 2 / 3])) if task == "classification" \
        else 1000 * score + 5000 + rng.normal(0, 10, n)
    rows = [[f"{a[i]:.6f}" if i % 17 else "", b[i], f"{c[i]:.6f}", str(y[i])] for i in range(n)]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["a", "b", "c", "label"])
        w.writerows(rows)
    return rows


def _train(tmp_path, task):
    rows = _write_table(tmp_path / "data.csv", task)
    cfg = {"name": f"csv_{task}", "data": {"source": "csv", "path": str(tmp_path / "data.csv"),
                                            "target": "label", "task": task, "batch_size": 16},
           "model": {"hidden_sizes": [8]}, "train": {"epochs": 2}, "parallel": {"data_axis_size": 1}}
    run = tmp_path / "run"
    train(cfg, workdir=run, console=Console("none"))
    _, _, test_idx = split_indices(len(rows), 0.1, 0.2, 0)
    with open(tmp_path / "new.csv", "w", newline="") as f:  # the test split's raw rows, target kept
        w = csv.writer(f)
        w.writerow(["a", "b", "c", "label"])
        w.writerows(rows[i] for i in test_idx)
    return run


@pytest.fixture(scope="module")
def class_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict_cls")
    return tmp, _train(tmp, "classification")


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_classification_predictions_equal_evaluate_outputs(class_run):
    tmp_path, run = class_run
    assert main(["predict", str(run), "--input", str(tmp_path / "new.csv"),
                 "--output", str(tmp_path / "pred.csv")]) == 0
    got = _read(tmp_path / "pred.csv")
    trained = load_trained(run)
    logits = trained.outputs(trained.dataset.test.x).astype(np.float64)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    classes = [str(c) for c in (trained.dataset.stats.classes or range(3))]
    assert len(got) == len(probs)
    np.testing.assert_allclose([[float(r[f"prob_{c}"]) for c in classes] for r in got], probs, atol=1e-6)
    assert [r["predicted"] for r in got] == [classes[k] for k in probs.argmax(1)]


def test_predict_needs_only_the_saved_statistics_not_the_training_data(class_run, monkeypatch):
    tmp_path, run = class_run
    trained = load_trained(run)
    expected = trained.outputs(trained.dataset.test.x).argmax(1)
    import jaxtrain.data as data_stage

    def no_reload(*args, **kwargs):
        raise AssertionError("predict reloaded the run's data set")

    monkeypatch.setattr(data_stage, "load_dataset", no_reload)
    assert main(["predict", str(run), "--input", str(tmp_path / "new.csv"),
                 "--output", str(tmp_path / "pred_stats_only.csv")]) == 0
    classes = [str(c) for c in (trained.stats.classes or range(3))]
    assert [r["predicted"] for r in _read(tmp_path / "pred_stats_only.csv")] == [classes[k] for k in expected]


def test_regression_predictions_in_original_units(tmp_path):
    run = _train(tmp_path, "regression")
    assert main(["predict", str(run), "--input", str(tmp_path / "new.csv"),
                 "--output", str(tmp_path / "pred.csv")]) == 0
    got = np.array([float(r["predicted"]) for r in _read(tmp_path / "pred.csv")])
    trained = load_trained(run)
    want = trained.dataset.to_original_units(trained.outputs(trained.dataset.test.x)[:, 0].astype(np.float64))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert abs(np.median(got)) > 100  # original units (thousands), not standardized values
    scored, split = evaluate(run, input=tmp_path / "new.csv"), evaluate(run, "test")   # the same rows
    assert scored.keys() == split.keys() == {"loss", "mse", "mae", "r2"}
    np.testing.assert_allclose([scored[k] for k in split], [split[k] for k in split], rtol=1e-6)


@pytest.mark.parametrize("drop, add", [("c", None), (None, "zzz"), ("b", "colour")])
def test_mismatched_columns_exit_2_naming_them(class_run, tmp_path, capsys, drop, add):
    data_dir, run = class_run
    with open(data_dir / "new.csv", newline="") as f:
        table = list(csv.reader(f))
    header = table[0]
    if drop:
        j = header.index(drop)
        table = [r[:j] + r[j + 1:] for r in table]
    if add:
        table = [r + ([add] if i == 0 else ["1"]) for i, r in enumerate(table)]
    with open(tmp_path / "bad.csv", "w", newline="") as f:
        csv.writer(f).writerows(table)
    capsys.readouterr()
    assert main(["predict", str(run), "--input", str(tmp_path / "bad.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.csv" in err
    if drop:
        assert f"missing column(s): {drop}" in err
    if add:
        assert f"unexpected column(s): {add}" in err


def test_truncated_npz_input_exits_2_as_in_training(class_run, tmp_path, capsys):
    _, run = class_run
    np.savez(tmp_path / "inputs.npz", x=np.random.default_rng(0).normal(size=(50, 3)))
    data = (tmp_path / "inputs.npz").read_bytes()
    (tmp_path / "inputs.npz").write_bytes(data[:len(data) // 2])
    capsys.readouterr()
    assert main(["predict", str(run), "--input", str(tmp_path / "inputs.npz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "inputs.npz: cannot read as .npz" in err
    # the training side reads .npz files through the same check
    with pytest.raises(UserError, match=r"inputs\.npz: cannot read as \.npz"):
        load_dataset(DataConfig(source="npz", path=str(tmp_path / "inputs.npz")))


@pytest.mark.parametrize("where", ["missing_folder", "a_directory"])
def test_unwritable_output_is_refused_before_predicting(class_run, tmp_path, capsys, monkeypatch, where):
    data_dir, run = class_run
    output = tmp_path / "nope" / "pred.csv" if where == "missing_folder" else tmp_path

    def no_work(*args, **kwargs):
        raise AssertionError("predicted before checking --output")

    monkeypatch.setattr(predict_module, "predict", no_work)
    with pytest.raises(UserError, match=re.escape(str(output))):
        predict_module.predict_file(run, data_dir / "new.csv", output)
    capsys.readouterr()
    assert main(["predict", str(run), "--input", str(data_dir / "new.csv"), "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(output) in err and "Traceback" not in err


def _write_rows(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def test_predict_says_per_column_what_it_filled_and_did_not_know(class_run, tmp_path, capsys):
    _, run = class_run
    unseen = ["purple", "Red", "teal", "red ish", "grey", "black"]
    rows = [["", "red", "20"], ["0.5", "NA", "30"], ["", "green", ""]] + \
        [[f"{k / 10}", colour, "25"] for k, colour in enumerate(unseen)] + [["1", "purple", "40"]]
    _write_rows(tmp_path / "new.csv", ["a", "b", "c"], rows)
    capsys.readouterr()
    assert main(["predict", str(run), "--input", str(tmp_path / "new.csv"), "--output",
                 str(tmp_path / "p.csv")]) == 0
    err = capsys.readouterr().err.splitlines()
    fills = json.loads((run / "stats.json").read_text())["fills"]
    n = len(rows)
    assert f"column 'a': 2 of {n} values missing, filled with {fills['a']:g} (the training median)" in err[0]
    assert any(line.endswith(f"column 'b': 1 of {n} values missing, filled with '{fills['b']}' "
                             "(the most frequent training value)") for line in err), err
    [unknown] = [line for line in err if "not seen in training" in line]
    # 7 values in 6 distinct spellings; the first five named, in the order they come
    assert f"column 'b': 7 of {n} values not seen in training, one-hot encoded as all zeros: " \
           "'purple', 'Red', 'teal', 'red ish', 'grey', ..." in unknown
    assert any(f"column 'c': 1 of {n} values missing" in line for line in err)
    assert len(_read(tmp_path / "p.csv")) == n          # no row dropped


def test_keep_copies_id_columns_and_probabilities_print_to_six_digits(class_run, tmp_path, capsys):
    data_dir, run = class_run
    rows = _read(data_dir / "new.csv")
    _write_rows(tmp_path / "ids.csv", ["house_id", "a", "b", "c", "batch"],
                [[f"H-{i:03d}", r["a"], r["b"], r["c"], f"b{i % 2}"] for i, r in enumerate(rows)])
    assert main(["predict", str(run), "--input", str(tmp_path / "ids.csv"), "--keep", "house_id",
                 "--keep", "batch", "--output", str(tmp_path / "kept.csv")]) == 0
    assert main(["predict", str(run), "--input", str(data_dir / "new.csv"), "--full-precision",
                 "--output", str(tmp_path / "full.csv")]) == 0
    kept, full = _read(tmp_path / "kept.csv"), _read(tmp_path / "full.csv")
    assert list(kept[0])[:4] == ["row", "house_id", "batch", "predicted"]
    assert [r["house_id"] for r in kept] == [f"H-{i:03d}" for i in range(len(rows))]
    assert [r["batch"] for r in kept] == [f"b{i % 2}" for i in range(len(rows))]
    assert [r["predicted"] for r in kept] == [r["predicted"] for r in full]
    trained = load_trained(run)
    logits = trained.outputs(trained.dataset.test.x).astype(np.float64)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    columns = [c for c in kept[0] if c.startswith("prob_")]
    short = np.array([[float(r[c]) for c in columns] for r in kept])
    np.testing.assert_allclose(short, probs, rtol=5e-6)          # 6 significant digits
    assert all(len(re.sub(r"e.*|[-.]|^0\.0*", "", r[c])) <= 6 for r in kept for c in columns)
    np.testing.assert_allclose([[float(r[c]) for c in columns] for r in full], probs, rtol=1e-12)
    capsys.readouterr()
    assert main(["predict", str(run), "--input", str(tmp_path / "ids.csv"), "--keep", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--keep column(s) nope not in the file" in err


def test_eval_input_scores_a_labeled_file_as_eval_scores_the_split(class_run, capsys):
    data_dir, run = class_run
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    split = json.loads(capsys.readouterr().out)["test"]
    assert main(["eval", str(run), "--input", str(data_dir / "new.csv")]) == 0   # the test split's raw rows
    scored = json.loads(capsys.readouterr().out)["input"]
    assert scored.keys() == split.keys()
    np.testing.assert_allclose([scored[k] for k in split], [split[k] for k in split], rtol=1e-6)
    assert evaluate(run, input=data_dir / "new.csv") == scored
    assert main(["eval", str(run), "--split", "val", "--input", str(data_dir / "new.csv")]) == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_eval_input_with_labels_the_run_never_saw_exits_2_naming_them(tmp_path, capsys):
    rng = np.random.default_rng(3)
    a = rng.normal(0, 1, 120)
    names = np.array(["low", "mid", "high"])[np.digitize(a, [-0.4, 0.4])]
    _write_rows(tmp_path / "bands.csv", ["a", "band"], [[f"{v:.4f}", s] for v, s in zip(a, names)])
    run = tmp_path / "run"
    train({"data": {"source": "csv", "path": str(tmp_path / "bands.csv"), "target": "band"},
           "model": {"hidden_sizes": [4]}, "train": {"epochs": 1}, "parallel": {"data_axis_size": 1}},
          workdir=run, console=Console("none"))
    _write_rows(tmp_path / "typos.csv", ["a", "band"],
                [["0.1", "mid"], ["1.5", "hgih"], ["-2", "low "], ["0.2", "midd"], ["3", "hgih"], ["0", ""]])
    capsys.readouterr()
    assert main(["eval", str(run), "--input", str(tmp_path / "typos.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "typos.csv column 'band'" in err, err
    assert "4 row(s) have labels the run never saw in training: 'hgih' (closest: 'high'), " \
           "'midd' (closest: 'mid'), a missing label" in err, err
    with pytest.raises(UserError, match="'hgih' \\(closest: 'high'\\)"):
        evaluate(run, input=tmp_path / "typos.csv")


# ---------------------------------------------------------------- image inputs


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """An MLP trained on a folder of digit PNGs with separate validation and test folders."""
    from image_folders import digits_uint8, write_folder
    tmp = tmp_path_factory.mktemp("predict_images")
    x, y = digits_uint8()
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    order = sorted(range(10), key=lambda k: names[k])       # folder names sort: label k is sorted[k]
    relabel = np.argsort(order)
    write_folder(tmp / "train", x[:400], relabel[y[:400]], sorted(names))
    write_folder(tmp / "test", x[400:500], relabel[y[400:500]], sorted(names))
    write_folder(tmp / "val", x[500:560], relabel[y[500:560]], sorted(names))
    cfg = {"name": "digit_pngs", "data": {"source": "images", "path": str(tmp / "train"),
                                          "val_path": str(tmp / "val"), "test_path": str(tmp / "test"),
                                          "cache_dir": str(tmp / "cache")},
           "model": {"hidden_sizes": [16]}, "train": {"epochs": 2}, "parallel": {"data_axis_size": 1}}
    train(cfg, workdir=tmp / "run", console=Console("none"))
    return tmp, tmp / "run"


def test_predict_on_a_folder_of_images_names_each_file(image_run, monkeypatch):
    tmp, run = image_run
    trained = load_trained(run)
    logits = trained.outputs(trained.dataset.test.x).astype(np.float64)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    classes = trained.stats.classes
    assert classes == sorted(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    import jaxtrain.data as data_stage
    monkeypatch.setattr(data_stage, "load_dataset", None)     # predict decodes the files itself
    assert main(["predict", str(run), "--input", str(tmp / "test"), "--output", str(tmp / "pred.csv")]) == 0
    got = _read(tmp / "pred.csv")
    files = sorted(str(p.relative_to(tmp / "test")) for p in (tmp / "test").rglob("*.png"))
    assert [r["file"] for r in got] == files           # the test split's order: class, then name
    np.testing.assert_allclose([[float(r[f"prob_{c}"]) for c in classes] for r in got], probs, atol=1e-6)
    assert [r["predicted"] for r in got] == [classes[k] for k in probs.argmax(1)]
    one = tmp / "test" / files[3]
    assert main(["predict", str(run), "--input", str(one), "--output", str(tmp / "one.csv")]) == 0
    (row,) = _read(tmp / "one.csv")
    assert row["file"] == one.name and row["predicted"] == got[3]["predicted"]
    np.testing.assert_allclose(float(row[f"prob_{classes[0]}"]), float(got[3][f"prob_{classes[0]}"]), atol=1e-6)


def test_a_truncated_image_input_exits_2_naming_it(image_run, tmp_path, capsys):
    _, run = image_run
    from image_folders import digits_uint8, write_folder
    x, _ = digits_uint8()
    paths = write_folder(tmp_path / "new", x[:3], np.array([0, 0, 0]))
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[:len(data) // 2])
    capsys.readouterr()
    assert main(["predict", str(run), "--input", str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{paths[1]}: cannot read as an image (image file is truncated)" in err
    write_folder(tmp_path / "big", np.zeros((1, 9, 8), np.uint8), np.array([0]))
    assert main(["predict", str(run), "--input", str(tmp_path / "big")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "9x8 pixels" in err and "trained on 8x8 images" in err


def test_the_val_folder_is_the_runs_validation_split(image_run):
    """The run's validation metrics and summary count are those of the val folder's 60 images,
    scored independently as an input folder (decoded by predict's reader, not the split's)."""
    tmp, run = image_run
    summary = json.loads((run / "summary.json").read_text())
    assert summary["data"] == {"train": 400, "val": 60, "test": 100}
    scored = evaluate(run, input=tmp / "val", verbose=0)
    assert summary["val"] and set(summary["val"]) <= set(scored)
    for metric, value in summary["val"].items():
        np.testing.assert_allclose(value, scored[metric], rtol=1e-5, atol=1e-6)


def test_eval_input_on_a_class_folder_equals_the_test_split(image_run, tmp_path):
    """The test folder scored as an input file gives the run's own test metrics; its class
    sub-folders are the labels."""
    tmp, run = image_run
    scored, split = evaluate(run, input=tmp / "test"), evaluate(run, "test")
    assert set(scored) == set(split)
    for metric in split:
        np.testing.assert_allclose(scored[metric], split[metric], rtol=1e-5, atol=1e-6)
    from image_folders import digits_uint8, write_folder
    x, _ = digits_uint8()
    write_folder(tmp_path / "odd", x[:2], np.array([0, 1]), names=["zero", "twelve"])
    with pytest.raises(UserError, match="twelve"):
        evaluate(run, input=tmp_path / "odd")
