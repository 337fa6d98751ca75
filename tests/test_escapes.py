"""Seven bugs that once passed the whole suite (issue 29), each now failing a test of its own
module, plus the number of steps of an epoch whose last batch is partial.

Each test computes its expected value another way: a closed form over a fake clock's
unequal epochs, NumPy on the raw rows and the saved bounds, the raw text of the file, the
minimum of results.csv, the signal number, the straight run's records."""

import csv
import io
import json
import math
import shutil
import signal
import sys

import numpy as np
import pytest

from jaxtrain import resume, train
from jaxtrain.cli.main import main
from jaxtrain.training import accounting

COMMON = ["--set", "train.steps_per_call=epoch", "--set", "parallel.data_axis_size=1",
          "--set", "logging.progress=none"]


# ---------------------------------------------------------------- training/accounting.py
def _epoch(train_s, segment, steps=10, batch=64):
    return {"train_s": train_s, "steps": steps, "examples": steps * batch, "segment": segment}


def test_steady_epochs_drop_each_segments_first_epoch_not_its_last():
    """A slow first epoch (5 s: caches cold), then 1 s, 1 s: the steady figures are the last two
    epochs' (2 s for 20 steps of 64): 100 ms a step and 640 examples/s; a resumed segment's first
    epoch (4 s) is dropped too."""
    epochs = [_epoch(5.0, 0), _epoch(1.0, 0), _epoch(1.0, 0)]
    steady = accounting.steady_epochs(epochs)
    assert [e["train_s"] for e in steady] == [1.0, 1.0]
    figures = accounting.throughput(steady)
    assert figures["step_time_ms"] == pytest.approx(1e3 * 2.0 / 20)
    assert figures["examples_per_sec"] == pytest.approx(20 * 64 / 2.0)
    two_segments = epochs + [_epoch(4.0, 1), _epoch(2.0, 1, steps=5)]
    steady = accounting.steady_epochs(two_segments)
    assert steady == [two_segments[1], two_segments[2], two_segments[4]]
    assert accounting.throughput(steady)["step_time_ms"] == pytest.approx(1e3 * 4.0 / 25)
    # a segment of one epoch has no steady epoch: when no segment has one, every epoch counts
    single = [_epoch(3.0, 0), _epoch(2.0, 1)]
    assert accounting.steady_epochs(single) == single


# ---------------------------------------------------------------- engine/plan.py
@pytest.mark.parametrize("n_train,batch", [(240, 64), (240, 16), (1, 64), (65, 64), (1000, 7)])
def test_steps_per_epoch_cover_every_row_once_the_last_batch_partial(n_train, batch):
    """Every row is in one batch: the steps cover the rows, one step fewer would not."""
    from jaxtrain.engine.plan import steps_per_epoch
    steps = steps_per_epoch(n_train, batch)
    assert (steps - 1) * batch < n_train <= steps * batch


def test_an_epoch_with_a_partial_last_batch_takes_one_step_more_and_counts_every_row(tmp_path):
    """240 training rows in batches of 64: 3 full batches and one of 48 (padded, not dropped):
    4 steps an epoch, and the epoch's examples are all 240 rows."""
    cfg = {"name": "blobs", "data": {"source": "synthetic", "name": "blobs", "synthetic_rows": 400,
                                     "batch_size": 64, "val_fraction": 0.2, "test_fraction": 0.2},
           "model": {"hidden_sizes": [8]}, "train": {"epochs": 2, "steps_per_call": 1},
           "checkpoint": {"enabled": False}, "logging": {"progress": "none"},
           "parallel": {"data_axis_size": 1}}
    summary = train(cfg, workdir=tmp_path / "run")
    n_train = summary["data"]["train"]
    assert n_train == 400 - 80 - 80 and n_train % 64
    steps = math.ceil(n_train / 64)
    assert summary["execution"]["steps_per_epoch"] == steps == 4
    assert summary["train"]["steps"] == 2 * steps
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "train"] == [steps, 2 * steps]
    # examples per step (examples/s x s/step) is the epoch's rows over its steps: 60, not 64
    perf = summary["perf"]
    assert summary["train"]["examples_per_sec"] * perf["step_time_ms"] / 1e3 == pytest.approx(n_train / steps)


# ---------------------------------------------------------------- a trained table run
# The houses of the ONNX tests: rooms and city with gaps, a log-normal area, a price.
from test_export_onnx import _houses  # noqa: E402


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def houses_run(tmp_path_factory):
    """A regression run on rooms, area (log1p'd), city; outliers clipped to the IQR bounds."""
    tmp = tmp_path_factory.mktemp("houses")
    _write_csv(tmp / "houses.csv", ["rooms", "area", "city", "price"], _houses(240, np.random.default_rng(0)))
    run = tmp / "run"
    assert main(["train", "--workdir", str(run), *COMMON, "--set", "data.source=csv",
                 "--set", f"data.path={tmp / 'houses.csv'}", "--set", "data.target=price",
                 "--set", "data.task=regression", "--set", "data.log_columns=[area]",
                 "--set", "data.clean.outliers=iqr", "--set", "model.hidden_sizes=[8]",
                 "--set", "train.epochs=2"]) == 0
    return tmp, run


