"""Direct tests of jaxtrain/engine against independent answers: the compiled step's non-finite
guard and step counter, the memory estimate and XLA's measured memory, the run plan of a
vectorized sweep, and the message naming what changed in a recompiled call's arguments."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import make_dataset
from flax import nnx

from jaxtrain import load_config
from jaxtrain.engine import memory
from jaxtrain.engine.compilation import signature_mismatch
from jaxtrain.engine.plan import make_plan
from jaxtrain.engine.step import batch_metrics, init_state, make_train_step, split_model
from jaxtrain.model.models import LinearRegression

FEATURES = 3


def _step_and_state(skip_nonfinite: bool):
    """A jitted Adam step of a linear model and its initial state (Adam: a non-trivial opt_state)."""
    model = LinearRegression(FEATURES, 1, rngs=nnx.Rngs(0))
    train_def, _, params, rest = split_model(model)
    tx = optax.adam(0.1)
    step = jax.jit(make_train_step(train_def, tx, "regression", skip_nonfinite=skip_nonfinite))
    return step, init_state(params, rest, tx)


def _batch(seed: int, poison: float | None = None):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(4, FEATURES)).astype(np.float32)
    y = rng.normal(size=4).astype(np.float32)
    if poison is not None:
        y[1] = poison
    return jnp.asarray(x), jnp.asarray(y), jnp.ones(4, jnp.float32)


def _leaves(state):
    return [np.asarray(leaf) for leaf in jax.tree.leaves(state)]


@pytest.mark.parametrize("poison", [np.nan, np.inf])
def test_a_skipped_step_keeps_the_state_bit_for_bit_and_counts_the_step(poison):
    step, state = _step_and_state(skip_nonfinite=True)
    state, _ = step(state, _batch(0))  # a real step first: the opt_state is no longer its initial value
    before = _leaves(state.replace(step=jnp.zeros((), jnp.int32)))
    after_state, metrics = step(state, _batch(1, poison))
    assert float(metrics["nonfinite"]) == 1.0
    assert float(metrics["first_nonfinite_step"]) == 2.0 and float(metrics["first_nonfinite_what"]) == 1.0
    assert int(after_state.step) == 2
    for a, b in zip(before, _leaves(after_state.replace(step=jnp.zeros((), jnp.int32)))):
        np.testing.assert_array_equal(a, b)


class SqrtOffset(nnx.Module):
    """A finite loss whose gradient is not: d/db sqrt(b) at b=0 is inf, and 0 * inf is NaN."""

    def __init__(self):
        self.linear = LinearRegression(FEATURES, 1, rngs=nnx.Rngs(0))
        self.offset = nnx.Param(jnp.zeros((1,)))

    def __call__(self, x):
        return self.linear(x) + 0.0 * jnp.sqrt(self.offset[...])


def test_a_nonfinite_gradient_is_reported_as_2_plus_its_leaf_index_with_a_finite_loss():
    train_def, _, params, rest = split_model(SqrtOffset())
    tx = optax.sgd(0.1)
    step = jax.jit(make_train_step(train_def, tx, "regression"))
    paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    offset = next(i for i, path in enumerate(paths) if "offset" in path)
    assert offset >= 1  # a leaf after the first: 2 + index and 2 - index differ
    _, metrics = step(init_state(params, rest, tx), _batch(0))
    assert float(metrics["nonfinite"]) == 1.0 and float(metrics["first_nonfinite_step"]) == 1.0
    assert float(metrics["first_nonfinite_what"]) == 2 + offset


@pytest.mark.parametrize("skip_nonfinite", [False, True])
def test_the_step_counter_after_n_steps_is_n(skip_nonfinite):
    step, state = _step_and_state(skip_nonfinite)
    for i in range(3):
        state, metrics = step(state, _batch(i))
        assert int(state.step) == i + 1 and float(metrics["nonfinite"]) == 0.0


def test_the_guard_does_not_change_a_finite_step():
    guarded, state = _step_and_state(skip_nonfinite=True)
    plain, _ = _step_and_state(skip_nonfinite=False)
    a, b = state, state
    for i in range(2):
        a, _ = guarded(a, _batch(i))
        b, _ = plain(b, _batch(i))
    for x, y in zip(_leaves(a), _leaves(b)):  # XLA fuses the two programs differently: last-bit noise
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- memory


def _regression_data(n=100):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, FEATURES)).astype(np.float32)
    return make_dataset(x, x.sum(1), test_fraction=0.2)


@pytest.mark.parametrize("on_device", [True, False])
def test_check_run_counts_k_plus_one_batches_when_streaming_and_the_training_set_when_uploaded(on_device):
    ds = _regression_data()
    cfg = load_config({"model": {"name": "linear"}, "data": {"batch_size": 8},
                       "optimizer": {"name": "sgd", "learning_rate": 0.1},
                       "train": {"steps_per_call": 5, "on_device_fraction": 1.0 if on_device else 0.0},
                       "parallel": {"data_axis_size": 1}, "checkpoint": {"enabled": False}})
    plan = make_plan(cfg, ds)
    assert plan.on_device == on_device and plan.per_device_batch == 8 and plan.steps_per_call == 5
    model = LinearRegression(FEATURES, 1, rngs=nnx.Rngs(0))
    parts = memory.check_run(cfg, model, ds, plan, available=(1 << 40, "test memory"))
    row = FEATURES + 1 + 1  # x, y, mask
    assert parts["input_batches"] == (1 if on_device else 5 + 1) * 8 * row * 4
    assert parts["training_set"] == ((ds.train.x.nbytes + ds.train.y.nbytes) if on_device else 0)
    assert parts["parameters"] == 4 * (FEATURES + 1) * 4


def _compiled():
    state = {"w": jnp.ones((16, 8)), "b": jnp.zeros(8)}
    x = jnp.ones((4, 16))
    return jax.jit(lambda s, x: x @ s["w"] + s["b"]).lower(state, x).compile(), state


def test_compiled_memory_is_xla_memory_analysis_with_the_peak_added_up():
    executable, _ = _compiled()
    analysis = executable.memory_analysis()
    parts = memory.compiled_memory(executable)
    assert parts == {"arguments": analysis.argument_size_in_bytes, "outputs": analysis.output_size_in_bytes,
                     "aliased": analysis.alias_size_in_bytes, "temporaries": analysis.temp_size_in_bytes,
                     "code": analysis.generated_code_size_in_bytes,
                     "peak": analysis.argument_size_in_bytes + analysis.output_size_in_bytes
                     - analysis.alias_size_in_bytes + analysis.temp_size_in_bytes}
    assert parts["arguments"] == (16 * 8 + 8 + 4 * 16) * 4 and parts["outputs"] == 4 * 8 * 4
    assert memory.compiled_memory(None) is None


def test_report_holds_the_state_bytes_the_compiled_call_and_the_estimate_total():
    executable, state = _compiled()
    estimate = {"parameters": 100, "activations": 20, "training_set": 0}
    got = memory.report(state, executable, estimate)
    assert got == {"state_bytes_per_device": (16 * 8 + 8) * 4,
                   "compiled_step": memory.compiled_memory(executable),
                   "estimate": {"parameters": 100, "activations": 20, "training_set": 0, "total": 120}}
    assert got["compiled_step"] is not None


# ---------------------------------------------------------------- plan


def test_a_vectorized_sweep_plan_keeps_its_points_its_data_on_device_and_one_call_per_epoch():
    ds = _regression_data()
    cfg = load_config({"model": {"name": "linear"}, "data": {"batch_size": 8},
                       "train": {"steps_per_call": "auto", "on_device_fraction": 0.0},
                       "parallel": {"data_axis_size": 1}, "checkpoint": {"enabled": False}})
    plan = make_plan(cfg, ds, points=3)
    steps = -(-ds.num_train // 8)
    assert (plan.points, plan.on_device, plan.steps_per_call, plan.steps_per_epoch) == (3, True, steps, steps)
    assert make_plan(cfg, ds).points is None


# ---------------------------------------------------------------- a recompiled call's cause


def _signature():
    args = ({"a": jnp.zeros(2), "b": jnp.zeros(2), "c": jnp.zeros(2), "d": jnp.zeros(2)}, jnp.zeros(3))
    return jax.jit(lambda s, x: (s, x)).lower(*args).compile(), args


def test_signature_mismatch_names_the_first_three_differences_and_counts_the_rest():
    compiled, (state, x) = _signature()
    changed = {k: jnp.zeros(5) for k in state}
    assert signature_mismatch(compiled, (changed, jnp.zeros(3, jnp.int32))) == (
        "state['a']: compiled as float32[2], called with float32[5]; state['b']: compiled as float32[2], called with "
        "float32[5]; state['c']: compiled as float32[2], called with float32[5] (and 2 more)")
    assert signature_mismatch(compiled, (state, jnp.zeros(3, jnp.int32))) == (
        "argument 1: compiled as float32[3], called with int32[3]")
    assert signature_mismatch(compiled, (state,)) == "the arguments' structure changed: 4 arrays, compiled with 5"
    assert signature_mismatch(compiled, (state, x)) == "an argument differs from the compiled signature"


# ---------------------------------------------------------------- the persistent compilation cache


@pytest.fixture
def jax_cache_settings(monkeypatch):
    """enable_persistent_cache changes JAX's global settings: put them back afterwards."""
    from jaxtrain.engine import compilation
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    saved = {name: getattr(jax.config, name) for name in names}
    monkeypatch.setattr(compilation, "_cache_dir", None)
    yield compilation
    for name, value in saved.items():
        jax.config.update(name, value)


