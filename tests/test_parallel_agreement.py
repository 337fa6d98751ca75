"""Two processes of four CPU devices on MNIST-shaped data: every per-process decision is made
once for all processes, every call runs in the same order on each, and a run whose processes
stop meeting in their collectives ends within `parallel.distributed.collective_timeout_s`
with one line naming the process and the phase."""

import os
import re
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import yaml

# 832 training images of 28x28 at batch 104: 8 steps per epoch over 2 processes x 4 devices.
CONFIG = {"name": "mnist_shaped", "data": {"source": "npz", "path": "mnist.npz", "batch_size": 104,
                                           "val_fraction": 0.0, "normalize": "minmax_sym"},
          "model": {"hidden_sizes": [256, 128, 64]}, "optimizer": {"name": "sgd", "learning_rate": 0.05},
          "train": {"epochs": 1}, "checkpoint": {"enabled": False},
          "parallel": {"distributed": {"collective_timeout_s": 30}}, "logging": {"progress": "none"}}

# Runs one process of a launched run and prints the K it trains with. `differ`: the processes
# measure different timings (process 0 finds every K equally fast, so it keeps K=1; process 1
# finds longer calls faster, so it alone would take the whole epoch). `lead_extra`: process 0
# alone issues one more global computation after its first call, as a lead-only read of a
# sharded value would: a collective that process 1 never joins.
SCRIPT = textwrap.dedent("""
    import sys
    import jax
    from jaxtrain.cli.main import main
    from jaxtrain.parallel import distributed
    from jaxtrain.engine.engine import Engine
    from jaxtrain.training.hooks.guard import NonFiniteGuard

    mode = sys.argv[1]
    prepare = Engine.prepare
    def prepare_and_report(self, state):
        prepare(self, state)
        print(f"process {jax.process_index()} trains with K={self.k}", flush=True)
    Engine.prepare = prepare_and_report
    if mode == "differ":  # measured although the plan has CPU processes take the longest K untimed
        import dataclasses
        from jaxtrain.engine import autotune, plan
        from jaxtrain.runs import lanes
        def plan_that_measures(*args, **kwargs):
            p = plan.make_plan(*args, **kwargs)
            return dataclasses.replace(p, steps_per_call=None,
                                       k_candidates=tuple(autotune.candidates(p.steps_per_epoch)))
        lanes.make_plan = plan_that_measures
        Engine._time_calls = lambda self, state, k, make_args: 1e-3 if jax.process_index() == 0 else 1e-3 / k
    if mode == "lead_extra":
        after_call = NonFiniteGuard.after_call
        def after_call_and_extra(self, info):
            request = after_call(self, info)
            if jax.process_index() == 0 and info.step == 1:
                distributed.agreed_min(1)
            return request
        NonFiniteGuard.after_call = after_call_and_extra
    sys.exit(main(["train", "mnist_shaped.yaml", "--workdir", mode, *sys.argv[2:]]))
""")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("agree")
    rng = np.random.default_rng(0)
    # Two classes told apart by the mean brightness of the image, so that a step learns something.
    y_train, y_test = rng.integers(0, 2, 832), rng.integers(0, 2, 208)
    make = lambda y: np.clip(rng.normal(96 + 64 * y[:, None, None], 40, (len(y), 28, 28)), 0, 255).astype(np.uint8)
    np.savez(tmp / "mnist.npz", x_train=make(y_train), y_train=y_train, x_test=make(y_test), y_test=y_test)
    (tmp / "mnist_shaped.yaml").write_text(yaml.safe_dump(CONFIG))
    (tmp / "run.py").write_text(SCRIPT)
    return tmp


def _launch(tmp, mode, *sets, timeout=420):
    args = [a for s in sets for a in ("--set", s)]
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="4")
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "jaxtrain", "launch", "-n", "2", "--cpu-devices", "4", "--",
                           sys.executable, "run.py", mode, *args], cwd=tmp, env=env, text=True,
                          capture_output=True, timeout=timeout)
    return done, time.monotonic() - t0


@pytest.mark.parametrize("steps_per_call", ["1", "auto"])
def test_two_processes_of_four_devices_finish(workspace, steps_per_call):
    done, _ = _launch(workspace, f"k{steps_per_call}", f"train.steps_per_call={steps_per_call}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = yaml.safe_load((workspace / f"k{steps_per_call}" / "summary.json").read_text())
    assert summary["devices"]["processes"] == 2 and summary["train"]["steps"] == 8
    # Every line of the output, stdout and stderr, is one process's whole line with one prefix;
    # the transport's connection chatter is not among them.
    lines = (done.stdout + done.stderr).splitlines()
    assert lines and all(re.match(r"\[p[01]\] ", line) and len(re.findall(r"\[p\d\]", line)) == 1
                         for line in lines), lines
    assert not any("[Gloo]" in line for line in lines)
    assert any(line.startswith("[p0] ") for line in lines) and any(line.startswith("[p1] ") for line in lines)


def test_the_launcher_prints_whole_lines_and_hides_gloo_chatter_unless_verbose():
    import io
    import threading
    from jaxtrain.cli.launch import _pump
    torn = ("[Gloo] Rank 2 is connected to 7[Gloo] Rank  peer ranks. 3 is connected\n"
            "epoch 1/2 loss=0.5\n" "no newline at the end")
    for verbose, want in ((False, ["[p1] epoch 1/2 loss=0.5", "[p1] no newline at the end"]),
                          (True, ["[p1] " + torn.splitlines()[0], "[p1] epoch 1/2 loss=0.5",
                                  "[p1] no newline at the end"])):
        out = io.StringIO()
        _pump(1, io.StringIO(torn), out, threading.Lock(), verbose)
        assert out.getvalue().splitlines() == want and out.getvalue().endswith("\n")


def test_processes_that_measure_different_timings_agree_on_one_k(workspace):
    done, _ = _launch(workspace, "differ", "train.steps_per_call=auto")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # Process 0's choice, taken by both (process 1 alone would take K=8).
    assert "[p0] process 0 trains with K=1" in done.stdout
    assert "[p1] process 1 trains with K=1" in done.stdout


def test_a_collective_one_process_never_joins_ends_the_run_within_the_bound_with_one_line(workspace):
    done, elapsed = _launch(workspace, "lead_extra", "train.steps_per_call=1",
                            "parallel.distributed.collective_timeout_s=20")
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-3000:]
    stuck = [line for line in output.splitlines() if "made no progress for" in line]
    assert stuck, output[-3000:]
    # Whichever process notices first names itself and where it waits.
    assert ("process 0 of 2 made no progress" in stuck[0] and "the hooks after step 1" in stuck[0]
            or "process 1 of 2 made no progress" in stuck[0] and "the train call at step" in stuck[0]), stuck
    assert "collective_timeout_s=20" in stuck[0]
    assert elapsed < 300  # 20 s without progress, plus start-up and compiles on a loaded machine
