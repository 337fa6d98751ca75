"""Checkpoints in the strategy's layout: a restored state is laid out as a fresh run's, so a
resume runs the executable compiled for a fresh run (no recompile, every donation used);
another device count restores when the batch splits over it, and is refused in one line if not."""

import json
import warnings

import jax
import numpy as np
import pytest

from jaxtrain import load_config, resume, train
from jaxtrain.ckpt.params import load_named_params
from jaxtrain.ckpt.restore import restore_latest
from jaxtrain.cli.main import main
from jaxtrain.data import load_dataset
from jaxtrain.runs.trained import make_model
from jaxtrain.training.setup import setup
from jaxtrain.engine.plan import make_plan
from jaxtrain.training.context import RunContext
from jaxtrain.util.events import Console, JsonlWriter

# 240 training rows, batch 16: 15 steps per epoch; hidden 16 splits over 8 devices (fsdp).
BASE = {"name": "blobs", "data": {"source": "synthetic", "name": "blobs", "synthetic_rows": 400,
                                  "batch_size": 16, "val_fraction": 0.2, "test_fraction": 0.2},
        "model": {"hidden_sizes": [16], "dropout": 0.2},
        "optimizer": {"name": "adam", "learning_rate": 0.01},
        "train": {"epochs": 1, "steps_per_call": 5}, "logging": {"progress": "none"}}


def _cfg(strategy, **parallel):
    cfg = json.loads(json.dumps(BASE))
    cfg["parallel"] = {"strategy": strategy, **parallel}
    return cfg


def _raw(leaf):
    return jax.random.key_data(leaf) if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key) else leaf


def _fresh_run(cfg, tmp_path):
    cfg = load_config(cfg)
    dataset = load_dataset(cfg.data)
    ctx = RunContext(console=Console("none"), events=JsonlWriter(None), workdir=tmp_path)
    return setup(cfg, make_model(cfg, dataset), dataset, ctx, plan=make_plan(cfg, dataset))


@pytest.mark.parametrize("strategy", ["sharded", "pmap", "fsdp"])
def test_resume_restores_the_fresh_layout_and_never_recompiles(tmp_path, strategy):
    run_dir = tmp_path / "run"
    train(_cfg(strategy), workdir=run_dir)
    fresh = _fresh_run(_cfg(strategy), tmp_path).state
    restored, position = restore_latest(run_dir / "checkpoints", fresh, batch_size=16, steps_per_epoch=15)
    assert position.step == 15 and (position.epoch, position.step_in_epoch) == (1, 0)
    fresh_leaves, restored_leaves = jax.tree.leaves(fresh), jax.tree.leaves(restored)
    assert len(fresh_leaves) == len(restored_leaves)
    for a, b in zip(fresh_leaves, restored_leaves):
        assert b.sharding == a.sharding, (strategy, a.shape)
    split = [a for a in fresh_leaves if not a.sharding.is_fully_replicated]
    assert bool(split) == (strategy == "fsdp")  # fsdp really splits: the check compares layouts
    # The same parameters as on disk, read independently to the host.
    saved, _ = load_named_params(run_dir)
    for leaf, name in zip(jax.tree.leaves(restored.params), sorted(saved)):
        np.testing.assert_array_equal(np.asarray(leaf), saved[name])
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*donated buffers.*")
        warnings.filterwarnings("error", message=".*recompiling.*")
        summary = resume(run_dir, train__epochs=2)
    assert summary["execution"]["recompiles"] == 0 and summary["train"]["steps"] == 30
    # Measured memory: one device's buffers of the restored state, counted independently;
    # the compiled step reuses (aliases) every donated state buffer.
    device = restored_leaves[0].sharding._device_assignment[0]
    held = sum(s.data.nbytes for leaf in jax.tree.leaves(jax.tree.map(_raw, restored))
               for s in leaf.addressable_shards if s.device == device)
    memory = summary["memory"]
    assert memory["state_bytes_per_device"] == held
    assert memory["compiled_step"]["aliased"] == held


def test_another_device_count_restores_when_the_batch_splits_and_is_refused_when_not(tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(_cfg("fsdp"), workdir=run_dir)
    saved, _ = load_named_params(run_dir)
    # 8 devices saved, 4 restore: Orbax cuts each global array for the new mesh.
    fresh = _fresh_run(_cfg("fsdp", data_axis_size=4), tmp_path).state
    restored, _ = restore_latest(run_dir / "checkpoints", fresh, batch_size=16, steps_per_epoch=15)
    kernel = restored.params["layers"][0]["kernel"][...]
    assert kernel.sharding.mesh.size == 4 and not kernel.sharding.is_fully_replicated
    np.testing.assert_array_equal(np.asarray(kernel), saved["layers.0.kernel"])
    # A batch of 12 saved on 4 devices does not split over 8: one line, exit 2, nothing trained.
    small = _cfg("fsdp", data_axis_size=4)
    small["data"]["batch_size"] = 12
    train(small, workdir=tmp_path / "small")
    before = sorted(p.name for p in (tmp_path / "small" / "checkpoints").iterdir())
    assert main(["train", "--resume", str(tmp_path / "small"), "--set", "parallel.data_axis_size=8",
                 "--set", "train.epochs=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "(saved on 4 devices) cannot resume on 8 devices (mesh {data: 8})" in err
    assert "(parallel.data_axis_size)" in err
    # a mesh of two axes: the batch is split over all 8 of its devices, and the advice names the mesh
    assert main(["train", "--resume", str(tmp_path / "small"), "--set", "parallel.data_axis_size=null",
                 "--set", "parallel.mesh={data: 2, fsdp: 4}", "--set", "train.epochs=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot resume on 8 devices (mesh {data: 2, fsdp: 4})" in err and "(parallel.mesh)" in err
    assert sorted(p.name for p in (tmp_path / "small" / "checkpoints").iterdir()) == before


def test_async_saves_of_donated_sharded_state_hold_the_saved_step(tmp_path):
    """async_save: the save returns once the shards are on the host, the next calls donate the
    device buffers, and every step on disk still equals the synchronous run's."""
    runs = {}
    for mode in (False, True):
        cfg = _cfg("fsdp")
        cfg["train"]["epochs"] = 2
        cfg["checkpoint"] = {"every_steps": 5, "every_seconds": None, "keep": 10, "async_save": mode}
        train(cfg, workdir=tmp_path / str(mode))
        runs[mode] = tmp_path / str(mode) / "checkpoints"
    steps = sorted(int(p.name) for p in runs[True].iterdir())
    assert steps == sorted(int(p.name) for p in runs[False].iterdir()) == [5, 10, 15, 20, 25, 30]
    for step in steps:
        a, _ = load_named_params(runs[False] / str(step))
        b, _ = load_named_params(runs[True] / str(step))
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"{name} at step {step}")
