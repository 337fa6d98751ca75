"""Gradient accumulation, the parameters' moving average (EMA) and per-device dropout under pmap.

Accumulation is checked against the whole batch (one device, no accumulation), EMA against
a NumPy re-implementation and against EMA off, and all three against an uninterrupted run
after a resume, bit for bit.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import make_dataset
from flax import nnx

from run_files import straight_and_resumed
from jaxtrain import load_config, train
from jaxtrain.ckpt.checkpoint import Checkpointer
from jaxtrain.parallel.placement import is_key
from jaxtrain.cli.main import main
from jaxtrain.engine.memory import check_fits
from jaxtrain.engine.step import fold_in_keys, init_state, make_train_step, split_model
from jaxtrain.model.models import MLP
from jaxtrain.runs.api import evaluate, load_trained
from jaxtrain.training.loop import fit
from jaxtrain.training.setup import setup
from jaxtrain.engine.plan import make_plan
from jaxtrain.training.hooks.protocol import Hook


def _fit(ds, ctx, hooks=(), model=None, batch_size=32, **train_keys):
    par = train_keys.pop("parallel", {"data_axis_size": 1})
    cfg = load_config({"model": {"hidden_sizes": [16]}, "data": {"batch_size": batch_size},
                       "optimizer": {"name": "adam", "learning_rate": 0.01, "l2": 1e-3},
                       "train": {"epochs": 2, "steps_per_call": 3, "on_device_fraction": 1.0, **train_keys},
                       "parallel": par})
    run = setup(cfg, model or MLP(6, (16,), 3, rngs=nnx.Rngs(0)), ds, ctx, plan=make_plan(cfg, ds))
    return run, fit(run, hooks=list(hooks))


def _host(tree):
    return jax.tree.map(np.asarray, tree)


def _max_diff(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# ---------------------------------------------------------------- accumulation


def test_accumulated_step_equals_the_whole_padded_batch():
    """One SGD step (lr 1: the update is the gradient) on a batch with 5 padding rows."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 6)).astype(np.float32)
    y = rng.integers(0, 3, 16).astype(np.int32)
    mask = np.r_[np.ones(11), np.zeros(5)].astype(np.float32)
    tx = optax.sgd(1.0)
    results = []
    for n in (1, 4):
        graphdef, _, params, rest = split_model(MLP(6, (16,), 3, rngs=nnx.Rngs(0)))
        step = jax.jit(make_train_step(graphdef, tx, "classification", l2=1e-2, grad_accum_steps=n))
        state, metrics = step(init_state(params, rest, tx), (x, y, mask))
        results.append((_host(state.params), _host(metrics)))
    (whole, m_whole), (accum, m_accum) = results
    assert _max_diff(whole, accum) < 1e-5
    for key in ("loss_sum", "count", "correct"):
        np.testing.assert_allclose(m_accum[key], m_whole[key], rtol=1e-6)
    assert m_accum["count"] == 11


@pytest.mark.parametrize("strategy", ["sharded", "pmap", "fsdp"])
def test_accumulation_on_eight_devices_equals_the_whole_batch(blobs, ctx, strategy):
    """4 microbatches of 1 row per device (8 devices) == whole batches on one device, 20 steps."""
    reference, _ = _fit(blobs, ctx)
    run, summary = _fit(blobs, ctx, grad_accum_steps=4, parallel={"strategy": strategy})
    assert summary["batch"] == {"global": 32, "per_device": 4, "grad_accum_steps": 4}
    assert _max_diff(_host(run.state.params), _host(reference.state.params)) < 1e-5
    assert summary["execution"]["recompiles"] == 0


@pytest.mark.parametrize("overrides,expected", [
    (["train.grad_accum_steps=0"], "train.grad_accum_steps': must be >= 1"),
    (["data.batch_size=32", "train.grad_accum_steps=3"],
     "train.grad_accum_steps': 3 microbatches do not split the 4 rows each of the 8 device(s)"),
    (["train.ema_decay=1.0"], "train.ema_decay': must be in [0, 1)"),
])
def test_bad_accumulation_and_ema_settings_exit_2_in_one_line(tmp_path, capsys, overrides, expected):
    argv = ["train", "--set", "train.epochs=1", "--set", "logging.progress=none",
            *[a for o in overrides for a in ("--set", o)], "--workdir", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0] and "Traceback" not in err[0], err


