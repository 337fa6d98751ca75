"""Vectorized sweeps (vmap over optimizer hyperparameters) agree with separate runs."""

import json

import jax
import numpy as np
import pytest

from jaxtrain.runs.api import load_trained, train
from jaxtrain.cli.main import main
from jaxtrain.config.schema import load_config
from jaxtrain.util.events import Console
from jaxtrain.runs.sweep import run_sweep
from run_files import read_results
from jaxtrain.runs.vsweep import vector_groups, why_not_vectorized

CFG = {"name": "tiny", "data": {"source": "synthetic", "name": "blobs", "synthetic_rows": 240, "batch_size": 32},
       "model": {"hidden_sizes": [16], "dropout": 0.1}, "optimizer": {"name": "sgd"}, "train": {"epochs": 3}}


def test_groups_split_on_anything_but_optimizer_hyperparameters():
    cfgs = [load_config(CFG, [f"optimizer.learning_rate={lr}", f"data.batch_size={bs}"])
            for lr in (0.1, 0.01) for bs in (32, 64)]
    assert sorted(vector_groups(cfgs)) == [[0, 2], [1, 3]]


def test_what_cannot_be_vectorized_trains_alone_and_says_why():
    cfgs = [load_config(CFG, [f"optimizer.learning_rate={lr}", "parallel.strategy=pmap"]) for lr in (0.1, 0.01)]
    assert vector_groups(cfgs) == [[0], [1]]
    assert why_not_vectorized(cfgs[0]) == "parallel.strategy=pmap cannot be vectorized"
    assert why_not_vectorized(load_config(CFG)) is None


def _max_param_diff(a, b):
    pa, pb = load_trained(a).params, load_trained(b).params
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)))


def test_vectorized_points_equal_their_separate_runs(tmp_path):
    # sgd with momentum 0 and 0.9 in one program: the zero-momentum point must still match
    # a plain SGD run (no momentum trace) on 8 simulated devices, with dropout on.
    grid = ["optimizer.learning_rate=0.1,0.02", "optimizer.momentum=0,0.9"]
    vec = run_sweep(CFG, grid, workdir=tmp_path / "vec", vectorized=True, console=Console("none"))
    sep = run_sweep(CFG, grid, workdir=tmp_path / "sep", console=Console("none"))
    assert [r["point"] for r in vec] == [r["point"] for r in sep]
    losses = set()
    for a, b in zip(read_results(tmp_path / "vec"), read_results(tmp_path / "sep")):
        for key in ("test.loss", "test.accuracy", "val.loss", "train.loss"):
            assert abs(float(a[key]) - float(b[key])) <= 1e-5, (a["point"], key, a[key], b[key])
        assert _max_param_diff(tmp_path / "vec" / a["point"], tmp_path / "sep" / b["point"]) <= 1e-5
        losses.add(round(float(a["test.loss"]), 4))
    assert len(losses) == 4  # the points really trained differently
    # FLOPs per example are the model's, not the population's: the 4-point program's count over
    # its 4 batches is a separate run's (XLA counts both; the vmapped one may fuse differently)
    for point in (r["point"] for r in vec):
        alone, together = (json.loads((tmp_path / d / point / "summary.json").read_text())["perf"]
                           for d in ("sep", "vec"))
        assert together["flops_per_example"] == pytest.approx(alone["flops_per_example"], rel=0.2)
        assert together["tflops_per_sec"] == pytest.approx(
            together["flops_per_step"] / together["step_time_ms"] / 1e9)


def test_adamw_learning_rate_and_weight_decay_vectorized(tmp_path):
    cfg = {**CFG, "optimizer": {"name": "adamw", "schedule": "cosine"}, "parallel": {"data_axis_size": 1}}
    grid = ["optimizer.learning_rate=0.01,0.003", "optimizer.weight_decay=0,0.1"]
    run_sweep(cfg, grid, workdir=tmp_path / "vec", vectorized=True, console=Console("none"))
    run_sweep(cfg, grid, workdir=tmp_path / "sep", console=Console("none"))
    for a, b in zip(read_results(tmp_path / "vec"), read_results(tmp_path / "sep")):
        assert abs(float(a["test.loss"]) - float(b["test.loss"])) <= 1e-5
        assert _max_param_diff(tmp_path / "vec" / a["point"], tmp_path / "sep" / b["point"]) <= 1e-5
    # A vectorized point is a complete run directory, like a separate run's.
    vec_dir, sep_dir = tmp_path / "vec" / a["point"], tmp_path / "sep" / b["point"]
    assert sorted(p.name for p in vec_dir.iterdir()) == sorted(p.name for p in sep_dir.iterdir())
    assert json.loads((vec_dir / "summary.json").read_text())["status"] == "completed"


