"""Per-run accounting: the time breakdown, step time, FLOPs per example and MFU."""

import json
import os
import subprocess
import sys
import time
import types

import numpy as np
import pytest
from conftest import make_dataset

from jaxtrain import load_config
from jaxtrain.engine import peak
from jaxtrain.runs.api import train
from jaxtrain.training import accounting
from jaxtrain.training.loop import fit
from jaxtrain.training.setup import setup
from jaxtrain.training.hooks.protocol import Hook, RunContext
from jaxtrain.runs.api import make_model
from jaxtrain.util.events import Console, JsonlWriter
from jaxtrain.util.time_account import TimeAccount, process_age_s

MNIST_MLP = (784, 256, 128, 64, 10)


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_nested_parts_charge_each_moment_once():
    clock = FakeClock()
    account = TimeAccount(clock)
    account.add_before_start("startup", 2.0)
    clock.advance(1.0)                       # other
    with account.part("train"):
        clock.advance(3.0)
        with account.part("compile"):
            clock.advance(0.5)
        clock.advance(1.0)
        assert account.get("train") == 4.0   # the running part counts
    clock.advance(0.25)                      # other again
    total, parts = account.snapshot()
    assert parts == {"startup": 2.0, "other": 1.25, "train": 4.0, "compile": 0.5}
    assert total == 7.75 == sum(parts.values())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process_age_s reads /proc (Linux)")
def test_process_age_is_this_process_not_the_machine():
    """A child that sleeps 0.5 s and then reads its age: at least the sleep, at most the time
    the parent saw pass from before the start to after the end (one clock tick of slack)."""
    code = "import time; time.sleep(0.5); from jaxtrain.util.time_account import process_age_s; " \
           "print(process_age_s())"
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    elapsed = time.monotonic() - t0
    age = float(out.stdout)
    tick = 1.0 / os.sysconf("SC_CLK_TCK")
    assert 0.5 <= age <= elapsed + tick, (age, elapsed)
    assert process_age_s() > age - tick  # this process started before its child


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
    run = setup(cfg, make_model(cfg, ds), ds, ctx)
    epoch = run.engine.run_epoch

    def slow_epoch(*args):  # every compiled call "takes" 0.2 s of training
        for out in epoch(*args):
            clock.advance(0.2)
            yield out
    run.engine.run_epoch = slow_epoch
    ckpt, other = Sleeper(clock, 1.0, "checkpointing"), Sleeper(clock, 0.5, "hooks_and_logging")
    summary = fit(run, hooks=[ckpt, other])
    total, parts = accounting.breakdown(ctx.account)
    assert ckpt.calls == other.calls == 6
    assert parts["checkpointing"] == pytest.approx(6.0)
    assert parts["hooks_and_logging"] == pytest.approx(3.0)
    assert parts["train"] == pytest.approx(6 * 0.2)
    assert parts["compile"] == parts["evaluation"] == parts["other"] == 0.0
    assert total == pytest.approx(10.2)
    # 3 calls x 0.2 s over 6 steps: 0.1 s a step, every epoch
    assert summary["perf"]["step_time_ms"] == pytest.approx(100.0)
    epochs = [json.loads(line) for line in open(tmp_path / "m.jsonl") if '"train"' in line]
    assert [e["step_time_ms"] for e in epochs] == pytest.approx([100.0, 100.0])
    assert all(e["mfu"] > 0 for e in epochs)


def _analytic_flops_per_example(sizes):
    """Matmul FLOPs of one training example: 2 per weight forward, 4 backward (input and
    weight gradients), less the first layer's input gradient, which nothing needs. The
    rule of thumb 6 x params counts that gradient too (1.454 MFLOP here instead of 1.052)."""
    weights = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    return 6 * weights - 2 * sizes[0] * sizes[1]


@pytest.mark.parametrize("devices,microbatches", [(1, 1), (8, 1), (1, 2)])
def test_summary_has_perf_and_a_breakdown_that_adds_up(monkeypatch, tmp_path, devices, microbatches):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    lines = []
    console = Console("plain", stream=types.SimpleNamespace(write=lines.append, flush=lambda: None,
                                                            isatty=lambda: False))
    summary = train(_mnist_cfg(steps_per_call="epoch"), dataset=_mnist_shaped(), console=console,
                    workdir=tmp_path / "run", overrides={"parallel.data_axis_size": devices,
                                                          "train.grad_accum_steps": microbatches})
    perf, t = summary["perf"], summary["time"]
    assert set(accounting.PARTS) <= set(t["breakdown"])
    assert sum(t["breakdown"].values()) == pytest.approx(t["total_s"], rel=0.05)
    assert all(v >= 0 for v in t["breakdown"].values())
    assert t["breakdown"]["train"] > 0 and t["breakdown"]["compile"] > 0
    # XLA's count of the compiled epoch (a 6-step scan) is one step's, on every device
    weights = sum(a * b for a, b in zip(MNIST_MLP[:-1], MNIST_MLP[1:]))
    assert weights == 242_304 and 6 * weights == 1_453_824  # the 6 x params
    assert perf["flops_per_example"] == pytest.approx(_analytic_flops_per_example(MNIST_MLP), rel=0.15)
    assert perf["tflops_per_sec"] == pytest.approx(perf["flops_per_step"] / perf["step_time_ms"] / 1e9)
    assert perf["mfu"] == pytest.approx(perf["tflops_per_sec"] / perf["peak_tflops"])
    assert perf["peak_source"].startswith("measured")
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
    assert peak.peak_tflops(gpus, "bfloat16")[0] == pytest.approx(4 * 989.4)
    for _, bf16, fp32, source in peak.PEAK_TABLE:
        assert bf16 >= fp32 > 0 and source


def test_cpu_peak_is_measured_once_and_again_only_when_a_run_beats_it(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    measured = iter([1.0, 0.5, 3.0])
    monkeypatch.setattr(peak, "measure_matmul_tflops", lambda precision: next(measured))
    assert peak.cpu_peak("float32")[0] == 1.0
    assert peak.cpu_peak("float32")[0] == 1.0            # cached: not measured again
    assert peak.cpu_peak("float32", at_least=2.0)[0] == 1.0   # measured 0.5: the higher figure stays
    assert peak.cpu_peak("float32", at_least=2.0)[0] == 3.0
    assert json.loads(peak.cache_file().read_text()) == {
        f"{peak.cpu_model()} | {__import__('os').cpu_count()} cpus | jax {peak.jax.__version__} | float32": 3.0}


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
