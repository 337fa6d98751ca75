"""Early stopping: a hand-computed metric sequence, then end to end with the best parameters restored."""

import json
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrain import evaluate

from jaxtrain import train
from jaxtrain.ckpt.checkpoint import Checkpointer
from jaxtrain.config.schema import EarlyStoppingConfig
from jaxtrain.training.hooks import EarlyStopping
from jaxtrain.training.context import RunContext
from jaxtrain.training.hooks.protocol import StepInfo
from jaxtrain.training.record import EpochRecord
from jaxtrain.util.events import Console, JsonlWriter


class _State(SimpleNamespace):
    def replace(self, **kw):
        return _State(**{**self.__dict__, **kw})


def _info(epoch, record=None):
    state = _State(params={"w": jnp.full(2, float(epoch))}, rest={}, ema=None)
    return StepInfo(epoch=epoch, step_in_epoch=0, step=epoch * 10, steps_per_epoch=10, steps_per_call=10, devices=1,
                    ctx=RunContext(console=Console("none"), events=JsonlWriter(None)),
                    record=EpochRecord.from_json(record) if record else None,
                    run_state=state)


def _drive(cfg, values):
    """Feed val metrics epoch by epoch into the hook; params are tagged with their epoch. The
    parameters the run ends with: the last epoch's, or what the hook asks to restore."""
    hook = EarlyStopping(cfg)
    stopped_at = None
    for epoch, value in enumerate(values, 1):
        request = hook.on_epoch_end(_info(epoch, {"epoch": epoch, "val": {"loss": value, "accuracy": value}}))
        if request is not None and request.stop:
            stopped_at = epoch
            break
    end = hook.on_train_end(_info(epoch))
    params = end.restore["params"] if end.restore is not None else _info(epoch).state.params
    return hook, SimpleNamespace(state=SimpleNamespace(params=params), extra=end.summary), stopped_at


def test_min_mode_with_min_delta_hand_computed():
    # best 1.0 (e1); .95 is not < 1.0 - .1 (wait 1); .85 < .9: best (e3); .9 wait 1; .84 not < .75: wait 2 -> stop.
    cfg = EarlyStoppingConfig(metric="val.loss", patience=2, min_delta=0.1, mode="min")
    hook, run, stopped = _drive(cfg, [1.0, 0.95, 0.85, 0.9, 0.84, 0.1])
    assert stopped == 5 and hook.best == 0.85 and hook.best_epoch == 3
    assert float(run.state.params["w"][0]) == 3.0  # the best epoch's parameters came back
    assert run.extra["early_stopping"] == {"metric": "val.loss", "mode": "min", "best": 0.85, "best_epoch": 3,
                                           "stopped_epoch": 5, "restored_best": True}


def test_max_mode_and_patience_one():
    cfg = EarlyStoppingConfig(metric="val.accuracy", patience=1, min_delta=0.0, mode="max")
    hook, run, stopped = _drive(cfg, [0.5, 0.7, 0.7, 0.9])  # equal is not better: stops at e3
    assert stopped == 3 and hook.best_epoch == 2 and float(run.state.params["w"][0]) == 2.0


def test_no_stop_when_improving_keeps_the_last_parameters():
    cfg = EarlyStoppingConfig(metric="val.loss", patience=2)
    hook, run, stopped = _drive(cfg, [3.0, 2.0, 1.0])
    assert stopped is None and hook.best_epoch == 3
    assert run.extra["early_stopping"]["restored_best"] is False
    assert float(run.state.params["w"][0]) == 3.0


def test_end_to_end_stops_and_restores_the_best_epoch(tmp_path):
    # min_delta so large that nothing after epoch 1 counts as better: stop after epoch 3 (patience 2).
    cfg = {"name": "blobs", "data": {"source": "synthetic", "name": "blobs", "synthetic_rows": 300,
                                     "batch_size": 20, "val_fraction": 0.2},
           "model": {"hidden_sizes": [8]}, "optimizer": {"learning_rate": 0.01},
           "train": {"epochs": 10, "early_stopping": {"metric": "val.loss", "patience": 2, "min_delta": 100.0}},
           "checkpoint": {"keep": 10}, "parallel": {"data_axis_size": 1}, "logging": {"progress": "none"}}
    summary = train(cfg, workdir=tmp_path / "run")
    assert summary["train"]["epochs"] == 3 and summary["stopped_early"].startswith("early stopping")
    es = summary["early_stopping"]
    assert es["best_epoch"] == 1 and es["stopped_epoch"] == 3 and es["restored_best"]
    ckpts = tmp_path / "run" / "checkpoints"
    steps_per_epoch = 9  # 180 train rows / 20
    epoch1 = Checkpointer(ckpts).restore_raw(steps_per_epoch)[0]["params"]
    final = Checkpointer(ckpts).restore_raw()[0]["params"]
    for a, b in zip(jax.tree.leaves(epoch1), jax.tree.leaves(final)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The best checkpoint tracks the early-stopping metric.
    store = Checkpointer(ckpts)
    assert [s for s in store.manager.all_steps() if store.manager.metrics(s)] == [steps_per_epoch]
    assert store.manager.metrics(steps_per_epoch)["value"] == pytest.approx(es["best"])
    store.close()
    # The test metrics and `jaxtrain eval` both describe the restored (epoch 1) parameters.
    assert evaluate(tmp_path / "run")["loss"] == pytest.approx(summary["test"]["loss"], rel=1e-6)
    events = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(e["event"] == "early_stopping" and e["best_epoch"] == 1 for e in events)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["early_stopping"]["best_epoch"] == 1
