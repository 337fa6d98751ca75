"""The core trainer against independent answers: closed forms, NumPy, other code paths."""

import json

import jax
import numpy as np
import pytest
from conftest import make_dataset
from flax import nnx

from jaxtrain import load_config

from jaxtrain import train
from jaxtrain.data import load_dataset
from jaxtrain.data.sources import house_prices
from jaxtrain.training.loop import fit
from jaxtrain.training.setup import setup
from jaxtrain.engine.plan import make_plan
from jaxtrain.model.models import MLP, LinearRegression


def _regression_problem(n=512, d=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    w = np.array([1.5, -2.0, 0.5])[:d]
    y = x @ w + 0.3 + rng.normal(0, 0.1, n)
    return x, y.astype(np.float32)


def test_linear_regression_recovers_lstsq_coefficients(ctx):
    x, y = _regression_problem()
    ds = make_dataset(x, y)
    cfg = load_config({"model": {"name": "linear"}, "optimizer": {"name": "sgd", "learning_rate": 0.5},
                       "data": {"batch_size": len(ds.train)}, "train": {"epochs": 200},
                       "parallel": {"data_axis_size": 1}})
    model = LinearRegression(3, 1, rngs=nnx.Rngs(0))
    run = setup(cfg, model, ds, ctx, plan=make_plan(cfg, ds))
    fit(run)
    params = run.state.params
    w = np.asarray(params["linear"]["kernel"][...])[:, 0]
    b = float(np.asarray(params["linear"]["bias"][...])[0])
    a = np.hstack([ds.train.x, np.ones((len(ds.train), 1))]).astype(np.float64)
    expected, *_ = np.linalg.lstsq(a, ds.train.y.astype(np.float64), rcond=None)
    np.testing.assert_allclose(np.append(w, b), expected, rtol=0.01)


def test_house_prices_config_matches_closed_form_test_error(tmp_path):
    """The shipped regression config reaches the least-squares fit's test error (original units)."""
    summary = train("house_prices_linear", workdir=tmp_path / "run",
                    overrides=["logging.progress=none", "checkpoint.enabled=false"])
    cfg = load_config("house_prices_linear")
    ds = load_dataset(cfg.data)
    design = lambda x: np.hstack([x, np.ones((len(x), 1))]).astype(np.float64)  # noqa: E731
    coef, *_ = np.linalg.lstsq(design(ds.train.x), ds.train.y.astype(np.float64), rcond=None)
    err = (design(ds.test.x) @ coef - ds.test.y) * ds.target_scale
    assert summary["test"]["mse"] == pytest.approx(np.mean(err ** 2), rel=0.03)
    assert summary["test"]["mae"] == pytest.approx(np.mean(np.abs(err)), rel=0.03)


def test_streaming_and_on_device_modes_train_identically(ctx):
    """Same batches, same order, same masks: the two execution modes must agree."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(203, 6)).astype(np.float32)  # 203 % 16 != 0: a masked last batch
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int32)
    ds = make_dataset(x, y, "classification", 2)
    finals = []
    for fraction, k in ((1.0, "epoch"), (0.0, 3)):
        cfg = load_config({"model": {"hidden_sizes": [8]}, "data": {"batch_size": 16},
                           "train": {"epochs": 2, "on_device_fraction": fraction, "steps_per_call": k},
                           "parallel": {"data_axis_size": 1}})
        run = setup(cfg, MLP(6, (8,), 2, rngs=nnx.Rngs(0)), ds, ctx, plan=make_plan(cfg, ds))
        assert run.engine.on_device == (fraction > 0)
        fit(run)
        finals.append(jax.tree.map(np.asarray, run.state.params))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), *finals)


def test_compiled_step_is_traced_once(ctx, monkeypatch):
    import jaxtrain.training.setup as loop_mod
    traces = []
    real = loop_mod.make_train_step

    def counting(*args, **kwargs):
        step = real(*args, **kwargs)

        def wrapped(state, batch):
            traces.append(1)
            return step(state, batch)
        return wrapped

    monkeypatch.setattr(loop_mod, "make_train_step", counting)
    x, y = _regression_problem(n=256)
    ds = make_dataset(x, y)  # 192 train rows, batch 32: 6 steps, chunks of 3
    cfg = load_config({"model": {"name": "linear"}, "data": {"batch_size": 32},
                       "train": {"epochs": 3, "steps_per_call": 3}, "parallel": {"data_axis_size": 1}})
    run = setup(cfg, LinearRegression(3, rngs=nnx.Rngs(0)), ds, ctx, plan=make_plan(cfg, ds))
    fit(run)
    assert run.global_step == 18
    # Six calls of one chunk length: traced and compiled once; the only other trace is the
    # one-step program whose cost analysis gives the FLOPs (engine.flops_per_step).
    assert len(traces) == 2 and 1 not in run.engine._compiled and 3 in run.engine._compiled


def _numpy_mlp(params, x):
    h = x.reshape(len(x), -1)
    for i in range(len(params["layers"])):
        layer = params["layers"][i]
        h = np.maximum(h @ np.asarray(layer["kernel"][...]) + np.asarray(layer["bias"][...]), 0)
    return h @ np.asarray(params["head"]["kernel"][...]) + np.asarray(params["head"]["bias"][...])


def test_evaluation_covers_the_last_partial_batch(ctx):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(397, 5)).astype(np.float32)
    y = rng.integers(0, 3, 397).astype(np.int32)
    ds = make_dataset(x, y, "classification", 3)
    cfg = load_config({"model": {"hidden_sizes": [7]}, "data": {"eval_batch_size": 64}})
    run = setup(cfg, MLP(5, (7,), 3, rngs=nnx.Rngs(3)), ds, ctx, plan=make_plan(cfg, ds))
    got = run.evaluator.evaluate(run.state.params, run.state.rest, ds.test)
    logits = _numpy_mlp(jax.tree.map(np.asarray, run.state.params), ds.test.x).astype(np.float64)
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    assert got["accuracy"] == pytest.approx((logits.argmax(1) == ds.test.y).mean(), abs=1e-12)
    assert got["loss"] == pytest.approx(-logp[np.arange(len(ds.test.y)), ds.test.y].mean(), rel=1e-5)


def test_default_run_reaches_95_percent_and_writes_the_run_directory(tmp_path):
    from jaxtrain.cli.main import main
    workdir = tmp_path / "digits"
    assert main(["train", "--workdir", str(workdir), "--set", "logging.progress=none"]) == 0
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["test"]["accuracy"] >= 0.95
    for key in ("examples_per_sec",):
        assert summary["train"][key] > 0
    time_ = summary["time"]
    assert time_["breakdown"]["compile"] > 0 and "compile_s" not in time_  # one compile figure
    assert sum(time_["breakdown"].values()) == pytest.approx(time_["total_s"])
    # one measurement behind both rates: examples/s x s/step is the examples of a step
    per_step = summary["train"]["examples_per_sec"] * summary["perf"]["step_time_ms"] / 1e3
    assert per_step == pytest.approx(summary["batch"]["global"], rel=0.1)
    assert summary["devices"]["count"] >= 1 and summary["devices"]["kind"]
    assert summary["config_name"] == "digits_mlp"
    events = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in events if e["event"] == "train"] == list(range(1, 31))
    assert load_config(workdir / "config.yaml").train.epochs == 30
    # eval re-runs the saved parameters with the saved preprocessing: the same test metrics.
    from jaxtrain import evaluate
    again = evaluate(workdir)
    assert again["accuracy"] == summary["test"]["accuracy"]
    assert again["loss"] == pytest.approx(summary["test"]["loss"], rel=1e-6)


def test_synthetic_house_prices_come_from_known_coefficients():
    x, y, coef = house_prices(2000, seed=3)
    a = np.hstack([x, np.ones((len(x), 1))]).astype(np.float64)
    fitted, *_ = np.linalg.lstsq(a, y.astype(np.float64), rcond=None)
    np.testing.assert_allclose(fitted[:4], coef, rtol=0.1)


def test_no_test_split_reports_no_test_metrics_rather_than_nan(tmp_path):
    summary = train("digits_mlp", workdir=tmp_path / "run",
                    overrides=["data.test_fraction=0", "train.epochs=1", "logging.progress=none",
                               "checkpoint.enabled=false"])
    assert summary["test"] == {} and summary["data"]["test"] == 0
    assert summary["val"]["accuracy"] > 0.5  # the validation split still measured the model
