"""Several local processes on loopback (gloo collectives): same parameters as one process;
failures end the whole run, boundedly, with a clear status."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import yaml

from jaxtrain.ckpt.params import load_named_params
from jaxtrain.cli.launch import free_port

# 294 training rows, batch 32: 10 steps per epoch (the last one 6 rows, all in process 0's
# half), 2 epochs = 20 steps.
CONFIG = {"name": "mp", "data": {"source": "synthetic", "name": "blobs", "synthetic_rows": 420,
                                 "batch_size": 32},
          "model": {"hidden_sizes": [16]}, "optimizer": {"name": "adam", "learning_rate": 0.01},
          "train": {"epochs": 2, "steps_per_call": 4}, "checkpoint": {"async_save": False},
          "logging": {"progress": "plain"}}


def _run(args, tmp_path, devices, timeout=120):
    env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(devices))
    return subprocess.run([sys.executable, "-m", "jaxtrain", *args], env=env, cwd=tmp_path, text=True,
                          capture_output=True, timeout=timeout)


@pytest.fixture(scope="module")
def one_process_four_devices(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mp")
    (tmp / "mp.yaml").write_text(yaml.safe_dump(CONFIG))
    done = _run(["train", "mp.yaml", "--workdir", "single"], tmp, devices=4)
    assert done.returncode == 0, done.stdout + done.stderr
    params, meta = load_named_params(tmp / "single" / "checkpoints")
    assert meta["step"] == 20
    return tmp, params


@pytest.mark.parametrize("mode", ["on_device_fsdp", "streamed_pmap"])
def test_two_processes_of_two_devices_match_one_process_of_four(one_process_four_devices, mode):
    tmp, expected = one_process_four_devices
    # fsdp splits parameters across the two processes (checkpoints gather them); the streamed
    # pmap run has each process read only its rows of every batch.
    sets = {"on_device_fsdp": ["parallel.strategy=fsdp"],
            "streamed_pmap": ["parallel.strategy=pmap", "train.on_device_fraction=0"]}[mode]
    done = _run(["launch", "-n", "2", "--cpu-devices", "2", "--", "train", "mp.yaml", "--workdir", mode,
                 *[a for s in sets for a in ("--set", s)]], tmp, devices=2)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[p0] devices: 4 x cpu (cpu), processes: 2" in done.stdout
    assert "[p1] epoch" not in done.stdout  # only process 0 reports
    params, meta = load_named_params(tmp / mode / "checkpoints")
    assert meta["step"] == 20 and params.keys() == expected.keys()
    for name in expected:
        np.testing.assert_allclose(params[name], expected[name], rtol=1e-5, atol=1e-6, err_msg=name)


DIE = textwrap.dedent("""
    import os, pathlib, sys
    import jax, jax.numpy as jnp
    from jaxtrain.config.schema import DistributedConfig
    from jaxtrain.parallel.distributed import initialize
    initialize(DistributedConfig(heartbeat_timeout_s=3))
    pathlib.Path(f"pid{jax.process_index()}").write_text(str(os.getpid()))
    if jax.process_index() == 1:
        os._exit(3)  # a crash: no exit barrier, no goodbye
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    x = jax.device_put(jnp.ones(jax.device_count()), jax.NamedSharding(mesh, jax.P("data")))
    while True:  # a collective that needs process 1
        float(jnp.sum(x))
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_launch_ends_every_process_when_one_fails_and_returns_its_status(tmp_path):
    (tmp_path / "die.py").write_text(DIE)
    done = _run(["launch", "-n", "2", "--", sys.executable, "die.py"], tmp_path, devices=1, timeout=60)
    assert done.returncode == 3, done.stdout[-2000:] + done.stderr[-2000:]
    assert "process 1 exited with status 3" in done.stderr
    for i in range(2):
        assert not _alive(int((tmp_path / f"pid{i}").read_text())), f"process {i} outlived the launcher"


def test_a_dead_process_stops_the_others_without_a_launcher(tmp_path):
    """JAX's heartbeat: process 0 hangs in a collective with a crashed peer, then exits non-zero."""
    (tmp_path / "die.py").write_text(DIE)
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="1", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{free_port()}",
               JAXTRAIN_NUM_PROCESSES="2")
    procs = [subprocess.Popen([sys.executable, "die.py"], cwd=tmp_path, env=dict(env, JAXTRAIN_PROCESS_ID=str(i)),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        codes = [p.wait(timeout=60) for p in procs]
        assert codes[1] == 3 and codes[0] != 0
        assert "stopped sending heartbeats" in procs[0].stderr.read()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def test_unreachable_coordinator_is_one_clear_error_within_the_timeout(tmp_path):
    done = _run(["train", "--workdir", "run",
                 "--set", f"parallel.distributed.coordinator=127.0.0.1:{free_port()}",
                 "--set", "parallel.distributed.num_processes=2", "--set", "parallel.distributed.process_id=1",
                 "--set", "parallel.distributed.initialization_timeout_s=2"], tmp_path, devices=1, timeout=60)
    assert done.returncode == 2
    assert "could not reach the coordinator at 127.0.0.1:" in done.stderr and "within 2 s" in done.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("mode", ["sharded", "fsdp"])
def test_two_process_run_resumed_mid_run_matches_one_uninterrupted_process(one_process_four_devices, mode):
    """Cut after 1 epoch, resume to 2: the same parameters as one process of four devices."""
    tmp, expected = one_process_four_devices
    sets = ["--set", f"parallel.strategy={mode}"]
    first = _run(["launch", "-n", "2", "--cpu-devices", "2", "--", "train", "mp.yaml", "--workdir",
                  f"cut_{mode}", "--set", "train.epochs=1", *sets], tmp, devices=2)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    again = _run(["launch", "-n", "2", "--cpu-devices", "2", "--", "train", "--resume", f"cut_{mode}",
                  "--set", "train.epochs=2"], tmp, devices=2)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resume: continuing from checkpoint step 10" in again.stdout
    params, meta = load_named_params(tmp / f"cut_{mode}" / "checkpoints")
    assert meta["step"] == 20
    for name in expected:
        np.testing.assert_allclose(params[name], expected[name], rtol=1e-5, atol=1e-6, err_msg=name)