def test_memory_estimate_counts_microbatches_and_ema():
    params = {"w": np.zeros((64, 10)), "b": np.zeros(10), "head": np.zeros((10, 10))}
    n = 64 * 10 + 10 + 100
    parts = {}
    for accum, ema in ((1, None), (4, 0.99)):
        cfg = load_config(None, ["data.batch_size=100", "model.hidden_sizes=[10]",
                                 f"train.grad_accum_steps={accum}", f"train.ema_decay={ema or 'null'}"])
        parts[accum] = check_fits(cfg, params, (64,), 10, num_devices=1, per_device_batch=100, steps_per_call=1,
                                  streaming=False, available=(10**9, "test memory"))
    assert parts[1]["activations"] == 100 * 3 * (64 + 10 + 10) * 4 and parts[1]["ema"] == 0
    assert parts[4]["activations"] == 25 * 3 * (64 + 10 + 10) * 4   # one microbatch of 25 rows alive
    assert parts[4]["parameters"] == 5 * n * 4                      # + the gradients' running sum
    assert parts[4]["ema"] == n * 4
    assert parts[4]["input_batches"] == parts[1]["input_batches"]   # the whole batch still arrives


# ---------------------------------------------------------------- EMA


class _Params(Hook):
    """Host copies of the parameters after every compiled call."""

    def __init__(self):
        self.seen = []

    def on_train_start(self, info):
        self.seen.append(_host(info.state.params))

    def after_call(self, info):
        self.seen.append(_host(info.state.params))


def test_ema_matches_numpy_and_evaluation_uses_it(blobs, ctx):
    record = _Params()
    run, summary = _fit(blobs, ctx, hooks=[record], epochs=1, steps_per_call=1, ema_decay=0.8)
    assert len(record.seen) == 11  # the initial parameters and 10 steps
    expected = jax.tree.map(np.float64, record.seen[0])
    for params in record.seen[1:]:
        expected = jax.tree.map(lambda e, p: 0.8 * e + 0.2 * p, expected, params)
    ema = _host(run.state.ema)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), ema, expected)
    assert _max_diff(ema, record.seen[-1]) > 1e-3  # the average lags the trained parameters
    test = run.dataset.test
    assert summary["test"] == run.evaluator.evaluate(run.state.ema, run.state.rest, test)
    assert summary["test"] != run.evaluator.evaluate(run.state.params, run.state.rest, test)
    assert summary["evaluation"] == {"params": "ema", "ema_decay": 0.8}


def test_ema_decay_zero_equals_ema_off(blobs, ctx):
    off, s_off = _fit(blobs, ctx)
    zero, s_zero = _fit(blobs, ctx, ema_decay=0.0)
    for a, b in ((off.state.params, zero.state.params), (zero.state.params, zero.state.ema),
                 (off.state.opt_state, zero.state.opt_state)):
        jax.tree.map(np.testing.assert_array_equal, _host(a), _host(b))
    assert s_off["test"] == s_zero["test"] and s_off["train"]["loss"] == s_zero["train"]["loss"]
    assert s_off["evaluation"] == {"params": "trained", "ema_decay": None}


def test_eval_and_predict_read_the_ema_from_the_checkpoint(tmp_path):
    cfg = {"data": {"source": "synthetic", "name": "blobs", "synthetic_rows": 200, "batch_size": 16},
           "model": {"hidden_sizes": [8]}, "train": {"epochs": 2, "ema_decay": 0.9},
           "parallel": {"data_axis_size": 1}, "logging": {"progress": "none"}}
    summary = train(cfg, workdir=tmp_path / "run")
    ckpt = Checkpointer(tmp_path / "run" / "checkpoints", async_save=False)
    saved, _ = ckpt.restore_raw()
    ckpt.close()
    loaded = load_trained(tmp_path / "run", with_data=False)  # what predict uses
    jax.tree.map(np.testing.assert_array_equal, jax.tree.leaves(_host(loaded.params)),
                 jax.tree.leaves(saved["ema"]))
    assert _max_diff(saved["ema"], saved["params"]) > 1e-4
    assert evaluate(tmp_path / "run") == summary["test"]


