"""TensorBoard event files parse back with the logged scalars; the progress bar's rate and ETA."""

import io
import json
import struct

import pytest

import jaxtrain
from jaxtrain.runs.api import train
from jaxtrain.util.events import Console


def read_events(path):
    """Records of a TFRecord file (length, crc, data, crc), parsed as tensorboard Event protos."""
    from tensorboardX.proto import event_pb2
    data, pos, events = path.read_bytes(), 0, []
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        events.append(event_pb2.Event.FromString(data[pos + 12:pos + 12 + length]))
        pos += 12 + length + 4
    return events


def test_tensorboard_events_hold_the_epoch_scalars(tmp_path):
    run = tmp_path / "run"
    train("digits_mlp", workdir=run, console=Console("none"),
          overrides={"train.epochs": 3, "logging.tensorboard": True, "parallel.data_axis_size": 1,
                     "model.hidden_sizes": [16]})
    files = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 1
    scalars = {}
    for e in read_events(files[0]):
        for v in e.summary.value:
            scalars.setdefault(v.tag, []).append((e.step, v.simple_value))
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_ev = [r for r in logged if r["event"] == "train"]
    val_ev = [r for r in logged if r["event"] == "eval" and r["split"] == "val"]
    assert [s for s, _ in scalars["train/loss"]] == [r["step"] for r in train_ev]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([r["loss"] for r in train_ev], rel=1e-6)
    assert [v for _, v in scalars["train/accuracy"]] == pytest.approx([r["accuracy"] for r in train_ev])
    assert [v for _, v in scalars["val/loss"]] == pytest.approx([r["loss"] for r in val_ev], rel=1e-6)
    # figures found another way: the epochs' last steps from the split size, and the last
    # validation accuracy from the saved run evaluated again
    summary = json.loads((run / "summary.json").read_text())
    per_epoch = -(-summary["data"]["train"] // 32)            # digits_mlp: batch 32
    assert [s for s, _ in scalars["train/loss"]] == [per_epoch, 2 * per_epoch, 3 * per_epoch]
    assert scalars["val/accuracy"][-1][1] == pytest.approx(jaxtrain.evaluate(run, split="val")["accuracy"])


def test_no_tensorboard_directory_by_default(tmp_path):
    train("digits_mlp", workdir=tmp_path / "run", console=Console("none"),
          overrides={"train.epochs": 1, "parallel.data_axis_size": 1, "model.hidden_sizes": [8]})
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_progress_rate_and_eta_from_a_fake_clock():
    from types import SimpleNamespace

    from jaxtrain.training.loop import _progress
    from jaxtrain.util.clock import RunClock
    now = [100.0]
    run = SimpleNamespace(ctx=SimpleNamespace(clock=RunClock(lambda: now[0])), global_step=10,
                          progress_from=None, plan=SimpleNamespace(epochs=10, steps_per_epoch=10, batch_size=32))
    assert _progress(run) == {}        # first call (compilation) starts the clock
    now[0] += 2.0
    run.global_step = 30
    got = _progress(run)               # 20 steps in 2 s = 10 steps/s; 70 of 100 steps left
    assert got["rate"] == pytest.approx(320.0)
    assert got["eta_s"] == pytest.approx(7.0)
    out = io.StringIO()
    Console("bar", out).progress("epoch 1", 3, 10, **got)
    assert "320 ex/s" in out.getvalue() and "ETA 7s" in out.getvalue()
