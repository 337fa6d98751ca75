"""Mixed precision: bf16 matmuls forward and backward, fp32 everything else."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import make_dataset
from flax import nnx

from jaxtrain import load_config
from jaxtrain.training.loop import fit
from jaxtrain.training.setup import setup
from jaxtrain.engine.plan import make_plan
from jaxtrain.model.kernels import Kernels, mixed_dot
from jaxtrain.model.models import MLP
from jaxtrain.engine.step import init_state, make_train_step, split_model


_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\w+)\[[^\]]*\][^ ]*\s+(\w[\w\-]*)\((.*)$")


def dot_dtypes(hlo_text: str) -> list[tuple[str, str, str]]:
    """(lhs, rhs, result) element types of every dot in compiled HLO text.

    Used to check mixed precision: the fast path is bf16 x bf16 -> f32; a dot with
    a bf16 result (or f32 inputs) where bf16 was asked for is a slow or wasted one.
    """
    types: dict[str, str] = {}
    dots = []
    for line in hlo_text.splitlines():
        m = _INSTR.match(line)
        if not m:
            continue
        name, dtype, op, rest = m.groups()
        types[name] = dtype
        if op == "dot":
            operands = re.findall(r"%([\w.\-]+)", rest.split(")")[0])
            dots.append((operands, dtype))
    return [(types.get(ops[0], "?"), types.get(ops[1], "?"), out) for ops, out in dots if len(ops) >= 2]


def _compiled_step_dots(dtype):
    # The CPU kernels: there, the kernel gradient's transposed copy keeps its dot in bf16.
    model = MLP(32, (16, 8), 4, rngs=nnx.Rngs(0), compute_dtype=dtype, kernels=Kernels.for_platform("cpu"))
    train_def, _, params, rest = split_model(model)
    tx = optax.sgd(0.1)
    step = make_train_step(train_def, tx, "classification")
    batch = (jnp.zeros((8, 32)), jnp.zeros((8,), jnp.int32), jnp.ones((8,)))
    return dot_dtypes(jax.jit(step).lower(init_state(params, rest, tx), batch).compile().as_text())


def test_bf16_step_compiles_every_dot_to_bf16_inputs_with_fp32_results():
    dots = _compiled_step_dots(jnp.bfloat16)
    # 3 layers: 3 forward dots, 3 kernel-gradient dots, 2 input-gradient dots (none for the data)
    assert len(dots) == 8
    assert all(d == ("bf16", "bf16", "f32") for d in dots), dots
    assert all(d == ("f32", "f32", "f32") for d in _compiled_step_dots(jnp.float32))


def test_mixed_dot_gradients_match_numpy_on_bf16_rounded_inputs():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 12)).astype(np.float32)
    k = rng.normal(size=(12, 5)).astype(np.float32)
    g = rng.normal(size=(16, 5)).astype(np.float32)
    for copy_transpose in (False, True):
        _check_mixed_dot(x, k, g, copy_transpose)


def _check_mixed_dot(x, k, g, copy_transpose):
    y, vjp = jax.vjp(lambda a, b: mixed_dot(a, b, jnp.bfloat16, copy_transpose), x, k)
    dx, dk = vjp(jnp.asarray(g))
    r = lambda a: np.asarray(jnp.asarray(a).astype(jnp.bfloat16).astype(jnp.float32), np.float64)  # noqa: E731
    assert y.dtype == dx.dtype == dk.dtype == jnp.float32
    np.testing.assert_allclose(y, r(x) @ r(k), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, r(g) @ r(k).T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dk, r(x).T @ r(g), rtol=1e-5, atol=1e-5)


def test_bf16_training_keeps_fp32_state_and_matches_fp32_accuracy(ctx):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 10)) * 2.0
    y = rng.integers(0, 3, 600)
    x = (centers[y] + rng.normal(size=(600, 10))).astype(np.float32)
    ds = make_dataset(x, y, "classification", 3)
    results = {}
    for precision in ("float32", "bfloat16"):
        cfg = load_config({"model": {"hidden_sizes": [32]}, "data": {"batch_size": 50},
                           "optimizer": {"name": "adam", "learning_rate": 0.01},
                           "train": {"epochs": 5, "precision": precision, "steps_per_call": "epoch"},
                           "parallel": {"data_axis_size": 1}})
        dtype = jnp.bfloat16 if precision == "bfloat16" else jnp.float32
        run = setup(cfg, MLP(10, (32,), 3, rngs=nnx.Rngs(0), compute_dtype=dtype), ds, ctx, plan=make_plan(cfg, ds))
        summary = fit(run)
        leaves = jax.tree.leaves((run.state.params, run.state.opt_state))
        assert all(a.dtype in (jnp.float32, jnp.int32) for a in leaves)
        results[precision] = summary["test"]["accuracy"]
    assert results["float32"] > 0.9
    assert results["bfloat16"] == pytest.approx(results["float32"], abs=0.02)
