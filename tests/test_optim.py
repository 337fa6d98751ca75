"""One optimizer step against a NumPy re-implementation of the update."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrain.config.schema import OptimizerConfig
from jaxtrain.model.optim import build_optimizer, frozen_mask, learning_rate_schedule, regularization_penalty

RNG = np.random.default_rng(0)
PARAMS = {"w": RNG.normal(size=(4, 3)).astype(np.float32), "b": RNG.normal(size=(3,)).astype(np.float32)}
GRADS = [{"w": RNG.normal(size=(4, 3)).astype(np.float32), "b": RNG.normal(size=(3,)).astype(np.float32)}
         for _ in range(3)]


def _run(cfg, steps):
    tx = build_optimizer(cfg, steps_per_epoch=10, epochs=1)
    params = jax.tree.map(jnp.asarray, PARAMS)
    state = tx.init(params)
    for g in GRADS[:steps]:
        updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
    return jax.tree.map(np.asarray, params)


@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_sgd_matches_numpy(momentum, nesterov):
    lr, steps = 0.1, 3
    got = _run(OptimizerConfig(name="sgd", learning_rate=lr, momentum=momentum, nesterov=nesterov), steps)
    for key in PARAMS:
        p = PARAMS[key].astype(np.float64)
        v = np.zeros_like(p)
        for g in GRADS[:steps]:
            g = g[key].astype(np.float64)
            if momentum:
                v = momentum * v + g
                p = p - lr * (g + momentum * v if nesterov else v)
            else:
                p = p - lr * g
        np.testing.assert_allclose(got[key], p, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name,wd", [("adam", 0.0), ("adamw", 0.01)])
def test_adam_matches_numpy(name, wd):
    lr, b1, b2, eps, steps = 0.01, 0.9, 0.999, 1e-8, 3
    got = _run(OptimizerConfig(name=name, learning_rate=lr, weight_decay=wd), steps)
    for key in PARAMS:
        p = PARAMS[key].astype(np.float64)
        m = np.zeros_like(p)
        v = np.zeros_like(p)
        for t, g in enumerate(GRADS[:steps], start=1):
            g = g[key].astype(np.float64)
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            update = (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
            p = p - lr * (update + wd * p)
        np.testing.assert_allclose(got[key], p, rtol=1e-6, atol=1e-6)


def test_gradient_clipping_bounds_the_global_norm():
    cfg = OptimizerConfig(name="sgd", learning_rate=1.0, clip_norm=0.5)
    got = _run(cfg, 1)
    g = GRADS[0]
    norm = np.sqrt(sum(np.sum(v.astype(np.float64) ** 2) for v in g.values()))
    for key in PARAMS:
        np.testing.assert_allclose(got[key], PARAMS[key] - g[key] * 0.5 / norm, rtol=1e-5, atol=1e-6)


def test_schedules_follow_their_formulas():
    lr = 0.1
    cos = learning_rate_schedule(OptimizerConfig(learning_rate=lr, schedule="cosine"), 10, 2)
    assert float(cos(10)) == pytest.approx(lr * 0.5 * (1 + np.cos(np.pi * 10 / 20)))
    step = learning_rate_schedule(OptimizerConfig(learning_rate=lr, schedule="step", decay_epochs=1,
                                                  decay_factor=0.5), 10, 3)
    assert [float(step(s)) for s in (0, 9, 10, 25)] == pytest.approx([0.1, 0.1, 0.05, 0.025])
    warm = learning_rate_schedule(OptimizerConfig(learning_rate=lr, schedule="warmup_cosine",
                                                  warmup_epochs=1), 10, 3)
    assert float(warm(5)) == pytest.approx(lr * 5 / 10)
    assert float(warm(10)) == pytest.approx(lr)


def closed_form_lr(schedule: str, lr: float, step: int, total: int, warmup: int = 0) -> float:
    """The learning rate at `step` written out: a linear warmup from 0 over `warmup` steps, then
    half a cosine from `lr` down to 0, reached at `total` and kept after it."""
    if step < warmup:
        return lr * step / warmup
    t = min(step - warmup, total - warmup) / (total - warmup)
    return lr * 0.5 * (1 + np.cos(np.pi * t))


@pytest.mark.parametrize("schedule,steps_per_epoch,epochs,warmup_epochs",
                         [("cosine", 10, 2, 0.0), ("warmup_cosine", 10, 3, 1.0), ("warmup_cosine", 4, 5, 0.5)])
def test_cosine_schedules_match_the_closed_form_at_every_step(schedule, steps_per_epoch, epochs,
                                                              warmup_epochs):
    lr, total = 0.1, steps_per_epoch * epochs
    warmup = round(warmup_epochs * steps_per_epoch)
    fn = learning_rate_schedule(OptimizerConfig(learning_rate=lr, schedule=schedule,
                                                warmup_epochs=warmup_epochs), steps_per_epoch, epochs)
    steps = np.arange(total + 6)
    expected = [closed_form_lr(schedule, lr, int(s), total, warmup) for s in steps]
    np.testing.assert_allclose([float(fn(int(s))) for s in steps], expected, rtol=1e-5, atol=1e-7)
    assert float(fn(total)) == pytest.approx(0.0, abs=1e-9)      # it reaches 0 at the end
    assert float(fn(warmup + (total - warmup) // 2)) <= lr / 2 + 1e-6


def test_regularization_penalises_weight_matrices_only():
    got = float(regularization_penalty({"w": jnp.asarray(PARAMS["w"]), "b": jnp.asarray(PARAMS["b"])},
                                       l1=0.1, l2=0.2))
    w = PARAMS["w"].astype(np.float64)
    assert got == pytest.approx(0.1 * np.abs(w).sum() + 0.1 * (w ** 2).sum(), rel=1e-5)


def test_freeze_keeps_matching_parameters_fixed():
    mask = frozen_mask(PARAMS, ("w",))
    assert mask == {"w": True, "b": False}
    tx = build_optimizer(OptimizerConfig(name="sgd", learning_rate=0.1, freeze=("w",)), 10, 1,
                         params=PARAMS)
    state = tx.init(PARAMS)
    updates, _ = tx.update(GRADS[0], state, PARAMS)
    assert np.all(np.asarray(updates["w"]) == 0)
    np.testing.assert_allclose(updates["b"], -0.1 * GRADS[0]["b"], rtol=1e-6)
