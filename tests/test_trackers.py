"""Experiment trackers: MLflow (local file store) and W&B (offline) read back the metrics
jaxtrain wrote to metrics.jsonl; a blocked tracker never holds up training; a missing
tracker package is one line naming it."""

import json
import struct
import sys
import threading

import numpy as np
import pytest

import jaxtrain
from jaxtrain.cli.main import main
from jaxtrain.training.hooks.trackers import TrackerHook

COMMON = ["--set", "train.epochs=2", "--set", "train.steps_per_call=epoch", "--set", "parallel.data_axis_size=1",
          "--set", "model.hidden_sizes=[16]", "--set", "logging.progress=none"]


def _jsonl(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _expected(run):
    """{metric: [(step, value)]} as metrics.jsonl has them, in the trackers' names."""
    want: dict[str, list] = {}
    for e in _jsonl(run):
        if e["event"] == "train":
            for k in ("loss", "accuracy"):
                want.setdefault(f"train/{k}", []).append((e["step"], e[k]))
        elif e["event"] == "eval" and e["split"] == "val":
            for k in ("loss", "accuracy"):
                want.setdefault(f"val/{k}", []).append((e["step"], e[k]))
    return want


def test_mlflow_file_store_reads_back_the_metrics(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{tmp_path / 'mlruns'}")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    run = tmp_path / "run"
    assert main(["train", "--workdir", str(run), "--set", "logging.mlflow=true", *COMMON]) == 0

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("digits_mlp")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.status == "FINISHED" and found.info.run_name == "run"
    for key, series in _expected(run).items():
        got = [(m.step, m.value) for m in client.get_metric_history(found.info.run_id, key)]
        assert [s for s, _ in got] == [s for s, _ in series], key
        np.testing.assert_allclose([v for _, v in got], [v for _, v in series], rtol=1e-12)
    summary = json.loads((run / "summary.json").read_text())
    assert found.data.metrics["summary/test/accuracy"] == summary["test"]["accuracy"]
    # another path to the same figures: the saved run evaluated again, and the epochs' last steps
    assert found.data.metrics["summary/test/accuracy"] == jaxtrain.evaluate(run)["accuracy"]
    per_epoch = -(-summary["data"]["train"] // 32)            # digits_mlp: batch 32
    assert [m.step for m in client.get_metric_history(found.info.run_id, "train/loss")] == [per_epoch, 2 * per_epoch]
    assert found.data.params["optimizer.learning_rate"] == "0.001"
    assert found.data.params["model.hidden_sizes"] == "[16]"
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id, "report")}
    assert {"report/curves.png", "report/confusion_matrix.png", "report/samples.png"} <= artifacts
    assert "summary.json" in {a.path for a in client.list_artifacts(found.info.run_id)}


def _wandb_records(path):
    """The records of a W&B transaction log (.wandb): LevelDB-log blocks of protobuf Records."""
    from wandb.proto import wandb_internal_pb2 as pb
    data = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0)
    records, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        left_in_block = 32768 - pos % 32768
        if left_in_block < 7:             # a block's tail too short for a header is padding
            pos += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):                # FULL or LAST
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_wandb_offline_run_holds_the_metrics(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    assert main(["train", "--workdir", str(run), "--set", "logging.wandb=true", *COMMON]) == 0
    (log,) = run.glob("wandb/offline-run-*/run-*.wandb")
    history: dict[str, list] = {}
    images, config = set(), {}
    for record in _wandb_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item}
            for key, value in items.items():
                if key.startswith(("train/", "val/")):
                    history.setdefault(key, []).append((items["_step"], value))
                elif key.startswith("report/"):
                    images.add(key.split("/")[1])
        elif kind == "run":
            config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
    for key, series in _expected(run).items():
        assert [s for s, _ in history[key]] == [s for s, _ in series], key
        np.testing.assert_allclose([v for _, v in history[key]], [v for _, v in series], rtol=1e-12)
    assert {"curves", "confusion_matrix", "samples"} <= images
    assert config["optimizer.learning_rate"] == 0.001


def test_a_missing_tracker_package_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)   # importlib.util.find_spec then says: not installed
    assert main(["train", "--workdir", str(tmp_path / "run"), "--set", "logging.wandb=true", *COMMON]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "logging.wandb" in err and "jaxtrain[wandb]" in err, err


class _BlockedWriter:
    """A tracker whose server hangs until released."""
    name = "blocked"

    def __init__(self):
        self.release, self.calls = threading.Event(), []

    def start(self, params):
        self.calls.append("start")

    def where(self):
        return "blocked: run 1"

    def metrics(self, values, step):
        self.release.wait()
        self.calls.append(("metrics", step))

    def close(self, ok):
        self.calls.append(("close", ok))


def test_a_blocked_tracker_does_not_hold_up_training(ctx):
    from conftest import make_dataset
    from flax import nnx

    from jaxtrain import load_config
    from jaxtrain.model.models import MLP
    from jaxtrain.training.loop import fit
    from jaxtrain.engine.plan import make_plan
    from jaxtrain.training.setup import setup
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 3)).astype(np.float32)
    ds = make_dataset(x, (x[:, 0] > 0).astype(np.int32), "classification", 2)
    cfg = load_config({"data": {"batch_size": 20}, "train": {"epochs": 3, "steps_per_call": 1},
                       "parallel": {"data_axis_size": 1}})
    writer = _BlockedWriter()
    hook = TrackerHook(lambda: writer, {})
    run = setup(cfg, MLP(3, (4,), 2, rngs=nnx.Rngs(0)), ds, ctx, plan=make_plan(cfg, ds))
    fit(run, hooks=[hook])                      # returns although the tracker has logged nothing
    assert run.epoch == 3 and writer.calls == ["start"]
    writer.release.set()
    hook.close()
    assert writer.calls == ["start", ("metrics", 3), ("metrics", 6), ("metrics", 9), ("close", False)]


def test_mlflow_default_store_is_one_mlflows_own_tools_open(tmp_path, monkeypatch, capsys):
    """No MLflow variable set: the run goes to MLflow's default store in the working directory,
    the console says where, and MLflow's API in a fresh process with a clean environment finds it."""
    import os
    import re
    import subprocess
    pytest.importorskip("mlflow")
    for name in [n for n in os.environ if n.startswith("MLFLOW_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    quiet = COMMON.index("logging.progress=none")
    args = [*COMMON[:quiet], "logging.progress=plain", *COMMON[quiet + 1:]]
    assert main(["train", "--workdir", "run", "--set", "logging.mlflow=true", *args]) == 0
    printed = re.search(r"^mlflow: run (\w+) in experiment 'digits_mlp' at (\S+)$", capsys.readouterr().out, re.M)
    assert printed, "the console names the run and its tracking URI"
    run_id, uri = printed.groups()
    assert uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    probe = ("import json, sys, mlflow\n"
             "run = mlflow.MlflowClient(sys.argv[1]).get_run(sys.argv[2])\n"
             "print(json.dumps([mlflow.get_tracking_uri(), run.info.status, run.data.metrics]))\n")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    got = subprocess.run([sys.executable, "-c", probe, uri, run_id], cwd=tmp_path, env=clean,
                         capture_output=True, text=True, timeout=600)
    assert got.returncode == 0, got.stderr
    default_uri, status, metrics = json.loads(got.stdout.splitlines()[-1])
    assert default_uri == uri  # MLflow's own default in that directory: `mlflow ui` there shows it
    assert status == "FINISHED" and metrics["summary/test/accuracy"] == summary["test"]["accuracy"]
