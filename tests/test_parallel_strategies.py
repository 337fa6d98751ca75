"""Data-parallel strategies on 8 simulated CPU devices against one device: same parameters."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from jaxtrain import load_config

from jaxtrain.engine.executors import make_executor
from jaxtrain.parallel import placement
from jaxtrain.cli.main import main
from jaxtrain.config.schema import DistributedConfig
from jaxtrain.parallel.distributed import settings
from jaxtrain.util.errors import ConfigError, UserError
from jaxtrain.training.loop import fit
from jaxtrain.training.setup import setup
from jaxtrain.engine.plan import make_plan
from jaxtrain.model.models import MLP


def _train(ds, ctx, *, devices=None, strategy="sharded", on_device=True, mesh=None, optimizer="adam"):
    par = {"strategy": strategy, **({"mesh": mesh} if mesh else {"data_axis_size": devices})}
    cfg = load_config({"model": {"hidden_sizes": [16]}, "data": {"batch_size": 32},
                       "optimizer": {"name": optimizer, "learning_rate": 0.01, "l2": 1e-3},
                       "train": {"epochs": 2, "steps_per_call": 3,
                                 "on_device_fraction": 1.0 if on_device else 0.0},
                       "parallel": par})
    run = setup(cfg, MLP(6, (16,), 3, rngs=nnx.Rngs(0)), ds, ctx, plan=make_plan(cfg, ds))
    summary = fit(run)
    assert run.global_step == 20 and run.engine.on_device == on_device
    return run, summary


@pytest.fixture(scope="module")
def reference(blobs, tmp_path_factory):
    from jaxtrain.util.events import Console, JsonlWriter
    from jaxtrain.training.context import RunContext
    ctx = RunContext(console=Console("none"), events=JsonlWriter(None))
    run, _ = _train(blobs, ctx, devices=1)
    return jax.tree.map(np.asarray, run.state.params)


def _assert_same_params(params, reference):
    got = jax.tree.map(np.asarray, params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, reference)


@pytest.mark.parametrize("strategy", ["sharded", "pmap", "fsdp"])
@pytest.mark.parametrize("on_device", [True, False], ids=["on_device", "streamed"])
def test_eight_devices_match_one_device(blobs, ctx, reference, strategy, on_device):
    run, summary = _train(blobs, ctx, devices=8, strategy=strategy, on_device=on_device)
    _assert_same_params(run.state.params, reference)
    assert summary["devices"]["count"] == 8 and summary["batch"]["per_device"] == 4
    assert summary["parallel"]["strategy"] == strategy


def test_fsdp_shards_params_and_optimizer_state_on_a_two_axis_mesh(blobs, ctx, reference):
    run, summary = _train(blobs, ctx, strategy="fsdp", mesh={"data": 2, "fsdp": 4})
    _assert_same_params(run.state.params, reference)
    assert summary["parallel"]["mesh"] == {"data": 2, "fsdp": 4} and summary["batch"]["per_device"] == 4
    kernel = run.state.params["layers"][0]["kernel"][...]   # (6, 16): 16 divides by 4, 6 does not
    assert kernel.sharding.spec == jax.P(None, "fsdp")
    assert kernel.addressable_shards[0].data.shape == (6, 4)
    mu = [leaf for leaf in jax.tree.leaves(run.state.opt_state) if np.shape(leaf) == (6, 16)]
    assert mu and all(leaf.sharding.spec == jax.P(None, "fsdp") for leaf in mu)
    bias = run.state.params["head"]["bias"][...]        # (3,): no dimension divides, replicated
    assert bias.sharding.is_fully_replicated


def test_pmap_weighs_padding_shards_like_the_global_batch(blobs, ctx, reference):
    """SGD makes the update linear in the gradient: a per-shard mean would visibly differ."""
    run, _ = _train(blobs, ctx, devices=8, strategy="pmap", optimizer="sgd")
    ref_run, _ = _train(blobs, ctx, devices=1, optimizer="sgd")
    _assert_same_params(run.state.params, jax.tree.map(np.asarray, ref_run.state.params))


def test_batch_not_divisible_by_devices_exits_2_with_nearest_sizes(capsys, tmp_path):
    code = main(["train", "--set", "data.batch_size=30", "--workdir", str(tmp_path / "run"),
                 "--set", "logging.progress=none"])
    err = capsys.readouterr().err
    assert code == 2
    assert "data.batch_size" in err and "8 devices" in err and "24 or 32" in err


def test_mesh_settings_are_checked():
    cfg = load_config({"parallel": {"mesh": {"data": -1, "fsdp": 2}}}).parallel
    assert placement.mesh_shape(cfg, 8) == {"data": 4, "fsdp": 2}
    with pytest.raises(ConfigError, match="does not fit the 8 available"):
        placement.mesh_shape(load_config({"parallel": {"mesh": {"data": 3}}}).parallel, 8)
    with pytest.raises(ConfigError, match="valid axes: data, fsdp"):
        load_config({"parallel": {"mesh": {"model": 2}}})


def test_each_process_gathers_only_its_rows_of_every_batch(blobs, monkeypatch):
    """The multi-process input path, in one process: rows 8..15 of each global batch."""
    layout = placement.Layout("sharded", placement.make_mesh(load_config({}).parallel))
    executor = make_executor(layout, blobs.task, 32)
    monkeypatch.setattr(executor, "local_batch_rows", lambda: slice(8, 16))
    local = list(executor.local_batches(blobs, seed=5, epoch=1))
    full = list(blobs.train_batches(32, 5, 1))
    assert len(local) == len(full) == 10
    for mine, whole in zip(local, full):
        for a, b in zip(mine, whole):
            np.testing.assert_array_equal(a, b[8:16])
    assert local[-1][2].sum() == 4  # the last batch's 12 real rows: 4 of them in rows 8..15


def test_distributed_settings_from_launcher_environment(monkeypatch):
    for var in ("JAX_COORDINATOR_ADDRESS", "JAXTRAIN_NUM_PROCESSES", "JAXTRAIN_PROCESS_ID",
                "SLURM_JOB_ID", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert settings(DistributedConfig()) is None
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1234")
    monkeypatch.setenv("JAXTRAIN_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAXTRAIN_PROCESS_ID", "3")
    got = settings(DistributedConfig(heartbeat_timeout_s=7))
    assert got["coordinator_address"] == "127.0.0.1:1234" and got["num_processes"] == 4
    assert got["process_id"] == 3 and got["heartbeat_timeout_seconds"] == 7
    assert settings(DistributedConfig(enabled=False)) is None
    monkeypatch.delenv("JAXTRAIN_PROCESS_ID")
    with pytest.raises(UserError, match="missing process_id"):
        settings(DistributedConfig())


def test_summary_reports_devices_processes_and_per_device_batch(tmp_path):
    from jaxtrain import train
    train({"data": {"source": "synthetic", "name": "blobs", "synthetic_rows": 200, "batch_size": 16},
           "model": {"hidden_sizes": [8]}, "train": {"epochs": 1}, "checkpoint": {"enabled": False},
           "logging": {"progress": "none"}}, workdir=tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["devices"]["count"] == 8 and summary["devices"]["processes"] == 1
    assert summary["devices"]["kind"] and summary["batch"] == {"global": 16, "per_device": 2, "grad_accum_steps": 1}
