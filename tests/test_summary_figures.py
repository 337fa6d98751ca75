"""Every figure of summary.json against a value found another way: a fake clock whose epochs take
unequal times (5 s, then 1 s, 1 s), closed forms of the model's sizes and of the split, the
records of metrics.jsonl, the peak table and cache. (summary.json's keys are listed in
KEYS; a test fails when a key appears that this file does not check.)"""

import json
import math

import numpy as np
import pytest
from conftest import make_dataset

from run_files import FakeClock
from jaxtrain import load_config, train
from jaxtrain.parallel import device_peak as peak
from jaxtrain.runs.trained import make_model
from jaxtrain.training import accounting
from jaxtrain.training.context import RunContext
from jaxtrain.engine.plan import make_plan
from jaxtrain.training.loop import fit
from jaxtrain.training.setup import setup
from jaxtrain.util.events import Console, JsonlWriter




def test_unequal_epochs_give_the_steady_epochs_figures(monkeypatch, tmp_path):
    """6 steps an epoch in 3 calls of 2. Epoch 1's calls take 5/3 s each (5 s), the later
    epochs' 1/3 s (1 s): the summary's step time is the later two epochs' (2 s over 12 steps),
    each epoch's record its own, TFLOP/s and MFU follow from the step time."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    clock = FakeClock()
    rng = np.random.default_rng(0)
    ds = make_dataset(rng.uniform(-1, 1, (512, 784)).astype(np.float32), rng.integers(0, 10, 512),
                      "classification", 10, test_fraction=0.25)
    cfg = load_config("mnist_mlp", {"train.epochs": 3, "data.batch_size": 64, "checkpoint.enabled": False,
                                    "train.steps_per_call": 2})
    ctx = RunContext(console=Console("none"), events=JsonlWriter(tmp_path / "m.jsonl"), clock=clock)
    run = setup(cfg, make_model(cfg, ds), ds, ctx, plan=make_plan(cfg, ds))
    epoch, compile_, calls = run.engine.run_epoch, run.engine._compile, [0]

    def slow_compile(*args):  # compiling "takes" 3 s, inside the engine's compile phase
        clock.advance(3.0)
        return compile_(*args)

    def timed_epoch(*args):  # each compiled call of epoch 1 "takes" 5/3 s, later ones 1/3 s
        for out in epoch(*args):
            clock.advance(5.0 / 3 if calls[0] < 3 else 1.0 / 3)
            calls[0] += 1
            yield out
    run.engine._compile, run.engine.run_epoch = slow_compile, timed_epoch
    summary = fit(run, hooks=[])
    assert calls[0] == 9
    steps, rows = 6, 384
    per_epoch = [5.0, 1.0, 1.0]
    records = [json.loads(line) for line in open(tmp_path / "m.jsonl") if '"train"' in line]
    assert [r["step_time_ms"] for r in records] == pytest.approx([1e3 * s / steps for s in per_epoch])
    assert [r["examples_per_sec"] for r in records] == pytest.approx([rows / s for s in per_epoch])
    step_ms = 1e3 * sum(per_epoch[1:]) / (2 * steps)
    perf = summary["perf"]
    assert perf["step_time_ms"] == pytest.approx(step_ms)                       # 166.7, not 500
    assert summary["train"]["examples_per_sec"] == pytest.approx(2 * rows / sum(per_epoch[1:]))
    assert perf["flops_per_example"] == pytest.approx(perf["flops_per_step"] / 64)
    tflops = perf["flops_per_step"] / (step_ms / 1e3) / 1e12
    assert perf["tflops_per_sec"] == pytest.approx(tflops)
    assert perf["mfu"] == pytest.approx(min(1.0, tflops / perf["peak_tflops"]))
    assert [r["mfu"] for r in records] == pytest.approx(
        [min(1.0, perf["flops_per_step"] * steps / s / 1e12 / perf["peak_tflops"]) for s in per_epoch])
    parts = accounting.parts(ctx.clock.totals())
    assert parts["train"] == pytest.approx(sum(per_epoch)) and parts["compile"] == pytest.approx(3.0)
    assert summary["train"]["epochs"] == 3 and summary["train"]["steps"] == 3 * steps


BLOBS = {"name": "blobs_figures", "data": {"source": "synthetic", "name": "blobs", "synthetic_rows": 400,
                                           "batch_size": 64, "val_fraction": 0.2, "test_fraction": 0.2},
         "model": {"hidden_sizes": [16]}, "optimizer": {"name": "adam", "learning_rate": 0.01},
         "train": {"epochs": 2, "steps_per_call": 1}, "checkpoint": {"enabled": False},
         "logging": {"progress": "none"}, "parallel": {"data_axis_size": 2}}

KEYS = {"config_name", "task", "model", "test", "val", "train", "perf", "devices", "batch", "parallel",
        "evaluation", "execution", "data", "stopped_early", "memory", "status", "workdir", "time"}


@pytest.fixture(scope="module")
def blobs_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("figures")
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(tmp / "cache"))
    try:
        summary = train(BLOBS, workdir=tmp / "run")
        cache = json.loads(peak.cache_file().read_text())
    finally:
        mp.undo()
    return tmp / "run", summary, cache


def test_the_run_description_and_counts_are_the_configs_and_the_splits(blobs_run):
    run, summary, _ = blobs_run
    assert set(summary) == KEYS
    assert json.loads((run / "summary.json").read_text()) == summary
    assert summary["config_name"] == "blobs_figures" and summary["task"] == "classification"
    assert summary["model"] == {"name": "mlp"} and summary["status"] == "completed"
    assert summary["workdir"] == str(run) and summary["stopped_early"] is None
    n_val = n_test = round(400 * 0.2)
    n_train = 400 - n_val - n_test
    assert summary["data"] == {"train": n_train, "val": n_val, "test": n_test}
    steps = math.ceil(n_train / 64)
    assert summary["execution"]["steps_per_epoch"] == steps and summary["train"]["steps"] == 2 * steps
    assert summary["train"]["epochs"] == 2
    assert summary["batch"] == {"global": 64, "per_device": 64 // 2, "grad_accum_steps": 1}
    assert summary["devices"]["count"] == 2 and summary["devices"]["processes"] == 1
    assert summary["devices"]["platform"] == "cpu" and summary["devices"]["mesh"] == {"data": 2}
    assert summary["parallel"]["mesh"] == {"data": 2}
    assert summary["evaluation"] == {"params": "trained", "ema_decay": None}
    assert summary["perf"]["devices"] == 2 and summary["perf"]["device_kind"] == "cpu"
    assert summary["perf"]["precision"] == summary["execution"]["precision"] == "float32"
    assert summary["perf"]["steps_per_call"] == summary["execution"]["steps_per_call"] == 1
    assert summary["execution"]["recompiles"] == 0 and summary["execution"]["on_device_data"] is True


def test_the_metrics_are_the_last_records_of_metrics_jsonl(blobs_run):
    run, summary, _ = blobs_run
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last_train = [e for e in events if e["event"] == "train"][-1]
    evals = {e["split"]: e for e in events if e["event"] == "eval"}   # the last of each split
    strip = lambda r: {k: v for k, v in r.items() if k not in ("event", "time", "split", "epoch", "step")}
    assert summary["train"]["loss"] == last_train["loss"]
    assert summary["train"]["accuracy"] == last_train["accuracy"]
    assert summary["val"] == strip(evals["val"]) and summary["test"] == strip(evals["test"])
    assert 0 <= summary["test"]["accuracy"] <= 1 and summary["test"]["loss"] > 0


def test_the_memory_estimate_is_its_closed_form(blobs_run):
    """An MLP F -> 16 -> C trained with Adam on 2 devices, the training set on the devices."""
    from jaxtrain.data import load_dataset
    run, summary, _ = blobs_run
    ds = load_dataset(load_config(BLOBS).data)
    features, classes = int(np.prod(ds.feature_shape)), ds.num_classes
    params = (features * 16 + 16 + 16 * classes + classes) * 4
    per_device = 64 // 2
    est = summary["memory"]["estimate"]
    assert est["parameters"] == 4 * params and est["optimizer_state"] == 2 * params and est["ema"] == 0
    assert est["activations"] == per_device * 3 * (features + 16 + classes) * 4
    assert est["input_batches"] == per_device * (features + classes + 1) * 4
    assert est["training_set"] == ds.train.x.nbytes + ds.train.y.nbytes
    assert est["total"] == sum(v for k, v in est.items() if k != "total")
    compiled = summary["memory"]["compiled_step"]
    assert compiled["aliased"] == summary["memory"]["state_bytes_per_device"] > params


def test_the_peak_is_the_cached_measurement_and_the_nominal_one_the_cpus(blobs_run):
    _, summary, cache = blobs_run
    perf = summary["perf"]
    entry = cache[peak.cpu_key("float32")]
    # CPU devices share the host's cores: the process's measured peak, however many devices
    assert perf["peak_tflops"] == max(entry["tflops"], perf["tflops_per_sec"])
    assert perf["peak_measured_at"] == entry["measured_at"] and str(peak.cache_file().name) in perf["peak_source"]
    nominal = peak.nominal_cpu_peak("float32")
    assert (perf["nominal_peak_tflops"], perf["nominal_peak_source"]) == (nominal or (None, None))
    assert perf["flops_per_example"] == pytest.approx(perf["flops_per_step"] / 64)
    assert perf["tflops_per_sec"] == pytest.approx(perf["flops_per_step"] / perf["step_time_ms"] / 1e9)
    assert perf["mfu"] == pytest.approx(min(1.0, perf["tflops_per_sec"] / perf["peak_tflops"]))


def test_time_adds_up_over_its_parts_and_segments(blobs_run):
    _, summary, _ = blobs_run
    t = summary["time"]
    assert list(t["breakdown"])[:len(accounting.PARTS)] == list(accounting.PARTS)
    assert sum(t["breakdown"].values()) == pytest.approx(t["total_s"], rel=1e-9)
    [segment] = t["segments"]
    assert segment == {"total_s": t["total_s"], "breakdown": t["breakdown"]}
    # throughput: examples per step is the epoch's rows over its steps (192 rows, 3 steps)
    steps = summary["execution"]["steps_per_epoch"]
    assert summary["train"]["examples_per_sec"] * summary["perf"]["step_time_ms"] / 1e3 == \
        pytest.approx(summary["data"]["train"] / steps)
