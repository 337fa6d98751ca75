"""Step-time profiling: the verdict names the real bottleneck; the trace holds step annotations."""

import json
import time

import numpy as np
import pytest
from conftest import make_dataset

from jaxtrain import train
from jaxtrain.training.profiling import breakdown, trace_step_annotations


def _dataset(n=400, d=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    return make_dataset(x, y, "classification", 2)


def _profile(tmp_path, ds, **train_keys):
    cfg = {"model": {"hidden_sizes": [4]}, "data": {"batch_size": 10},
           "train": {"epochs": 3, "profile": True, **train_keys},
           "parallel": {"data_axis_size": 1}, "checkpoint": {"enabled": False},
           "logging": {"progress": "none"}}
    workdir = tmp_path / "run"
    train(cfg, workdir=workdir, dataset=ds)
    return json.loads((workdir / "profile.json").read_text()), workdir


class SlowInput:
    """Wraps a dataset's batches with a sleep per batch: a deliberately slow input pipeline."""

    def __init__(self, ds, seconds):
        self.ds, self.seconds = ds, seconds

    def __call__(self, batch_size, seed, epoch):
        ds, self.ds.batcher = self.ds, None
        try:
            batches = list(ds.train_batches(batch_size, seed, epoch))
        finally:
            ds.batcher = self
        for b in batches:
            time.sleep(self.seconds)
            yield b


def test_slow_input_is_judged_input_bound(tmp_path):
    ds = _dataset()
    # 50 ms of sleep per batch against microseconds of compute: a margin no load can close
    ds.batcher = SlowInput(ds, 0.05)
    report, _ = _profile(tmp_path, ds, on_device_fraction=0.0, steps_per_call=2, profile_steps=20,
                         profile_trace_calls=0)
    assert report["verdict"] == "input-bound", report
    assert report["ms_per_step"]["input_wait"] >= 0.5 * 50, report  # most of the sleep is waited for


def test_tiny_model_one_step_per_call_is_judged_dispatch_bound_and_traced(tmp_path):
    report, workdir = _profile(tmp_path, _dataset(), steps_per_call=1, profile_steps=60,
                               profile_trace_calls=4)
    assert report["verdict"] == "dispatch-bound", report
    assert "steps_per_call" in report["advice"]
    # the trace covers the first 4 calls, one step each: steps 0..3
    assert trace_step_annotations(workdir / "trace") == [0, 1, 2, 3]


def test_breakdown_arithmetic_and_verdicts():
    totals = {"input_wait": 0.1, "h2d_transfer": 0.1, "dispatch": 0.2, "device_compute": 1.0,
              "metric_transfer": 0.05, "hooks": 0.05}
    r = breakdown(totals, wall=2.0, steps=100, k=10)
    assert r["verdict"] == "compute-bound"
    # the 0.5 s the phases leave of the wall time is the loop's own host work
    assert r["ms_per_step"]["dispatch_python"] == pytest.approx(7.0)
    assert r["ms_per_step"]["device_compute"] == pytest.approx(10.0)
    assert sum(r["fraction"].values()) == pytest.approx(1.0)
    assert r["device_idle_fraction"] == pytest.approx(0.5)
    assert breakdown({**totals, "input_wait": 1.5}, 3.0, 100, 10)["verdict"] == "input-bound"
    assert breakdown({**totals, "dispatch": 1.5}, 3.0, 100, 10)["verdict"] == "dispatch-bound"
    # already one call per epoch: the advice is a larger batch, not a larger K
    whole_epoch = breakdown({**totals, "dispatch": 1.5}, 3.0, 100, 100, steps_per_epoch=100)
    assert "batch" in whole_epoch["advice"] and "steps_per_call" not in whole_epoch["advice"]


def test_profile_command_prints_the_breakdown_and_writes_a_trace(tmp_path, capsys):
    from jaxtrain.cli.main import main
    workdir = tmp_path / "prof"
    assert main(["profile", "--steps", "20", "--set", "parallel.data_axis_size=1",
                 "--set", "logging.progress=plain", "--workdir", str(workdir)]) == 0
    out = capsys.readouterr().out
    assert "device compute" in out and "device idle" in out and "verdict: " in out
    report = json.loads((workdir / "profile.json").read_text())
    assert report["verdict"] in ("input-bound", "dispatch-bound", "compute-bound")
    assert trace_step_annotations(workdir / "trace")