# ---------------------------------------------------------------- dropout under pmap


def test_folded_keys_give_each_device_its_own_mask():
    """What the pmap step does with the dropout keys, device by device: 8 different masks,
    the same 8 again on a rerun."""
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    graphdef, rest = nnx.split(nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=1)))

    def masks():
        def per_device(rest):
            dropout = nnx.merge(graphdef, fold_in_keys(rest, jax.lax.axis_index("data")), copy=True)
            return dropout(jnp.ones((1, 64))) > 0
        return np.asarray(jax.shard_map(per_device, mesh=mesh, in_specs=jax.P(), out_specs=jax.P("data"),
                                        check_vma=False)(rest))

    first = masks()
    assert first.shape == (8, 64) and len({m.tobytes() for m in first}) == 8
    np.testing.assert_array_equal(first, masks())


def test_pmap_devices_draw_their_own_dropout_masks(ctx):
    """Every row is the same. 8 devices with 4 rows each, batch 32, against one device with
    batch 4: were the dropout keys shared, all 8 gradients would equal device 0's and the
    runs would end equal; with a key of its own per device they do not. A rerun is identical."""
    x = np.tile(np.linspace(-1, 1, 6, dtype=np.float32), (96, 1))
    y = np.zeros(96)

    def run(devices, rows, batch):
        ds = make_dataset(x[:rows], y[:rows], "classification", 3, test_fraction=1 / 3)
        model = MLP(6, (32,), 3, dropout=0.5, rngs=nnx.Rngs(params=0, dropout=1))
        keys = [jax.random.key_data(a) for a in jax.tree.leaves(nnx.state(model)) if is_key(a)]
        r, _ = _fit(ds, ctx, model=model, batch_size=batch, epochs=1,
                    parallel={"strategy": "pmap", "data_axis_size": devices})
        # The state keeps the shared keys; only the draw counters advance.
        assert keys and all(np.array_equal(jax.random.key_data(a), k) for a, k in
                            zip([a for a in jax.tree.leaves(r.state.rest) if is_key(a)], keys))
        return _host(r.state.params)

    eight, again = run(8, 96, 32), run(8, 96, 32)   # 64 training rows: 2 steps
    jax.tree.map(np.testing.assert_array_equal, eight, again)
    one = run(1, 12, 4)                              # 8 training rows: 2 steps
    assert _max_diff(one, eight) > 1e-4


# ---------------------------------------------------------------- resume


def _final_state(workdir):
    ckpt = Checkpointer(workdir / "checkpoints", async_save=False)
    state, meta = ckpt.restore_raw()
    ckpt.close()
    return state, meta


@pytest.mark.parametrize("strategy", ["sharded", "pmap"])
def test_resume_with_accumulation_ema_and_dropout_is_bit_exact(tmp_path, strategy):
    """45 steps straight == 23 steps + resume + the rest, on 8 devices, with 2 microbatches,
    EMA and dropout (pmap: per-device dropout keys)."""
    cfg = {"name": "blobs", "data": {"source": "synthetic", "name": "blobs", "synthetic_rows": 400,
                                     "batch_size": 16, "val_fraction": 0.2, "test_fraction": 0.2},
           "model": {"hidden_sizes": [16], "dropout": 0.2},
           "train": {"epochs": 3, "steps_per_call": 2, "grad_accum_steps": 2, "ema_decay": 0.9},
           "parallel": {"strategy": strategy},
           "checkpoint": {"every_steps": 22, "every_epochs": 100, "keep": 10, "best_metric": "val.loss"},
           "logging": {"progress": "none"}}
    full, cut = straight_and_resumed(cfg, tmp_path, dropped_steps=(44, 45))
    (state_full, meta_full), (state_cut, meta_cut) = _final_state(full), _final_state(cut)
    assert meta_full["step"] == meta_cut["step"] == 45 and "ema" in state_full
    for a, b in zip(jax.tree.leaves(state_full), jax.tree.leaves(state_cut)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    s_full, s_cut = (json.loads((d / "summary.json").read_text()) for d in (full, cut))
    assert s_full["test"] == s_cut["test"] and s_full["val"] == s_cut["val"]
    assert s_cut["evaluation"]["params"] == "ema"