# ---------------------------------------------------------------- data/apply.py
def test_keep_of_a_numeric_feature_column_copies_its_text_and_still_encodes_it(houses_run, tmp_path):
    from jaxtrain.data import user_input as apply
    from jaxtrain.runs.api import load_trained
    _, run = houses_run
    rows = [["3.50", "75.5", "paris"], ["007", "20", "lyon"], ["2.0", "60", "nice"], ["", "40", "nice"],
            ["1e1", "33", "lyon"]]
    _write_csv(tmp_path / "new.csv", ["rooms", "area", "city"], rows)
    trained = load_trained(run)
    kept = apply.read_input(tmp_path / "new.csv", trained.stats, trained.cfg.data, keep=["rooms"])
    plain = apply.read_input(tmp_path / "new.csv", trained.stats, trained.cfg.data)
    assert kept.kept == {"rooms": [r[0] for r in rows]}          # as written: 3.50, 007, 1e1
    np.testing.assert_array_equal(kept.x, plain.x)               # and encoded as a number all the same
    assert main(["predict", str(run), "--input", str(tmp_path / "new.csv"), "--keep", "rooms",
                 "--output", str(tmp_path / "p.csv")]) == 0
    assert main(["predict", str(run), "--input", str(tmp_path / "new.csv"),
                 "--output", str(tmp_path / "q.csv")]) == 0
    with_keep, without = _read_csv(tmp_path / "p.csv"), _read_csv(tmp_path / "q.csv")
    assert [r["rooms"] for r in with_keep] == [r[0] for r in rows]
    assert [r["predicted"] for r in with_keep] == [r["predicted"] for r in without]


# ---------------------------------------------------------------- runs/predict.py
def test_predict_says_per_column_how_many_values_it_clipped(houses_run, tmp_path, capsys):
    tmp, run = houses_run
    stats = json.loads((run / "stats.json").read_text())
    bounds = dict(zip(stats["numeric_columns"], stats["outliers"]["bounds"]))
    rooms = [3, -40, 250, 4, 6, 1, 999]
    area = [75.5, 20, 90000, 1, 0.001, 3e6, 60]
    _write_csv(tmp_path / "new.csv", ["rooms", "area", "city"],
               [[str(r), str(a), "paris"] for r, a in zip(rooms, area)])
    capsys.readouterr()
    assert main(["predict", str(run), "--input", str(tmp_path / "new.csv"),
                 "--output", str(tmp_path / "p.csv")]) == 0
    err = capsys.readouterr().err.splitlines()
    n = len(rooms)
    for name, values in (("rooms", np.array(rooms, float)), ("area", np.log1p(area))):
        low, high = bounds[name]
        outside = int(np.sum((values < low) | (values > high)))
        assert outside >= 2, (name, low, high)          # the rows were chosen to leave the bounds
        suffix = " after log1p" if name == "area" else ""
        line = (f"column '{name}': {outside} of {n} values outside the training bounds "
                f"[{low:g}, {high:g}]{suffix}, clipped")
        assert sum(line in e for e in err) == 1, (line, err)


# ---------------------------------------------------------------- runs/onnx_table.py
def test_onnx_takes_inf_as_missing_like_predict(houses_run, tmp_path):
    """The contract: "NaN or infinite = missing". Rows with inf and -inf in a plain and in a log
    column give onnxruntime's output what `predict` gives on the same rows."""
    pytest.importorskip("jax2onnx")
    ort = pytest.importorskip("onnxruntime")
    _, run = houses_run
    rows = [["inf", "75.5", "paris"], ["-inf", "20", "lyon"], ["3", "inf", "nice"], ["2", "-inf", "lyon"],
            ["inf", "-inf", "paris"], ["4", "50", "nice"]]
    _write_csv(tmp_path / "new.csv", ["rooms", "area", "city"], rows)
    assert main(["predict", str(run), "--input", str(tmp_path / "new.csv"), "--full-precision",
                 "--output", str(tmp_path / "p.csv")]) == 0
    assert main(["export", str(run), "--format", "onnx", "--output", str(tmp_path / "m.onnx")]) == 0
    contract = json.loads((tmp_path / "m.json").read_text())
    feeds = {"rooms": np.array([[float(r[0])] for r in rows], np.float32),
             "area": np.array([[float(r[1])] for r in rows], np.float32),
             "city": np.array([[r[2]] for r in rows], object)}
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run([contract["output"]["name"]], feeds)[0]
    want = np.array([[float(r["predicted"])] for r in _read_csv(tmp_path / "p.csv")])
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    # and an infinite value is the fill, not a clipped bound: the same as an empty cell
    _write_csv(tmp_path / "empty.csv", ["rooms", "area", "city"],
               [["" if "inf" in r[0] else r[0], "" if "inf" in r[1] else r[1], r[2]] for r in rows])
    assert main(["predict", str(run), "--input", str(tmp_path / "empty.csv"), "--full-precision",
                 "--output", str(tmp_path / "e.csv")]) == 0
    np.testing.assert_allclose([[float(r["predicted"])] for r in _read_csv(tmp_path / "e.csv")], want,
                               rtol=1e-6)


