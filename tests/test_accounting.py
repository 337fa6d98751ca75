"""Per-run accounting on the run clock: the time breakdown, step time, FLOPs per example and MFU."""

import json
import types

import jax
import numpy as np
import pytest
from conftest import make_dataset
from run_files import clock_total_s

from run_files import FakeClock
from jaxtrain import load_config
from jaxtrain.parallel import device_peak as peak
from jaxtrain.runs.api import train
from jaxtrain.training import accounting
from jaxtrain.training.loop import fit
from jaxtrain.training.setup import setup
from jaxtrain.training.context import RunContext
from jaxtrain.training.hooks.protocol import Hook
from jaxtrain.runs.trained import make_model
from jaxtrain.util.events import Console, JsonlWriter
from jaxtrain.engine.plan import make_plan
from jaxtrain.util.clock import RunClock

MNIST_MLP = (784, 256, 128, 64, 10)




def test_nested_phases_and_switches_charge_each_moment_once():
    clock = FakeClock()
    run_clock = RunClock(clock)
    run_clock.add_before_start("startup", 2.0)
    clock.advance(1.0)                       # other
    with run_clock.phase("dispatch"):
        clock.advance(3.0)
        with run_clock.phase("compile"):
            clock.advance(0.5)
        mark = run_clock.mark()
        clock.advance(1.0)
        run_clock.switch("device_compute")   # the same open phase, now another name
        clock.advance(0.75)
        now = run_clock.totals()
        assert now["dispatch"] == 4.0 and now["device_compute"] == 0.75
        assert run_clock.since(mark) == (1.75, {"dispatch": 1.0, "device_compute": 0.75})
    clock.advance(0.25)                      # other again
    totals = run_clock.totals()
    assert totals == {"startup": 2.0, "other": 1.25, "dispatch": 4.0, "compile": 0.5, "device_compute": 0.75}
    assert clock_total_s(run_clock) == 8.5 == sum(totals.values())
    assert accounting.parts(totals)["train"] == 4.75   # the training phases, added up


def test_segments_add_up_and_each_keeps_its_own_figures():
    first_source = FakeClock()
    first = RunClock(first_source)
    with first.phase("dispatch"):
        first_source.advance(2.0)
    first.record_epoch(epoch=1, train_s=2.0, steps=10, examples=640)
    first_source.advance(1.0)
    saved = json.loads(json.dumps(first.state_dict()))  # as a checkpoint's meta holds it
    second_source = FakeClock()
    second = RunClock(second_source)
    second.load_state_dict(saved)
    with second.phase("compile"):
        second_source.advance(0.5)
    with second.phase("dispatch"):
        second_source.advance(1.5)
    second.record_epoch(epoch=2, train_s=1.5, steps=10, examples=640)
    t = accounting.time_section(second)
    assert [s["total_s"] for s in t["segments"]] == [3.0, 2.0] and t["total_s"] == 5.0
    assert t["breakdown"]["train"] == 3.5 and t["breakdown"]["compile"] == 0.5 and t["breakdown"]["other"] == 1.0
    assert [e["segment"] for e in second.epoch_throughput] == [0, 1]
    # each segment's first epoch is a warm-up; with nothing else, all epochs count
    assert accounting.steady_epochs(second.epoch_throughput) == second.epoch_throughput
    rates = accounting.throughput(second.epoch_throughput)
    assert rates == {"step_time_ms": pytest.approx(175.0), "examples_per_sec": pytest.approx(1280 / 3.5)}


def _mnist_shaped(n=512, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(n, 784)).astype(np.float32)
    y = rng.integers(0, 10, n)
    return make_dataset(x, y, "classification", 10, test_fraction=0.25, name="mnist_shaped")


def _mnist_cfg(**train):
    return load_config("mnist_mlp", {"train.epochs": train.pop("epochs", 2),
                                     "data.batch_size": 64, "checkpoint.enabled": False,
                                     **{f"train.{k}": v for k, v in train.items()}})


class Sleeper(Hook):
    """Advances the fake clock by `seconds` in every after_call, charged to `time_part`."""

    def __init__(self, clock, seconds, time_part):
        self.clock, self.seconds, self.time_part = clock, seconds, time_part
        self.calls = 0

    def after_call(self, info):
        self.calls += 1
        self.clock.advance(self.seconds)


