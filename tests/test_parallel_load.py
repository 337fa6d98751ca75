"""Several CPU devices in one process while other processes keep both cores busy.

XLA's CPU client deadlocked (and aborted at its 40 s rendezvous timeout) when the host ran
far ahead of devices slowed by a loaded machine: the fix bounds the calls in flight
(placement.calls_in_flight_limit, engine.CallPacer). The run here is one compiled call per
step so that the host has many calls to run ahead with. Bounded: the run has its own
timeout, and the busy processes end with the test (or by themselves after 10 minutes)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxtrain import train
from jaxtrain.ckpt.params import load_named_params
from jaxtrain.parallel import placement
from jaxtrain.engine.engine import CallPacer

RUN = ["--set", "data.source=synthetic", "--set", "data.name=blobs", "--set", "data.synthetic_rows=256",
       "--set", "data.batch_size=32", "--set", "model.hidden_sizes=[32]", "--set", "train.epochs=2",
       "--set", "train.steps_per_call=1", "--set", "logging.progress=none", "--set", "checkpoint.every_epochs=2"]


def test_the_pacer_waits_for_the_call_limit_calls_back():
    waited = []
    pace = CallPacer(2, wait=waited.append)
    for call in range(6):
        pace(call)
        assert waited == list(range(max(0, call - 1)))   # after call c, calls up to c - 2 are done
    unlimited = CallPacer(None, wait=waited.append)
    for call in range(6):
        unlimited(call)
    assert waited == [0, 1, 2, 3]


def test_only_several_cpu_devices_in_a_process_limit_the_calls_in_flight():
    eight = jax.make_mesh((8,), ("data",), devices=jax.devices()[:8])
    one = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
    assert placement.calls_in_flight_limit(eight) == placement.CPU_CALLS_IN_FLIGHT
    assert placement.calls_in_flight_limit(one) is None


def test_eight_devices_finish_while_both_cores_are_busy_and_agree_with_one(tmp_path):
    # Python itself spins (no `timeout` wrapper: killing the wrapper would orphan the spinner),
    # and stops by itself after 10 minutes should the test die before its `finally`.
    spin = "import time\nend = time.monotonic() + 600\nwhile time.monotonic() < end: pass"
    busy = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(2)]
    try:
        env = dict(os.environ, JAX_NUM_CPU_DEVICES="8", PYTHONPATH=os.pathsep.join(sys.path))
        proc = subprocess.run([sys.executable, "-m", "jaxtrain", "train", *RUN, "--workdir", str(tmp_path / "eight")],
                              env=env, capture_output=True, text=True, timeout=600)
    finally:
        for p in busy:
            p.kill()
            p.wait()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Termination timeout" not in proc.stderr and "may be stuck" not in proc.stderr
    summary = json.loads((tmp_path / "eight" / "summary.json").read_text())
    assert summary["devices"]["count"] == 8
    one = train(None, workdir=tmp_path / "one", overrides=[*RUN[1::2], "parallel.data_axis_size=1"])
    assert one["train"]["steps"] == summary["train"]["steps"]
    a, _ = load_named_params(tmp_path / "eight")
    b, _ = load_named_params(tmp_path / "one")
    for name in b:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_rendezvous_timeouts_are_added_to_xla_flags_without_overriding_the_users():
    from jaxtrain.parallel.xla_flags import CPU_RENDEZVOUS_TIMEOUTS, set_cpu_rendezvous_timeouts
    env = {"XLA_FLAGS": "--xla_cpu_collective_call_terminate_timeout_seconds=7 --xla_dump_to=/tmp/x"}
    set_cpu_rendezvous_timeouts(env)
    flags = env["XLA_FLAGS"].split()
    warn = "xla_cpu_collective_call_warn_stuck_timeout_seconds"
    assert f"--{warn}={CPU_RENDEZVOUS_TIMEOUTS[warn]}" in flags
    assert "--xla_cpu_collective_call_terminate_timeout_seconds=7" in flags and "--xla_dump_to=/tmp/x" in flags
    assert sum("terminate_timeout" in f for f in flags) == 1
    fresh = {}
    set_cpu_rendezvous_timeouts(fresh)
    assert sorted(fresh["XLA_FLAGS"].split()) == sorted(f"--{k}={v}" for k, v in CPU_RENDEZVOUS_TIMEOUTS.items())


LATE_ALL_REDUCE = """
import sys, time
from jaxtrain.cli.fatal_guard import FatalGuard
guard = FatalGuard()
import jax, jax.numpy as jnp, numpy as np
mesh = jax.make_mesh((8,), ('d',), axis_types=(jax.sharding.AxisType.Auto,))
def late(i):
    if int(i) == 0: time.sleep(float(sys.argv[1]))
    return np.zeros((), np.float32)
def body(x):
    d = jax.pure_callback(late, jax.ShapeDtypeStruct((), jnp.float32), jax.lax.axis_index('d'))
    return jax.lax.psum(x + d, 'd')
f = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=jax.P('d'), out_specs=jax.P()))
x = jax.device_put(jnp.arange(8.0), jax.NamedSharding(mesh, jax.P('d')))
print(float(f(x)[0]), flush=True)
print("after the call", file=sys.stderr)
guard.close()
"""


@pytest.mark.parametrize("late_s,flags", [
    (2.0, "--xla_cpu_collective_call_warn_stuck_timeout_seconds=1"),
    (4.0, "--xla_cpu_collective_call_warn_stuck_timeout_seconds=1 "
          "--xla_cpu_collective_call_terminate_timeout_seconds=1")], ids=["waited_for", "past_the_timeout"])
def test_a_rendezvous_timeout_ends_in_one_line_not_a_cpp_stack(tmp_path, late_s, flags):
    """The command line's guard (cli/fatal_guard.py, on with several CPU devices). One device joins an
    all-reduce late. 2 s late, with the user's warning at 1 s and jaxtrain's termination timeout: XLA
    logs the warning (so it read the flags jaxtrain composed), waits, and everything written passes
    through the guard. 4 s late, past a 1 s + 1 s timeout: exit 4 and one line instead of XLA's
    SIGABRT and stacks."""
    script = tmp_path / "late.py"
    script.write_text(LATE_ALL_REDUCE)
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="8", PYTHONPATH=os.pathsep.join(sys.path), XLA_FLAGS=flags)
    proc = subprocess.run([sys.executable, str(script), str(late_s)], env=env, capture_output=True, text=True,
                          timeout=300)
    if late_s == 2.0:
        assert proc.returncode == 0 and proc.stdout.split() == ["28.0"], proc.stderr[-3000:]   # 0 + ... + 7
        assert "may be stuck" in proc.stderr and "after the call" in proc.stderr
        assert "Termination timeout" not in proc.stderr
        return
    assert proc.returncode == 4, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("jaxtrain: error: the devices of this process waited too long") and \
        "xla_cpu_collective_call_terminate_timeout_seconds" in lines[-1]
    assert "@ 0x" not in proc.stderr and "Check failure" not in proc.stderr and "Termination timeout" not in proc.stderr
    assert proc.stdout == ""
