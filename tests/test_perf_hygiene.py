"""Hot-loop hygiene: no implicit transfers, no silent recompilation."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_dataset
from flax import nnx

from jaxtrain import load_config
from jaxtrain.engine.engine import RecompileWarning
from jaxtrain.training.setup import setup
from jaxtrain.engine.plan import make_plan
from jaxtrain.model.models import MLP


def _run(ctx, fraction, k=3, data_axis_size=1):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(130, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    ds = make_dataset(x, y, "classification", 2)
    cfg = load_config({"model": {"hidden_sizes": [8]}, "data": {"batch_size": 16},
                       "train": {"epochs": 2, "on_device_fraction": fraction, "steps_per_call": k},
                       "parallel": {"data_axis_size": data_axis_size}})
    return setup(cfg, MLP(5, (8,), 2, rngs=nnx.Rngs(0)), ds, ctx, plan=make_plan(cfg, ds))


def _epoch(run, epoch):
    sums = None
    for run.state, chunk, _ in run.engine.run_epoch(run.state, epoch):
        sums = chunk if sums is None else jax.tree.map(jnp.add, sums, chunk)
    return jax.device_get(sums)  # the epoch's one explicit read-back


@pytest.mark.parametrize("fraction", [1.0, 0.0], ids=["on_device", "streaming"])
@pytest.mark.parametrize("devices", [1, 8])
def test_an_epoch_makes_no_implicit_transfers(ctx, fraction, devices):
    run = _run(ctx, fraction, data_axis_size=devices)
    _epoch(run, 0)  # compiles every chunk length
    with jax.transfer_guard("disallow"):
        sums = _epoch(run, 1)
    assert sums["count"] == len(run.dataset.train)


def test_a_changed_argument_recompiles_with_a_warning_naming_it(ctx):
    run = _run(ctx, 1.0)
    _epoch(run, 0)
    compiles = run.engine.compiles
    # the caller hands over state whose parameters changed dtype: the compiled call cannot take it
    run.state = run.state.replace(params=jax.tree.map(lambda a: a.astype(jnp.bfloat16), run.state.params))
    with pytest.warns(RecompileWarning, match=r"recompiling.*state\.params.*compiled as float32\[8,2\], called with bfloat16\[8,2\]"):
        _epoch(run, 1)
    assert run.engine.recompiles >= 1 and run.engine.compiles > compiles


def test_steady_epochs_do_not_recompile(ctx):
    run = _run(ctx, 1.0)
    _epoch(run, 0)
    n = len(run.engine._compiled)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecompileWarning)
        for epoch in (1, 2):
            _epoch(run, epoch)
    assert run.engine.recompiles == 0 and len(run.engine._compiled) == n