def test_fake_clock_breakdown_step_time_and_hook_parts(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    clock = FakeClock()
    ds = _mnist_shaped()
    cfg = _mnist_cfg(steps_per_call=2, epochs=2)   # 384 examples, batch 64: 6 steps, 3 calls an epoch
    ctx = RunContext(console=Console("none"), events=JsonlWriter(tmp_path / "m.jsonl"), clock=clock)
    run = setup(cfg, make_model(cfg, ds), ds, ctx, plan=make_plan(cfg, ds))
    epoch, compile_ = run.engine.run_epoch, run.engine._compile

    def slow_compile(*args):  # compiling "takes" 3 s, inside the engine's compile phase
        clock.advance(3.0)
        return compile_(*args)

    def slow_epoch(*args):  # every compiled call "takes" 0.2 s of training
        for call in epoch(*args):
            clock.advance(0.2)
            yield call
    run.engine._compile, run.engine.run_epoch = slow_compile, slow_epoch
    ckpt, other = Sleeper(clock, 1.0, "checkpointing"), Sleeper(clock, 0.5, "hooks_and_logging")
    summary = fit(run, hooks=[ckpt, other])
    totals = ctx.clock.totals()
    parts = accounting.parts(totals)
    assert ckpt.calls == other.calls == 6
    assert parts["checkpointing"] == pytest.approx(6.0)
    assert parts["hooks_and_logging"] == pytest.approx(3.0)
    assert parts["train"] == pytest.approx(6 * 0.2)
    assert parts["compile"] == pytest.approx(3.0)          # one chunk length, compiled once
    assert parts["evaluation"] == parts["other"] == 0.0
    assert clock_total_s(ctx.clock) == pytest.approx(13.2) == sum(totals.values())
    # 3 calls x 0.2 s over 6 steps of 64: 0.1 s a step, 640 examples/s, every epoch, although
    # a hook takes 1.5 s between the calls
    assert summary["perf"]["step_time_ms"] == pytest.approx(100.0)
    assert summary["train"]["examples_per_sec"] == pytest.approx(640.0)
    epochs = [json.loads(line) for line in open(tmp_path / "m.jsonl") if '"train"' in line]
    assert [e["step_time_ms"] for e in epochs] == pytest.approx([100.0, 100.0])
    assert [e["examples_per_sec"] for e in epochs] == pytest.approx([640.0, 640.0])
    assert all(0 < e["mfu"] <= 1 for e in epochs)


def test_a_save_between_calls_charges_the_device_wait_to_training_not_checkpointing(monkeypatch, tmp_path):
    """An asynchronous device on a fake clock: each call leaves 0.2 s of device work pending, spent
    by whoever next waits for a result. Saving every step waits for the call still running:
    that wait is the step's own time, not checkpointing's (charged to the save, it left training
    0.4 of its 2.4 s, and a real run saving every 5 steps reported 0.15 ms/step for 1.3 ms)."""
    from jaxtrain.training.hooks import build_hooks, guard
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    clock, pending = FakeClock(), [0.0]

    def waiting(real):
        def wait(x):
            clock.advance(pending[0])
            pending[0] = 0.0
            return real(x)
        return wait
    monkeypatch.setattr(jax, "block_until_ready", waiting(jax.block_until_ready))
    monkeypatch.setattr(jax, "device_get", waiting(jax.device_get))
    monkeypatch.setattr(guard, "_ready", lambda chunk: pending[0] == 0.0)  # nothing is, until waited for
    cfg = load_config(_mnist_cfg(steps_per_call=1, epochs=2),
                      {"checkpoint.enabled": True, "checkpoint.every_steps": 1, "checkpoint.keep": 1,
                       "checkpoint.async_save": False})
    ds = _mnist_shaped()
    ctx = RunContext(console=Console("none"), events=JsonlWriter(tmp_path / "m.jsonl"), clock=clock)
    run = setup(cfg, make_model(cfg, ds), ds, ctx, plan=make_plan(cfg, ds))
    call = run.engine._call

    def async_call(*args):
        out = call(*args)
        pending[0] += 0.2  # dispatched: the device works on it from now on
        return out
    run.engine._call = async_call
    summary = fit(run, hooks=build_hooks(cfg, tmp_path / "run"))
    parts = accounting.parts(ctx.clock.totals())
    assert parts["train"] == pytest.approx(12 * 0.2) and parts["checkpointing"] == 0.0
    assert summary["perf"]["step_time_ms"] == pytest.approx(200.0)


def _analytic_flops_per_example(sizes):
    """Matmul FLOPs of one training example: 2 per weight forward, 4 backward (input and
    weight gradients), less the first layer's input gradient, which nothing needs. The
    rule of thumb 6 x params counts that gradient too (1.454 MFLOP here instead of 1.052)."""
    weights = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    return 6 * weights - 2 * sizes[0] * sizes[1]


@pytest.mark.parametrize("devices,microbatches", [(1, 1), (8, 1), (1, 2)])
def test_summary_has_perf_and_a_breakdown_that_adds_up(monkeypatch, tmp_path, devices, microbatches):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    stale = 1e-6  # a planted peak 1000x (and more) too low: the run beats it and measures again
    peak.cache_file().parent.mkdir(parents=True)
    peak.cache_file().write_text(json.dumps({peak.cpu_key("float32"): {"tflops": stale, "measured_at": "x"}}))
    lines = []
    console = Console("plain", stream=types.SimpleNamespace(write=lines.append, flush=lambda: None,
                                                            isatty=lambda: False))
    summary = train(_mnist_cfg(steps_per_call="epoch"), dataset=_mnist_shaped(), console=console,
                    workdir=tmp_path / "run", overrides={"parallel.data_axis_size": devices,
                                                          "train.grad_accum_steps": microbatches})
    perf, t = summary["perf"], summary["time"]
    assert set(accounting.PARTS) <= set(t["breakdown"])
    assert sum(t["breakdown"].values()) == pytest.approx(t["total_s"])
    assert all(v >= 0 for v in t["breakdown"].values())
    assert t["breakdown"]["train"] > 0 and t["breakdown"]["compile"] > 0 and "compile_s" not in t
    assert len(t["segments"]) == 1 and t["segments"][0]["total_s"] == t["total_s"]
    # one measurement: examples/s x ms/step is the examples of a step (384 rows, 6 steps of 64)
    assert summary["train"]["examples_per_sec"] * perf["step_time_ms"] / 1e3 == pytest.approx(64, rel=0.1)
    # the stale peak was measured again, and MFU stays a fraction
    assert 0 < perf["mfu"] <= 1 and perf["peak_tflops"] > 1000 * stale
    assert perf["peak_measured_at"] != "x" and perf["peak_source"].startswith("measured")
    assert json.loads(peak.cache_file().read_text())[peak.cpu_key("float32")]["tflops"] > 1000 * stale
    # XLA's count of the compiled epoch (a 6-step scan) is one step's, on every device
    weights = sum(a * b for a, b in zip(MNIST_MLP[:-1], MNIST_MLP[1:]))
    assert weights == 242_304 and 6 * weights == 1_453_824  # the 6 x params
    assert perf["flops_per_example"] == pytest.approx(_analytic_flops_per_example(MNIST_MLP), rel=0.15)
    assert perf["tflops_per_sec"] == pytest.approx(perf["flops_per_step"] / perf["step_time_ms"] / 1e9)
    assert perf["mfu"] == pytest.approx(min(1.0, perf["tflops_per_sec"] / perf["peak_tflops"]))
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["perf"] == perf and on_disk["time"]["breakdown"] == t["breakdown"]
    text = "".join(lines).strip().splitlines()
    assert "MFU" in text[-2] and "ms/step" in text[-2]
    assert text[-1].startswith("time:") and text[-1].count(" s (") == 3


def test_peak_table_lists_dense_figures_and_scales_with_chips():
    assert peak.table_peak("NVIDIA H100 80GB HBM3", "bfloat16")[0] == 989.4
    assert peak.table_peak("NVIDIA H100 PCIe", "float32")[0] == 378.0
    assert peak.table_peak("NVIDIA H200", "float32")[0] == 494.7
    assert peak.table_peak("NVIDIA A100-SXM4-80GB", "bfloat16")[0] == 312.0
    assert peak.table_peak("NVIDIA L4", "bfloat16")[0] == 121.0
    assert peak.table_peak("TPU v5 lite", "float32")[0] == 197.0
    assert peak.table_peak("TPU v5p", "bfloat16")[0] == 459.0
    assert peak.table_peak("TPU v4", "bfloat16")[0] == 275.0
    assert peak.table_peak("TPU v6 lite", "bfloat16")[0] == 918.0
    assert peak.table_peak("Some Future Chip", "bfloat16") is None
    gpus = [types.SimpleNamespace(platform="gpu", device_kind="NVIDIA H200")] * 4
    assert peak.peak_tflops(gpus, "bfloat16").tflops == pytest.approx(4 * 989.4)
    for _, bf16, fp32, source in peak.PEAK_TABLE:
        assert bf16 >= fp32 > 0 and source


def test_cpu_peak_is_measured_once_and_again_only_when_a_run_beats_it(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    measured = iter([1.0, 0.5, 3.0])
    monkeypatch.setattr(peak, "measure_cpu_peak", lambda precision: next(measured))
    assert peak.cpu_peak("float32").tflops == 1.0
    assert peak.cpu_peak("float32").tflops == 1.0                # cached: not measured again
    # a run achieved 2.0: measured again (0.5, a busy machine); the run's own rate is the peak
    low = peak.cpu_peak("float32", at_least=2.0)
    assert low.tflops == 2.0 and "this run's own rate" in low.source
    assert peak.cpu_peak("float32", at_least=2.0).tflops == 3.0  # the cached 0.5 is measured again
    cached = json.loads(peak.cache_file().read_text())
    assert list(cached) == [peak.cpu_key("float32")] and cached[peak.cpu_key("float32")]["tflops"] == 3.0
    assert cached[peak.cpu_key("float32")]["measured_at"]


def test_the_peak_key_and_the_nominal_peak_follow_the_instruction_sets(monkeypatch):
    flags = "fpu sse avx2 fma avx512f avx512bw avx512_bf16"
    assert peak.cpu_features(flags) == ("avx2", "avx512f", "avx512_bf16")
    assert peak.cpu_features("fpu sse avx2") == ("avx2",)
    assert peak.flops_per_cycle(("avx2",), "float32")[0] == 32          # 2 FMA x 8 fp32 lanes x 2
    assert peak.flops_per_cycle(("avx2", "avx512f"), "float32")[0] == 64
    assert peak.flops_per_cycle(("avx2", "avx512f", "avx512_bf16"), "bfloat16")[0] == 128
    assert peak.flops_per_cycle((), "float32") is None
    monkeypatch.setattr(peak, "cpu_features", lambda: ("avx2",))
    monkeypatch.setattr(peak, "cpu_clock_ghz", lambda: 2.5)
    monkeypatch.setattr(peak, "usable_cores", lambda: 4)
    tflops, how = peak.nominal_cpu_peak("float32")
    assert tflops == pytest.approx(4 * 2.5e9 * 32 / 1e12) and "4 cores x 2.50 GHz x 32" in how
    avx2_key = peak.cpu_key("float32")
    monkeypatch.setattr(peak, "cpu_features", lambda: ("avx2", "avx512f"))
    assert peak.cpu_key("float32") != avx2_key and "avx512f" in peak.cpu_key("float32")


def test_the_plan_splits_the_batch_over_every_mesh_axis_and_the_memory_estimate_uses_it():
    """parallel.mesh {data: 2, fsdp: 4} on 8 devices: each device gets batch / 8 rows."""
    from jaxtrain.engine import memory
    cfg = load_config("mnist_mlp", {"data.batch_size": 64, "parallel.mesh": {"data": 2, "fsdp": 4},
                                    "train.steps_per_call": 4, "checkpoint.enabled": False})
    ds = _mnist_shaped()
    plan = make_plan(cfg, ds, num_devices=8)
    assert (plan.batch_shards, plan.per_device_batch, plan.steps_per_epoch) == (8, 8, 6)
    assert plan.steps_per_call == 4 and plan.on_device
    parts = memory.check_run(cfg, make_model(cfg, ds), ds, plan, available=(1 << 40, "test memory"))
    # the MLP's activations: 3 values (forward, gradient, pre-activation) per unit per row
    per_row = 3 * (784 + 256 + 128 + 64 + 10)
    assert parts["activations"] == 8 * per_row * memory.FLOAT_BYTES
    assert parts["input_batches"] == 8 * (784 + 10 + 1) * memory.FLOAT_BYTES
    with pytest.raises(Exception, match="does not fit the 6 available"):
        make_plan(cfg, ds, num_devices=6)


def test_the_plan_decides_which_k_auto_times_and_takes_the_longest_untimed_on_cpu_processes(monkeypatch):
    """steps_per_call: auto. One process: the plan lists the candidates Engine.prepare times,
    bounded for a streamed run by the host chunk (64 MiB). Several CPU processes: each call
    waits, so the plan takes the longest candidate untimed, the same on every process."""
    from jaxtrain.engine import autotune, plan as plan_module
    cfg = load_config("mnist_mlp", {"data.batch_size": 64, "train.steps_per_call": "auto",
                                    "train.on_device_fraction": 0.0, "checkpoint.enabled": False})
    ds = _mnist_shaped(n=4096)  # 48 steps of 64 rows of 785 float32 (+ label)
    monkeypatch.setattr(plan_module, "STREAM_CHUNK_BYTES", 64 * (784 * 4 + 8) * 5)  # 5 batches
    alone = make_plan(cfg, ds, num_devices=1)
    assert alone.steps_per_call is None and not alone.calls_wait and not alone.on_device
    assert alone.k_candidates == tuple(autotune.candidates(48, 5)) and max(alone.k_candidates) == 5
    monkeypatch.setattr(plan_module.jax, "process_count", lambda: 2)
    together = make_plan(cfg, ds, num_devices=1)
    assert together.calls_wait and together.k_candidates == ()
    assert together.steps_per_call == max(alone.k_candidates)


def test_a_run_without_checkpoints_never_imports_orbax(tmp_path):
    """orbax.checkpoint (tensorstore, asyncio) loads on first use, not with jaxtrain."""
    import subprocess
    import sys
    code = ("import sys, numpy as np\n"
            "from jaxtrain import train\n"
            "from jaxtrain.data import Dataset, Split\n"
            "x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)\n"
            "s = Split(x, (x[:, 0] > 0).astype(np.int32))\n"
            "ds = Dataset(task='classification', num_classes=2, feature_shape=(4,), train=s, val=None, test=s)\n"
            f"train({{'train': {{'epochs': 1}}, 'checkpoint': {{'enabled': False}}}}, dataset=ds,"
            f" workdir={str(tmp_path / 'off')!r})\n"
            "assert 'orbax.checkpoint.checkpoint_manager' not in sys.modules\n"
            f"train({{'train': {{'epochs': 1}}}}, dataset=ds, workdir={str(tmp_path / 'on')!r})\n"
            "assert 'orbax.checkpoint.checkpoint_manager' in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**__import__("os").environ, "JAX_NUM_CPU_DEVICES": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "on" / "checkpoints").is_dir() and not (tmp_path / "off" / "checkpoints").exists()


def test_command_line_counts_startup_and_exits_with_its_status_and_output(tmp_path):
    import os
    import subprocess
    import sys
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "1"}
    run = [sys.executable, "-m", "jaxtrain", "train", "--set", "train.epochs=1", "--set", "logging.progress=plain"]
    proc = subprocess.run([*run, "--workdir", str(tmp_path / "ok")], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.rstrip().splitlines()[-1].startswith("time:")   # flushed before the fast exit
    parts = json.loads((tmp_path / "ok" / "summary.json").read_text())["time"]["breakdown"]
    assert parts["startup"] > 0                                         # process start to the run's start
    bad = subprocess.run([*run, "--set", "train.epochs=0", "--workdir", str(tmp_path / "bad")],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
