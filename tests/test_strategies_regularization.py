"""L1/L2 penalties, decoupled weight decay and dropout against NumPy and other code paths."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import make_dataset
from flax import nnx

from jaxtrain import load_config
from jaxtrain.training.setup import setup
from jaxtrain.engine.plan import make_plan
from jaxtrain.model.models import MLP, LinearRegression
from jaxtrain.model.optim import build_optimizer
from jaxtrain.engine.step import init_state, make_train_step, split_model


def _problem(n=32, d=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x @ rng.normal(size=d) + 0.5).astype(np.float32)
    w = rng.normal(size=(d, 1)).astype(np.float32)
    return x, y, w


def _one_step(opt_cfg: dict, x, y, w0, b0, l1=0.0, l2=0.0):
    model = LinearRegression(x.shape[1], rngs=nnx.Rngs(0))
    model.linear.kernel[...] = jnp.asarray(w0)
    model.linear.bias[...] = jnp.asarray(b0)
    train_def, _, params, rest = split_model(model)
    cfg = load_config({"optimizer": opt_cfg}).optimizer
    tx = build_optimizer(cfg, 1, 1, params)
    step = jax.jit(make_train_step(train_def, tx, "regression", l1=l1, l2=l2))
    state, _ = step(init_state(params, rest, tx), (jnp.asarray(x), jnp.asarray(y), jnp.ones(len(x))))
    return np.asarray(state.params["linear"]["kernel"][...]), np.asarray(state.params["linear"]["bias"][...])


@pytest.mark.parametrize("l1,l2", [(0.0, 0.3), (0.05, 0.0), (0.05, 0.3)])
def test_penalty_gradients_match_numpy(l1, l2):
    """SGD step = w - lr * (MSE gradient + l1 sign(w) + l2 w); the bias is not penalised."""
    x, y, w0 = _problem()
    b0 = np.array([0.2], np.float32)
    lr = 0.1
    w, b = _one_step({"name": "sgd", "learning_rate": lr}, x, y, w0, b0, l1=l1, l2=l2)
    xd, yd, wd = x.astype(np.float64), y.astype(np.float64), w0.astype(np.float64)
    resid = xd @ wd[:, 0] + b0[0] - yd
    grad_w = 2 * xd.T @ resid / len(x) + l1 * np.sign(wd[:, 0]) + l2 * wd[:, 0]
    grad_b = 2 * resid.mean()
    np.testing.assert_allclose(w[:, 0], wd[:, 0] - lr * grad_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b[0], b0[0] - lr * grad_b, rtol=1e-5, atol=1e-6)


def test_adamw_decay_is_decoupled_from_the_gradient():
    """First adamw step: -lr * (m/(sqrt(v)+eps) + wd * w), with m = g, v = g^2 (bias-corrected)."""
    x, y, w0 = _problem(seed=1)
    b0 = np.array([-0.3], np.float32)
    lr, wd, eps = 0.01, 0.5, 1e-8
    w, b = _one_step({"name": "adamw", "learning_rate": lr, "weight_decay": wd, "eps": eps}, x, y, w0, b0)
    xd, yd = x.astype(np.float64), y.astype(np.float64)
    resid = xd @ w0[:, 0].astype(np.float64) + b0[0] - yd
    for got, start, g in ((w[:, 0], w0[:, 0], 2 * xd.T @ resid / len(x)), (b, b0, np.array([2 * resid.mean()]))):
        adam = g / (np.abs(g) + eps)
        np.testing.assert_allclose(got, start - lr * (adam + wd * start), rtol=1e-5, atol=1e-6)
    # And plain adam differs exactly by the decay term.
    w_adam, _ = _one_step({"name": "adam", "learning_rate": lr, "eps": eps}, x, y, w0, b0)
    np.testing.assert_allclose(w - w_adam, -lr * wd * w0, rtol=1e-4, atol=1e-7)


def test_dropout_is_active_in_training_only(ctx):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(64, 10)).astype(np.float32)
    y = rng.integers(0, 3, 64).astype(np.int32)
    ds = make_dataset(x, y, "classification", 3)
    cfg = load_config({"model": {"hidden_sizes": [32], "dropout": 0.5}, "parallel": {"data_axis_size": 1}})
    model = MLP(10, (32,), 3, rngs=nnx.Rngs(params=0, dropout=1), dropout=0.5)
    twin = MLP(10, (32,), 3, rngs=nnx.Rngs(params=0, dropout=1), dropout=0.0)  # same weights
    train_def, _, params, rest = split_model(model)
    run = setup(cfg, model, ds, ctx, plan=make_plan(cfg, ds))
    # Evaluation: deterministic, and equal to the same weights without dropout.
    first = run.evaluator.outputs(run.state.params, run.state.rest, ds.test.x)
    np.testing.assert_array_equal(first, run.evaluator.outputs(run.state.params, run.state.rest, ds.test.x))
    np.testing.assert_allclose(first, np.asarray(twin(jnp.asarray(ds.test.x))), rtol=1e-6, atol=1e-6)
    # Training: each call draws a new mask from the RNG stream in `rest`.
    train_model = nnx.merge(train_def, params, rest, copy=True)
    a, b = np.asarray(train_model(jnp.asarray(x))), np.asarray(train_model(jnp.asarray(x)))
    assert not np.allclose(a, b) and not np.allclose(a, np.asarray(twin(jnp.asarray(x))))
    # The same RNG state gives the same mask: training is reproducible.
    again = nnx.merge(train_def, params, rest, copy=True)
    np.testing.assert_array_equal(np.asarray(again(jnp.asarray(x))), a)
    # The compiled step advances the stream: two steps on the same batch see different masks.
    tx = optax.sgd(0.0)
    step = jax.jit(make_train_step(train_def, tx, "classification"))
    state = init_state(params, rest, tx)
    batch = (jnp.asarray(x), jnp.asarray(y), jnp.ones(64))
    s1, m1 = step(state, batch)
    _, m2 = step(s1, batch)
    assert float(m1["loss_sum"]) != float(m2["loss_sum"])