@pytest.mark.parametrize("setting", [None, "off", "none", ""])
def test_an_off_cache_setting_leaves_jax_alone_and_creates_nothing(jax_cache_settings, tmp_path, monkeypatch,
                                                                  setting):
    monkeypatch.chdir(tmp_path)
    before = jax.config.jax_compilation_cache_dir
    assert jax_cache_settings.enable_persistent_cache(setting) is None
    assert jax.config.jax_compilation_cache_dir == before and list(tmp_path.iterdir()) == []


def test_a_cache_folder_that_already_exists_is_used(jax_cache_settings, tmp_path):
    folder = tmp_path / "xla"
    folder.mkdir()
    assert jax_cache_settings.enable_persistent_cache(str(folder)) == str(folder)
    assert jax.config.jax_compilation_cache_dir == str(folder)
    fresh = tmp_path / "new" / "xla"
    assert jax_cache_settings.enable_persistent_cache(str(fresh)) == str(fresh) and fresh.is_dir()


# ---------------------------------------------------------------- the work is split over the devices


def _fitted_mlp(ctx, train: dict, parallel: dict):
    """An MLP fitted for one epoch on 256 rows at batch 64, with these train/parallel settings."""
    from jaxtrain.model.models import MLP
    from jaxtrain.training.loop import fit
    from jaxtrain.training.setup import setup

    x = np.random.default_rng(0).normal(size=(320, 16)).astype(np.float32)
    ds = make_dataset(x, x.sum(1), test_fraction=0.2)
    cfg = load_config({"model": {"name": "mlp", "hidden_sizes": [64]}, "data": {"batch_size": 64},
                       "train": {"epochs": 1, **train}, "parallel": parallel, "checkpoint": {"enabled": False}})
    run = setup(cfg, MLP(16, (64,), 1, rngs=nnx.Rngs(0)), ds, ctx, plan=make_plan(cfg, ds))
    fit(run)
    return run


