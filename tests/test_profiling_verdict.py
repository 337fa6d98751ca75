"""Step-time profiling: the verdict names the real bottleneck; the trace holds step annotations."""

import dataclasses
import itertools
import json
import threading

import numpy as np
import pytest
from conftest import make_dataset
from flax import nnx

from jaxtrain import load_config
from jaxtrain.engine.prefetch import prefetch_to_device
from jaxtrain.model.models import MLP
from jaxtrain.training.hooks import build_hooks
from jaxtrain.training.loop import fit
from jaxtrain.training.setup import setup
from jaxtrain.training.hooks.profiling import breakdown, trace_step_annotations
from jaxtrain.util.phase_timer import PhaseTimer


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


class SlowResult:
    """What a compiled call returns: the device needs `seconds` more before it is ready."""

    def __init__(self, clock: FakeClock, seconds: float):
        self.clock, self.seconds = clock, seconds

    def block_until_ready(self):
        self.clock.advance(self.seconds)
        return self


def test_phase_timer_splits_a_call_into_dispatch_and_device_compute():
    clock = FakeClock()
    timer = PhaseTimer(clock, active=True)

    def call(clock):  # 2 ms to dispatch, then 10 ms until the device is done
        clock.advance(0.002)
        return SlowResult(clock, 0.010)

    for _ in range(3):
        timer.call(call, 4, clock)
    with timer.phase("hooks"):
        clock.advance(0.5)
    assert timer.steps == 12 and timer.calls == 3
    assert timer.totals["dispatch"] == pytest.approx(0.006)
    assert timer.totals["device_compute"] == pytest.approx(0.030)
    assert timer.totals["hooks"] == pytest.approx(0.5)
    idle = PhaseTimer(clock)  # inactive: nothing timed, nothing waited for
    assert idle.call(call, 4, clock).seconds == 0.010 and idle.totals["dispatch"] == 0.0


def test_input_wait_is_the_time_the_loop_waited_for_a_slow_pipeline():
    # The pipeline makes a batch only while the loop waits for one (it reads the clock once
    # before waiting and once after), taking 50 ms of fake time each: no overlap at all.
    clock = FakeClock()
    asked = threading.Semaphore(0)
    reads = itertools.count()
    main = threading.main_thread()

    def read() -> float:
        if threading.current_thread() is main and next(reads) % 2 == 0:
            asked.release()
        return FakeClock.__call__(clock)

    timer = PhaseTimer(read, active=True)

    def batches():
        for _ in range(6):
            assert asked.acquire(timeout=60), "the loop never asked for a batch"
            clock.advance(0.05)
            yield (np.zeros((2, 3), np.float32),)

    chunks = list(prefetch_to_device(batches(), 1, lambda host: host, timer=timer))
    assert [n for n, _ in chunks] == [1] * 6
    # one batch per call: 6 x 50 ms waited for
    assert timer.totals["input_wait"] == pytest.approx(0.3)
    assert timer.background["prepare"] == 0.0  # stacking took no (fake) time


def _profile_with_clock(tmp_path, ctx, clock, **train_keys):
    """train.profile through setup and fit, every phase timed on `clock`."""
    cfg = load_config({"model": {"hidden_sizes": [4]}, "data": {"batch_size": 10},
                       "train": {"epochs": 3, "profile": True, **train_keys},
                       "parallel": {"data_axis_size": 1}, "checkpoint": {"enabled": False},
                       "logging": {"progress": "none"}})
    ds = _dataset()
    ctx = dataclasses.replace(ctx, clock=clock)
    run = setup(cfg, MLP(8, (4,), 2, rngs=nnx.Rngs(0)), ds, ctx)
    fit(run, hooks=build_hooks(cfg, tmp_path))
    return json.loads((tmp_path / "profile.json").read_text())


def test_loop_bound_run_is_judged_dispatch_bound_and_traced(tmp_path, ctx):
    # Every clock reading costs 1 ms: the device's share of a call is the one reading
    # between dispatch and ready, the loop's own host work is every other reading.
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
    # the verdict names the largest share of the reported time, summed here from its parts
    f = report["fraction"]
    shares = {"input-bound": f["input_wait"] + f["h2d_transfer"], "dispatch-bound": f["dispatch_python"],
              "compute-bound": f["device_compute"], "checkpoint-bound": f["checkpoint_blocking"],
              "eval-bound": f["evaluation"]}
    assert report["verdict"] == max(shares, key=shares.get), (report["verdict"], shares)
    assert trace_step_annotations(workdir / "trace")
    # MFU: the step's FLOPs over the profiled step time, against the run's own peak
    perf = json.loads((workdir / "summary.json").read_text())["perf"]
    step_s = report["wall_s"] / report["steps"]
    assert report["mfu"] == pytest.approx(perf["flops_per_step"] / step_s / 1e12 / perf["peak_tflops"])
    assert f"MFU: {100 * report['mfu']:.1f}%" in out
