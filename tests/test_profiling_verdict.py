"""Step-time profiling: the verdict names the real bottleneck; the trace holds step annotations."""

import dataclasses
import json
import threading

import numpy as np
import pytest
from conftest import make_dataset
from flax import nnx

from jaxtrain import load_config
from jaxtrain.engine import engine as engine_module
from jaxtrain.model.models import MLP
from jaxtrain.training.hooks import build_hooks
from jaxtrain.training.loop import fit
from jaxtrain.training.setup import setup
from jaxtrain.engine.plan import make_plan
from jaxtrain.training.hooks.profiling import profile_table
from run_files import trace_step_annotations


def _dataset(n=400, d=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    return make_dataset(x, y, "classification", 2)


class FakeClock:
    """A clock that moves only when told (`advance`) or, with `tick`, by `tick` per reading."""

    def __init__(self, tick: float = 0.0):
        self.now, self.tick = 0.0, tick
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            self.now += self.tick
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


def _profile_with_clock(tmp_path, ctx, clock, **train_keys):
    """train.profile through setup and fit, every phase timed on `clock`."""
    cfg = load_config({"model": {"hidden_sizes": [4]}, "data": {"batch_size": 10},
                       "train": {"epochs": 3, "profile": True, "profile_trace_calls": 0, **train_keys},
                       "parallel": {"data_axis_size": 1}, "checkpoint": {"enabled": False},
                       "logging": {"progress": "none"}})
    ds = _dataset()
    ctx = dataclasses.replace(ctx, clock=clock)
    run = setup(cfg, MLP(8, (4,), 2, rngs=nnx.Rngs(0)), ds, ctx, plan=make_plan(cfg, ds))
    fit(run, hooks=build_hooks(cfg, tmp_path))
    return json.loads((tmp_path / "profile.json").read_text())


def test_input_wait_is_the_time_the_loop_waited_for_a_slow_pipeline(tmp_path, ctx, monkeypatch):
    # Each streamed chunk arrives 50 ms (fake time) after the loop asks for it: no overlap.
    clock = FakeClock()
    real = engine_module.prefetch_to_device

    def slow(*args, **kwargs):
        for item in real(*args, **kwargs):
            clock.advance(0.05)
            yield item
    monkeypatch.setattr(engine_module, "prefetch_to_device", slow)
    report = _profile_with_clock(tmp_path, ctx, clock, steps_per_call=1, profile_steps=30, on_device_fraction=0.0)
    assert report["steps"] == 30 and report["ms_per_step"]["input_wait"] == pytest.approx(50.0)
    assert report["fraction"]["input_wait"] == pytest.approx(1.0)  # nothing else took fake time
    assert report["verdict"] == "input-bound" and "on_device_fraction" in report["advice"]


def test_loop_bound_run_is_judged_dispatch_bound_and_traced(tmp_path, ctx):
    # Every clock reading costs 1 ms: the device's share of a call is the one reading
    # between the loop's switch to device_compute and back, the host's is every other reading.
    tick = 1e-3
    report = _profile_with_clock(tmp_path, ctx, FakeClock(tick), steps_per_call=1, profile_steps=60,
                                 profile_trace_calls=4)
    assert report["verdict"] == "dispatch-bound", report
    assert "steps_per_call" in report["advice"]
    assert report["window"] == "calls after the trace"
    assert report["ms_per_step"]["device_compute"] == pytest.approx(1e3 * tick)
    assert sum(report["fraction"].values()) == pytest.approx(1.0)
    assert report["steps"] == 60 - 4  # profile_steps stops the run; the traced calls are apart
    # the trace covers the first 4 calls, one step each: steps 0..3
    assert trace_step_annotations(tmp_path / "trace") == [0, 1, 2, 3]


def test_a_verdict_from_traced_calls_alone_says_to_profile_longer(tmp_path, ctx):
    # 3 steps, one per call, all inside a 4-call trace: nothing untraced was measured.
    report = _profile_with_clock(tmp_path, ctx, FakeClock(1e-3), steps_per_call=1, profile_steps=3,
                                 profile_trace_calls=4)
    assert report["window"].startswith("traced calls") and report["steps"] == 3
    assert "profile more steps" in report["advice"]
    (tmp_path / "longer").mkdir()
    longer = _profile_with_clock(tmp_path / "longer", ctx, FakeClock(1e-3), steps_per_call=1,
                                 profile_steps=12, profile_trace_calls=4)
    assert longer["window"] == "calls after the trace" and "profile more steps" not in longer["advice"]


def test_table_arithmetic_and_verdicts():
    phases = {"input_wait": 0.1, "h2d_transfer": 0.1, "dispatch": 0.2, "device_compute": 1.4,
              "metric_transfer": 0.05, "checkpointing": 0.05, "compile": 0.3}
    r = profile_table(phases, wall=2.2, steps=100, k=10)
    assert r["wall_s"] == pytest.approx(1.9)                      # compilation left out
    assert r["verdict"] == "compute-bound"                        # 26% idle, 11% dispatch
    assert r["ms_per_step"]["dispatch"] == pytest.approx(2.0)
    assert r["ms_per_step"]["device_compute"] == pytest.approx(14.0)
    assert sum(r["fraction"].values()) == pytest.approx(1.0)
    assert r["device_idle_fraction"] == pytest.approx(0.5 / 1.9)
    assert profile_table({**phases, "input_wait": 1.5}, 3.6, 100, 10)["verdict"] == "input-bound"
    assert profile_table({**phases, "dispatch": 1.5}, 3.5, 100, 10)["verdict"] == "dispatch-bound"
    # already one call per epoch: the advice is a larger batch, not a larger K
    whole_epoch = profile_table({**phases, "dispatch": 1.5}, 3.5, 100, 100, steps_per_epoch=100)
    assert "batch" in whole_epoch["advice"] and "steps_per_call" not in whole_epoch["advice"]


@pytest.mark.parametrize("device,dispatch,rest,verdict,advice", [
    # the table: 36.5% idle, 31.2% dispatch
    (0.635, 0.312, {"metric_transfer": 0.053}, "dispatch-bound", "train.steps_per_call"),
    # 30% idle: the largest other row is the input wait (hooks are a verdict of their own)
    (0.70, 0.10, {"input_wait": 0.12, "hooks_and_logging": 0.08}, "input-bound", "on_device_fraction"),
    (0.72, 0.26, {"other": 0.02}, "dispatch-bound", "train.steps_per_call"),  # 28% idle, but 26% dispatch
])
def test_a_device_idle_or_dispatching_that_much_is_not_compute_bound(device, dispatch, rest, verdict, advice):
    r = profile_table({"device_compute": device, "dispatch": dispatch, **rest}, wall=1.0, steps=100, k=1,
                      steps_per_epoch=600)
    assert r["fraction"]["device_compute"] == max(r["fraction"].values())  # the largest single row
    assert r["verdict"] == verdict and advice in r["advice"]
    below = profile_table({"device_compute": 0.75, "dispatch": 0.2, "other": 0.05}, 1.0, 100, 1, 600)
    assert below["verdict"] == "compute-bound"                      # 25% idle, 20% dispatch


def test_profile_command_with_one_step_per_call_prints_a_table_its_verdict_follows(tmp_path, capsys):
    from jaxtrain.cli.main import main
    workdir = tmp_path / "prof"
    assert main(["profile", "--steps", "20", "--set", "parallel.data_axis_size=1", "--set", "train.steps_per_call=1",
                 "--set", "logging.progress=plain", "--workdir", str(workdir)]) == 0
    out = capsys.readouterr().out
    assert "device compute" in out and "device idle" in out and "verdict: " in out
    report = json.loads((workdir / "profile.json").read_text())
    assert report["steps_per_call"] == 1 and sum(report["fraction"].values()) == pytest.approx(1.0)
    # one step per call on a tiny MLP: the host's per-call work leaves the device idle
    assert report["device_idle_fraction"] >= 0.3
    assert report["verdict"] != "compute-bound" and "train.steps_per_call" in report["advice"]
    assert trace_step_annotations(workdir / "trace")
    # MFU: the step's FLOPs over the profiled step time, against the run's own peak
    perf = json.loads((workdir / "summary.json").read_text())["perf"]
    step_s = report["wall_s"] / report["steps"]
    assert report["mfu"] == pytest.approx(perf["flops_per_step"] / step_s / 1e12 / perf["peak_tflops"])
    assert f"MFU: {100 * report['mfu']:.1f}%" in out