def test_a_sharded_step_on_8_devices_splits_the_batch_instead_of_repeating_it(ctx):
    """XLA's FLOPs of one step on all devices: with the batch split over 8 devices the total stays
    near one device's (only the small parameter update is repeated on each); with every device
    computing the whole batch it would be 8 times one device's."""
    flops = {}
    for devices in (1, 8):
        run = _fitted_mlp(ctx, {"steps_per_call": 1, "on_device_fraction": 1.0},
                          {"strategy": "sharded", "data_axis_size": devices})
        assert run.engine.on_device
        flops[devices] = run.engine.flops_per_step()
    assert flops[1] > 0 and flops[8] < 3 * flops[1], flops


def test_one_step_flops_of_a_streamed_run_do_not_depend_on_the_steps_per_call(ctx):
    """flops_per_step compiles one step from the abstract shapes of the last K-step call, its
    stacked batches cut to one: the same program, so exactly the same count, for K = 1 and 4."""
    flops = {}
    for k in (1, 4):
        run = _fitted_mlp(ctx, {"steps_per_call": k, "on_device_fraction": 0.0}, {"data_axis_size": 1})
        assert not run.engine.on_device and run.engine.k == k
        flops[k] = run.engine.flops_per_step()
    assert flops[1] > 0 and flops[4] == flops[1], flops


# ---------------------------------------------------------------- an ensemble's accuracy


def test_an_ensembles_class_is_the_argmax_of_its_members_mean_probability():
    rng = np.random.default_rng(5)
    logits = rng.normal(scale=3.0, size=(32, 3, 4)).astype(np.float32)  # (batch, members, classes)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    expected = probs.mean(1).argmax(-1)
    y = np.where(np.arange(32) % 4 == 0, (expected + 1) % 4, expected)  # every 4th row wrong
    mask = np.ones(32, np.float32)
    mask[-2:] = 0
    got = batch_metrics("classification", jnp.asarray(logits), jnp.asarray(y), jnp.zeros(32), jnp.asarray(mask))
    assert len(set(expected.tolist())) > 1  # not every row the same class
    assert float(got["correct"]) == float(((expected == y) * mask).sum()) and float(got["count"]) == 30


def test_pmap_steps_augment_each_device_shard(ctx):
    """strategy pmap with train.augment: the step runs per device under shard_map, each device
    folding its index into the augmentation key; the run trains, and differently from no augmentation."""
    from jaxtrain.model.models import MLP
    from jaxtrain.training.loop import fit
    from jaxtrain.training.setup import setup

    rng = np.random.default_rng(4)
    x = rng.normal(size=(96, 16)).astype(np.float32)
    ds = make_dataset(x, rng.integers(0, 2, 96), "classification", 2)

    def trained(augment):
        cfg = load_config({"model": {"hidden_sizes": [8]}, "data": {"batch_size": 24},
                           "optimizer": {"name": "sgd", "learning_rate": 0.1},
                           "train": {"epochs": 1, "augment": augment, "steps_per_call": 1},
                           "parallel": {"strategy": "pmap"}, "checkpoint": {"enabled": False}})
        run = setup(cfg, MLP(16, (8,), 2, rngs=nnx.Rngs(0)), ds, ctx, plan=make_plan(cfg, ds))
        fit(run)
        assert int(run.state.step) == run.engine.steps == 3
        return _leaves(run.state.params)

    plain, augmented = trained({}), trained({"noise": 0.3, "image_shape": [4, 4]})
    assert all(np.isfinite(leaf).all() for leaf in augmented)
    assert any(not np.allclose(a, b) for a, b in zip(plain, augmented))
