"""Hooks see, the loop acts: a hook gets a read-only StepInfo and asks through its Request."""

import dataclasses

import jax
import numpy as np
import pytest
from conftest import make_dataset

from jaxtrain import load_config
from jaxtrain.runs.api import make_model
from jaxtrain.training.hooks.guard import NonFiniteGuard
from jaxtrain.training.hooks import CheckpointHook, EarlyStopping, build_hooks
from jaxtrain.training.loop import fit
from jaxtrain.training.setup import setup
from jaxtrain.training.hooks.signals import PreemptionHook
from jaxtrain.training.hooks.protocol import Hook, Request


def _run(ctx, epochs=2):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 3)).astype(np.float32)
    ds = make_dataset(x, x @ np.array([1.0, -2.0, 0.5], np.float32), test_fraction=0.2)
    cfg = load_config({"data": {"batch_size": 16}, "model": {"hidden_sizes": []},
                       "optimizer": {"name": "sgd", "learning_rate": 0.1},
                       "train": {"epochs": epochs, "steps_per_call": 2}, "checkpoint": {"enabled": False}})
    return setup(cfg, make_model(cfg, ds), ds, ctx)  # 64 training rows: 4 steps an epoch, 2 calls


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
    # (which holds what it restores), preemption last (after the final save).
    assert kinds == [NonFiniteGuard, EarlyStopping, CheckpointHook, PreemptionHook]
