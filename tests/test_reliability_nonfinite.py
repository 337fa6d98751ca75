"""train.on_nonfinite: a poisoned batch and a diverging learning rate, stop and skip_step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_dataset
from flax import nnx

from jaxtrain import load_config
from jaxtrain.data import epoch_permutation
from jaxtrain.util.errors import NonFiniteError
from jaxtrain.training.hooks.guard import NonFiniteGuard
from jaxtrain.training.loop import fit
from jaxtrain.training.setup import setup
from jaxtrain.engine.plan import make_plan
from jaxtrain.model.models import MLP, LinearRegression

BATCH = 16


def _setup(cfg, model, ds, ctx):
    """A run of `cfg` on `ds` with its plan."""
    return setup(cfg, model, ds, ctx, plan=make_plan(cfg, ds))


def _data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.1).astype(np.float32)
    return x, y


def _cfg(policy="stop", on_device=True, lr=0.05, opt="sgd", epochs=3, k=4, strategy=None):
    # One device, or (strategy given) all 8 simulated ones: pmap-style steps psum the flags.
    par = {"data_axis_size": 1} if strategy is None else {"strategy": strategy}
    return load_config({"model": {"name": "linear"}, "optimizer": {"name": opt, "learning_rate": lr},
                        "data": {"batch_size": BATCH}, "parallel": par,
                        "train": {"epochs": epochs, "on_nonfinite": policy, "steps_per_call": k,
                                  "on_device_fraction": 0.25 if on_device else 0.0}})


def _poisoned(row: int):
    x, y = _data()
    x[row, 2] = np.nan
    ds = make_dataset(x, y, test_fraction=0.2)  # the first 40 rows are the test split
    return ds, row - 40


@pytest.mark.parametrize("on_device,strategy", [(True, None), (False, None), (True, "pmap")])
def test_poisoned_batch_stops_naming_the_step_and_the_loss(ctx, on_device, strategy):
    ds, train_row = _poisoned(57)
    cfg = _cfg(on_device=on_device, strategy=strategy)
    run = setup(cfg, LinearRegression(4, 1, rngs=nnx.Rngs(0)), ds, ctx, plan=make_plan(cfg, ds))
    assert run.engine.on_device == on_device
    with pytest.raises(NonFiniteError) as err:
        fit(run, hooks=[NonFiniteGuard("stop")])
    # Independent answer: where the poisoned row falls in epoch 0's permutation.
    position = int(np.nonzero(epoch_permutation(len(ds.train), cfg.train.seed, 0) == train_row)[0][0])
    step = position // BATCH + 1
    assert f"the loss became non-finite (NaN or inf) at step {step} (epoch 1)" in str(err.value)
    assert run.lanes[0].history == []  # stopped before the epoch's record: nothing reported as trained


def test_nonfinite_gradient_names_the_parameter(ctx):
    class SqrtBias(nnx.Module):
        """Finite loss, but d/db sqrt(b) at b=0 is inf: only `offset`'s gradient goes bad."""

        def __init__(self):
            self.linear = LinearRegression(4, 1, rngs=nnx.Rngs(0))
            self.offset = nnx.Param(jnp.zeros((1,)))

        def __call__(self, x):
            return self.linear(x) + 0.0 * jnp.sqrt(self.offset[...])

    x, y = _data()
    run = _setup(_cfg(), SqrtBias(), make_dataset(x, y), ctx)
    with pytest.raises(NonFiniteError, match=r"the gradient of offset became non-finite .* at step 1 "):
        fit(run, hooks=[NonFiniteGuard("stop")])


def test_diverging_learning_rate_stops(ctx):
    x, y = _data()
    x = x * 100.0  # large inputs: plain SGD at this rate blows up within a few steps
    run = _setup(_cfg(lr=10.0), LinearRegression(4, 1, rngs=nnx.Rngs(0)), make_dataset(x, y), ctx)
    with pytest.raises(NonFiniteError, match=r"became non-finite \(NaN or inf\) at step \d+ \(epoch 1\)"):
        fit(run, hooks=[NonFiniteGuard("stop")])


