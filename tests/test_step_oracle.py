"""One training step on a padded, masked batch against a NumPy re-implementation.

The only batch holds 5 real rows and 3 padding rows (batch 8), so the masked mean must
divide by 5, not 8; on 8 devices three of them hold padding only. Every path that runs
the step (one device, and sharded, pmap, fsdp on 8 devices; data on the device or
streamed) must give the NumPy loss, gradient and updated parameters.
"""

import numpy as np
import pytest
from flax import nnx

from jaxtrain import load_config
from jaxtrain.data import Dataset, Split
from jaxtrain.model.models import LinearRegression
from jaxtrain.training.loop import fit
from jaxtrain.training.setup import setup
from jaxtrain.engine.plan import make_plan

LR = 0.1
ROWS, BATCH, FEATURES = 5, 8, 8


def _data():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(ROWS + 3, FEATURES)).astype(np.float32)
    y = (x @ rng.normal(size=FEATURES) + 0.5).astype(np.float32)
    return Dataset(task="regression", num_classes=None, feature_shape=(FEATURES,),
                   train=Split(x[:ROWS], y[:ROWS]), val=None, test=Split(x[ROWS:], y[ROWS:]))


def _initial_params():
    rng = np.random.default_rng(11)
    return rng.normal(size=(FEATURES, 1)).astype(np.float32), np.array([0.3], np.float32)


def numpy_step(x, y, kernel, bias):
    """Loss at the start, its gradient, and one SGD step: a mean over the real rows only."""
    err = (x @ kernel)[:, 0] + bias[0] - y
    loss = np.mean(err ** 2)
    g_kernel = (2.0 / len(x)) * x.T @ err[:, None]
    g_bias = np.array([2.0 * err.mean()])
    return loss, (g_kernel, g_bias), (kernel - LR * g_kernel, bias - LR * g_bias)


PATHS = [("sharded", 1, True), ("sharded", 1, False)] + [
    (strategy, 8, on_device) for strategy in ("sharded", "pmap", "fsdp") for on_device in (True, False)]


def _linear_run(ctx, ds, kernel0, bias0, strategy, devices, on_device):
    """A one-step SGD run of a linear model starting from (kernel0, bias0), one step per call."""
    model = LinearRegression(FEATURES, kernel0.shape[1], rngs=nnx.Rngs(0))
    model.linear.kernel[...] = kernel0
    model.linear.bias[...] = bias0
    cfg = load_config({"model": {"name": "linear"}, "data": {"batch_size": BATCH},
                       "optimizer": {"name": "sgd", "learning_rate": LR},
                       "train": {"epochs": 1, "steps_per_call": 1,
                                 "on_device_fraction": 1.0 if on_device else 0.0},
                       "parallel": {"strategy": strategy, "data_axis_size": devices},
                       "checkpoint": {"enabled": False}})
    return setup(cfg, model, ds, ctx, plan=make_plan(cfg, ds))


@pytest.mark.parametrize("strategy,devices,on_device", PATHS)
def test_one_step_on_a_padded_batch_matches_numpy(ctx, strategy, devices, on_device):
    ds = _data()
    kernel0, bias0 = _initial_params()
    run = _linear_run(ctx, ds, kernel0, bias0, strategy, devices, on_device)
    assert run.engine.steps == 1 and run.engine.on_device == on_device
    summary = fit(run)

    loss, (g_kernel, g_bias), (kernel1, bias1) = numpy_step(ds.train.x.astype(np.float64),
                                                           ds.train.y.astype(np.float64), kernel0, bias0)
    kernel = np.asarray(run.state.params["linear"]["kernel"][...])
    bias = np.asarray(run.state.params["linear"]["bias"][...])
    assert summary["train"]["loss"] == pytest.approx(loss, rel=1e-5)
    np.testing.assert_allclose((kernel0 - kernel) / LR, g_kernel, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose((bias0 - bias) / LR, g_bias, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(kernel, kernel1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bias, bias1, rtol=1e-5, atol=1e-6)


CLASSES = 3
CLASS_PATHS = [("sharded", 1, True), ("sharded", 8, True), ("pmap", 8, False)]


@pytest.mark.parametrize("strategy,devices,on_device", CLASS_PATHS)
def test_classification_counts_only_the_real_rows_of_a_padded_batch(ctx, strategy, devices, on_device):
    """`correct` is a NumPy count over the 5 real rows (4 right, 1 wrong). The 3 padding rows
    repeat row 0, which the model gets right: counting them would give 7 of 5, accuracy 1.4."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(ROWS + 3, FEATURES)).astype(np.float32)
    kernel0 = rng.normal(size=(FEATURES, CLASSES)).astype(np.float32)
    bias0 = np.zeros(CLASSES, np.float32)
    predicted = np.argmax(x.astype(np.float64) @ kernel0 + bias0, axis=1)
    y = predicted.astype(np.int32)
    y[ROWS - 1] = (predicted[ROWS - 1] + 1) % CLASSES  # the one real row the model gets wrong
    ds = Dataset(task="classification", num_classes=CLASSES, feature_shape=(FEATURES,),
                 train=Split(x[:ROWS], y[:ROWS]), val=None, test=Split(x[ROWS:], y[ROWS:]))
    run = _linear_run(ctx, ds, kernel0, bias0, strategy, devices, on_device)
    assert run.engine.on_device == on_device
    summary = fit(run)
    expected = np.sum(predicted[:ROWS] == y[:ROWS]) / ROWS
    assert expected == pytest.approx(0.8)
    assert summary["train"]["accuracy"] == pytest.approx(expected)
    assert run.lanes[0].history[-1].accuracy <= 1.0