# ---------------------------------------------------------------- runs/search.py
def test_a_regression_search_chooses_the_trial_with_the_lowest_val_mse(tmp_path):
    import yaml
    from jaxtrain.config.schema import load_config
    cfg = {"name": "houses", "data": {"source": "synthetic", "name": "house_prices", "synthetic_rows": 240,
                                      "batch_size": 32, "val_fraction": 0.2},
           "model": {"hidden_sizes": [8]}, "optimizer": {"name": "adamw"},
           "train": {"epochs": 1}, "checkpoint": {"enabled": False}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    root = tmp_path / "s"
    assert main(["search", str(tmp_path / "c.yaml"), "--space", "optimizer.learning_rate=loguniform(1e-4,1.0)",
                 "--trials", "4", "--population", "4", "--workdir", str(root)]) == 0
    rows = _read_csv(root / "results.csv")
    assert "val.mse" in rows[0] and len(rows) == 4
    values = [float(r["val.mse"]) for r in rows]
    assert len(set(values)) == len(values)             # a choice to make
    lowest = min(rows, key=lambda r: float(r["val.mse"]))
    chosen = load_config(root / "best.yaml").optimizer.learning_rate
    assert chosen == pytest.approx(float(lowest["optimizer.learning_rate"]), rel=1e-12)


# ---------------------------------------------------------------- cli/launch.py
KILL_SELF = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
WAIT = "import time; time.sleep(60)"


def test_launch_reports_a_child_killed_by_a_signal_as_128_plus_its_number(capsys):
    from jaxtrain.cli.launch import launch
    status = launch(1, ["--", sys.executable, "-c", KILL_SELF], out=io.StringIO(), err=io.StringIO())
    assert status == 128 + signal.SIGKILL == 137
    assert "process 0 exited with status 137" in capsys.readouterr().err


# ---------------------------------------------------------------- ckpt/restore.py
RESUMED = {"name": "blobs", "data": {"source": "synthetic", "name": "blobs", "synthetic_rows": 400,
                                     "batch_size": 16, "val_fraction": 0.2, "test_fraction": 0.2},
           "model": {"hidden_sizes": [16], "dropout": 0.2}, "optimizer": {"name": "adam", "learning_rate": 0.01},
           "train": {"epochs": 3, "steps_per_call": 1},
           "checkpoint": {"every_steps": 23, "every_epochs": None, "every_seconds": None, "keep": 10},
           "logging": {"progress": "none"}, "parallel": {"data_axis_size": 1}}
TIMING = ("time", "examples_per_sec", "step_time_ms", "mfu")


def records(workdir, event="train"):
    """metrics.jsonl's `event` records, less their clock readings."""
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in r.items() if k not in TIMING}
            for r in map(json.loads, lines) if r["event"] == event]


def cut_at(full, cut, step):
    """`full` as it was right after its checkpoint at `step`: later checkpoints, the summary and the
    records written after that step gone."""
    shutil.copytree(full, cut)
    for p in (cut / "checkpoints").iterdir():
        if p.name.isdigit() and int(p.name) > step:
            shutil.rmtree(p)
    (cut / "summary.json").unlink()
    lines = (cut / "metrics.jsonl").read_text().splitlines()
    kept = [line for line in lines if json.loads(line).get("step", 0) <= step
            and json.loads(line)["event"] != "summary"]
    (cut / "metrics.jsonl").write_text("".join(line + "\n" for line in kept))


def test_a_run_resumed_mid_epoch_writes_the_straight_runs_epoch_records(tmp_path):
    """Cut at step 23 (epoch 2 of 15-step epochs, 8 steps in), resumed: epoch 2's record covers
    all its 15 steps, so every per-epoch record equals the straight run's."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    train(RESUMED, workdir=full)
    cut_at(full, cut, 23)
    assert [r["epoch"] for r in records(cut)] == [1]
    resume(cut)
    straight = records(full)
    assert [r["step"] for r in straight] == [15, 30, 45]
    assert records(cut) == straight
    assert records(cut, "eval") == records(full, "eval")