def test_a_vectorized_point_resumes_like_any_run(tmp_path):
    # Two epochs vectorized, then `train --resume POINT` to a third: the same as one separate
    # three-epoch run (constant learning rate, dropout on: its RNG state travels too).
    cfg = {**CFG, "optimizer": {"name": "adam"}, "train": {"epochs": 2}}
    run_sweep(cfg, ["optimizer.learning_rate=0.01,0.003"], workdir=tmp_path / "vec", vectorized=True,
              console=Console("none"))
    point = tmp_path / "vec" / "learning_rate=0.01"
    assert json.loads((point / "summary.json").read_text())["execution"]["vectorized_points"] == 2
    assert main(["train", "--resume", str(point), "--set", "train.epochs=3",
                 "--set", "logging.progress=none"]) == 0
    resumed = json.loads((point / "summary.json").read_text())
    separate = train(CFG, workdir=tmp_path / "sep", optimizer__name="adam", optimizer__learning_rate=0.01,
                     train__epochs=3, logging__progress="none")
    assert resumed["train"]["steps"] == separate["train"]["steps"]
    assert abs(resumed["test"]["loss"] - separate["test"]["loss"]) <= 1e-5
    assert _max_param_diff(point, tmp_path / "sep") <= 1e-5


def _adamw_numpy(x, y, lr, wd, steps, b1=0.9, b2=0.999, eps=1e-8):
    """optax.adamw on a zero-initialised linear model, full-batch masked-mean squared error."""
    p = [np.zeros((x.shape[1], 1)), np.zeros(1)]
    mu, nu = [np.zeros_like(a) for a in p], [np.zeros_like(a) for a in p]
    for t in range(1, steps + 1):
        err = (x @ p[0])[:, 0] + p[1][0] - y
        grads = [(2.0 / len(x)) * x.T @ err[:, None], np.array([2.0 * err.mean()])]
        for i, g in enumerate(grads):
            mu[i] = b1 * mu[i] + (1 - b1) * g
            nu[i] = b2 * nu[i] + (1 - b2) * g * g
            update = (mu[i] / (1 - b1 ** t)) / (np.sqrt(nu[i] / (1 - b2 ** t)) + eps)
            p[i] = p[i] - lr * (update + wd * p[i])
    return p


def test_vectorized_adamw_points_match_a_numpy_update_with_weight_decay(tmp_path):
    # 5 training rows, batch 8: every epoch is one padded step; two epochs so that weight
    # decay (zero on the zero-initialised first step) acts on the second.
    rng = np.random.default_rng(5)
    x = rng.normal(size=(8, 3))
    np.savez(tmp_path / "d.npz", x_train=x[:5], y_train=x[:5] @ [1.0, -2.0, 0.5] + 0.3,
             x_test=x[5:], y_test=x[5:] @ [1.0, -2.0, 0.5])
    cfg = {"data": {"source": "npz", "path": str(tmp_path / "d.npz"), "task": "regression",
                    "batch_size": 8, "val_fraction": 0.0,
                    "standardize_target": False},  # a nonzero mean target: no near-zero gradient
           "model": {"name": "linear"}, "optimizer": {"name": "adamw"},
           "train": {"epochs": 2}, "checkpoint": {"enabled": True}}
    grid = ["optimizer.learning_rate=0.05,0.02", "optimizer.weight_decay=0,0.5"]
    run_sweep(cfg, grid, workdir=tmp_path / "vec", vectorized=True, console=Console("none"))
    for row in read_results(tmp_path / "vec"):
        point = tmp_path / "vec" / row["point"]
        summary = json.loads((point / "summary.json").read_text())
        assert summary["execution"]["vectorized_points"] == 4
        trained = load_trained(point, with_data=True)
        train = trained.dataset.train
        c = trained.cfg.optimizer
        kernel, bias = _adamw_numpy(train.x.astype(np.float64), train.y.astype(np.float64),
                                    c.learning_rate, c.weight_decay, steps=2)
        np.testing.assert_allclose(np.asarray(trained.params["linear"]["kernel"][...]), kernel,
                                   rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(np.asarray(trained.params["linear"]["bias"][...]), bias,
                                   rtol=1e-4, atol=1e-6)


def test_a_vectorized_run_shows_its_progress_once_per_call(tmp_path):
    """Every lane has the progress hook, the first lane alone shows it: one line per call."""
    import io
    import re
    out = io.StringIO()
    cfg = {**CFG, "train": {"epochs": 1, "steps_per_call": 1}, "parallel": {"data_axis_size": 1}}
    run_sweep(cfg, ["optimizer.learning_rate=0.1,0.02"], workdir=tmp_path / "vec", vectorized=True,
              console=Console("plain", out, plain_every_s=0.0))
    shown = [re.match(r"epoch 1: \d+/\d+ steps", line).group(0) for line in out.getvalue().splitlines()
             if re.match(r"epoch 1: [1-9]\d*/\d+ steps", line) and " elapsed" not in line]
    assert shown and len(shown) == len(set(shown)), shown