@pytest.mark.parametrize("on_device", [True, False])
def test_skip_step_skips_exactly_the_poisoned_steps(ctx, on_device):
    ds, _ = _poisoned(57)
    epochs = 3
    run = _setup(_cfg("skip_step", on_device=on_device, epochs=epochs), LinearRegression(4, 1, rngs=nnx.Rngs(0)),
                ds, ctx)
    guard = NonFiniteGuard("skip_step")
    fit(run, hooks=[guard])
    # One poisoned row: exactly one bad step per epoch, each skipped.
    assert guard.skipped == epochs
    assert [r.nonfinite_steps for r in run.lanes[0].history] == [1] * epochs
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(run.state.params))
    assert int(run.state.step) == epochs * run.engine.steps  # skipped steps still count as steps


def test_skip_step_leaves_the_state_untouched_on_a_bad_step(ctx):
    """Oracle: a run whose every batch is poisoned ends with exactly its initial parameters."""
    x, y = _data()
    x[:, 0] = np.inf
    ds = make_dataset(x, y)
    model = MLP(4, (8,), 1, rngs=nnx.Rngs(3))
    initial = jax.tree.map(np.array, nnx.state(model, nnx.Param))
    run = _setup(_cfg("skip_step", opt="adam", epochs=2), model, ds, ctx)
    guard = NonFiniteGuard("skip_step")
    fit(run, hooks=[guard])
    assert guard.skipped == 2 * run.engine.steps
    for a, b in zip(jax.tree.leaves(initial), jax.tree.leaves(run.state.params)):
        np.testing.assert_array_equal(a, np.asarray(b))


def test_clean_run_is_not_disturbed_by_the_guard(ctx):
    x, y = _data()
    ds = make_dataset(x, y)
    a = _setup(_cfg(), LinearRegression(4, 1, rngs=nnx.Rngs(0)), ds, ctx)
    fit(a, hooks=[NonFiniteGuard("stop")])
    b = _setup(_cfg(), LinearRegression(4, 1, rngs=nnx.Rngs(0)), ds, ctx)
    fit(b)
    for p, q in zip(jax.tree.leaves(a.state.params), jax.tree.leaves(b.state.params)):
        np.testing.assert_array_equal(np.asarray(p), np.asarray(q))


class NotYetComputed:
    """A device value still being computed: reading it would make the host wait."""

    def is_ready(self):
        return False

    def __array__(self, *args, **kwargs):
        raise AssertionError("the guard waited for a call that is still running")


def test_guard_does_not_wait_for_a_call_mid_epoch(ctx):
    """The host only reads the flags of finished calls, except at an epoch's end or a save."""
    x, y = _data()
    run = _setup(_cfg(k=2), LinearRegression(4, 1, rngs=nnx.Rngs(0)), make_dataset(x, y), ctx)
    guard = NonFiniteGuard("stop")
    guard.on_train_start(run.view(run.lanes[0]))

    def after_call(step, sums):
        run.step_in_epoch = run.global_step = step
        guard.after_call(run.view(run.lanes[0], run_call_sums=sums))

    pending = {k: NotYetComputed() for k in ("nonfinite", "first_nonfinite_step", "first_nonfinite_what")}
    after_call(2, pending)  # mid-epoch, no checkpoint due: must not read
    assert len(guard._pending) == 1
    done = {"nonfinite": np.float32(0), "first_nonfinite_step": np.float32(0), "first_nonfinite_what": np.float32(0)}
    guard._pending[0] = done
    after_call(run.engine.steps, done)  # the epoch's last call: read everything
    assert guard._pending == []
    # Before a checkpoint is written, every pending call is read, mid-epoch too.
    after_call(2, pending)
    with pytest.raises(AssertionError, match="waited for a call"):
        guard.before_save(run.view(run.lanes[0]))


def test_skipped_step_count_carries_across_a_resume(tmp_path):
    """A poisoned row is skipped once per epoch: 4 epochs count 4, however the run was cut."""
    from jaxtrain import train
    ds, _ = _poisoned(57)
    cfg = {"model": {"name": "linear"}, "optimizer": {"name": "sgd", "learning_rate": 0.05},
           "data": {"batch_size": BATCH}, "parallel": {"data_axis_size": 1},
           "train": {"epochs": 4, "on_nonfinite": "skip_step", "steps_per_call": 4},
           "logging": {"progress": "none"}}
    whole = train(cfg, dataset=ds, workdir=tmp_path / "whole")
    assert whole["nonfinite_skipped_steps"] == 4
    train(cfg, dataset=ds, workdir=tmp_path / "cut", train__epochs=2)
    resumed = train(dataset=ds, resume=tmp_path / "cut", train__epochs=4)
    assert resumed["nonfinite_skipped_steps"] == 4
    assert resumed["test"] == whole["test"]
