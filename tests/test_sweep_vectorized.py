"""Vectorized sweeps (vmap over optimizer hyperparameters) agree with separate runs."""

import json

import jax
import numpy as np

from jaxtrain.runs.api import load_trained
from jaxtrain.cli.main import main
from jaxtrain.config.schema import load_config
from jaxtrain.util.events import Console
from jaxtrain.runs.sweep import read_results, run_sweep
from jaxtrain.runs.vsweep import vector_groups

CFG = {"name": "tiny", "data": {"source": "synthetic", "name": "blobs", "synthetic_rows": 240, "batch_size": 32},
       "model": {"hidden_sizes": [16], "dropout": 0.1}, "optimizer": {"name": "sgd"}, "train": {"epochs": 3}}


def test_groups_split_on_anything_but_optimizer_hyperparameters():
    cfgs = [load_config(CFG, [f"optimizer.learning_rate={lr}", f"data.batch_size={bs}"])
            for lr in (0.1, 0.01) for bs in (32, 64)]
    assert sorted(vector_groups(cfgs)) == [[0, 2], [1, 3]]


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


def test_adamw_learning_rate_and_weight_decay_vectorized(tmp_path, capsys):
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
    # It saves parameters only: resuming it is refused with what to do instead.
    assert main(["train", "--resume", str(tmp_path / "vec" / a["point"])]) == 2
    assert "holds parameters only" in capsys.readouterr().err
