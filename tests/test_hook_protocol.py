"""Hooks see, the loop acts: a hook gets a read-only StepInfo and asks through its Request."""

import dataclasses

import jax
import numpy as np
import pytest
from conftest import make_dataset

from jaxtrain import load_config
from jaxtrain.runs.trained import make_model
from jaxtrain.training.hooks.best import BestMetric
from jaxtrain.training.record import EpochRecord
from jaxtrain.training.hooks.dispatch import dispatch
from jaxtrain.training.hooks.guard import NonFiniteGuard
from jaxtrain.training.hooks import CheckpointHook, EarlyStopping, build_hooks
from jaxtrain.training.loop import fit
from jaxtrain.training.setup import setup
from jaxtrain.engine.plan import make_plan
from jaxtrain.training.hooks.signals import PreemptionHook
from jaxtrain.training.hooks.progress import ProgressHook
from jaxtrain.training.hooks.protocol import Hook, Request
from jaxtrain.util.clock import RunClock


def _run(ctx, epochs=2):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 3)).astype(np.float32)
    ds = make_dataset(x, x @ np.array([1.0, -2.0, 0.5], np.float32), test_fraction=0.2)
    cfg = load_config({"data": {"batch_size": 16}, "model": {"hidden_sizes": []},
                       "optimizer": {"name": "sgd", "learning_rate": 0.1},
                       "train": {"epochs": epochs, "steps_per_call": 2}, "checkpoint": {"enabled": False}})
    return setup(cfg, make_model(cfg, ds), ds, ctx, plan=make_plan(cfg, ds))  # 64 training rows: 4 steps an epoch, 2 calls


class Recorder(Hook):
    """Records what it sees; asks for what it is given (by call number)."""

    def __init__(self, asks=None):
        self.seen, self.asks = [], asks or {}

    def after_call(self, info):
        self.seen.append((info.epoch, info.step_in_epoch, info.step))
        with pytest.raises(dataclasses.FrozenInstanceError):
            info.step = 0  # a hook cannot move the run
        return self.asks.get(len(self.seen))


def test_hooks_see_each_call_and_the_loop_applies_their_requests(ctx):
    run = _run(ctx)
    initial = jax.tree.map(np.asarray, run.state.params)
    first = Recorder({3: Request(summary={"note": 1}, restore={"params": initial})})
    second = Recorder({3: Request(stop="asked to stop")})
    summary = fit(run, hooks=[first, second])
    # Positions after each call of 2 steps; the second epoch stopped after its first call.
    assert first.seen == second.seen == [(0, 2, 2), (0, 4, 4), (1, 2, 6)]
    assert summary["stopped_early"] == "asked to stop" and summary["note"] == 1
    assert summary["train"]["steps"] == 6
    # The first hook's restore was applied before the stop: the run ends on the initial parameters.
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, run.state.params), initial)


def test_build_hooks_owns_the_order(tmp_path):
    cfg = load_config({"train": {"early_stopping": {"metric": "val.loss", "patience": 2}},
                       "checkpoint": {"enabled": True}})
    kinds = [type(h) for h in build_hooks(cfg, tmp_path)]
    # The guard first (nothing non-finite is acted on), early stopping before the checkpoint
    # (which holds what it restores), preemption after the final save, then the progress (it
    # only prints).
    assert kinds == [NonFiniteGuard, EarlyStopping, CheckpointHook, PreemptionHook, ProgressHook]


def test_early_stopping_and_the_best_checkpoint_share_one_tracker(tmp_path):
    """Without checkpoint.best_metric, 'best' is early stopping's: one tracker; with it, two."""
    es = {"metric": "val.accuracy", "mode": "max", "min_delta": 0.1, "patience": 2}
    hooks = build_hooks(load_config({"train": {"early_stopping": es}}), tmp_path)
    stopper, saver = hooks[1], hooks[2]
    assert saver.best is stopper.tracker and saver.best_metric == "val.accuracy"
    own = build_hooks(load_config({"train": {"early_stopping": es},
                                   "checkpoint": {"best_metric": "val.loss"}}), tmp_path)
    assert own[2].best is not own[1].tracker and own[2].best.metric == "val.loss"

    # Both hooks ask about the same epoch: the same answer, whatever their order.
    tracker = BestMetric("val.accuracy", "max", min_delta=0.1)
    answers = [(tracker.observe(r, s), tracker.observe(r, s)) for s, r in enumerate(map(EpochRecord.from_json,
        [{"epoch": 1, "val": {"accuracy": float("nan")}}, {"epoch": 2, "val": {"accuracy": 0.5}},
         {"epoch": 3, "val": {"accuracy": 0.55}}, {"epoch": 4, "val": {"accuracy": 0.7}}, {"epoch": 5}]))]
    # NaN is never a best; 0.55 is not 0.1 above 0.5; no val metric: not a best.
    assert answers == [(False, False), (True, True), (False, False), (True, True), (False, False)]
    assert (tracker.value, tracker.epoch, tracker.step) == (0.7, 4, 3)


def test_one_dispatcher_runs_each_position_for_every_lane_and_times_each_hook():
    calls = []

    class Named(Hook):
        def __init__(self, name, part=None):
            self.label = name
            if part:
                self.time_part = part

    clock = RunClock(now=iter(range(100)).__next__)  # every reading one second later
    lanes = [[Named("a0"), Named("a1", "checkpointing")], [Named("b0")]]
    dispatch(clock, lanes, lambda lane, hook: calls.append((lane, hook.label)))
    assert calls == [(0, "a0"), (1, "b0"), (0, "a1")]
    # each hook's call spans one tick of the clock, charged to its own phase
    totals = clock.totals()
    assert (totals["hooks_and_logging"], totals["checkpointing"]) == (2, 1)
