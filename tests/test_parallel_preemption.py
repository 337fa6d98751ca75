"""Synchronized preemption: SIGTERM to one process of a two-process run makes both agree on
one stopping step, save once and exit 143 (the launcher too); the resumed run ends bit-exact
with an uninterrupted one. Bounds are generous: the machine is shared."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from jaxtrain.ckpt.params import load_named_params

# 294 training rows, batch 32: 10 steps per epoch; 2 steps per call, a checkpoint every 10 steps.
# 2000 epochs: the run cannot end before the SIGTERM sent at its first checkpoint (a run that
# ignored it would end with exit 0, a failure, or be killed at the bound).
CONFIG = {"name": "mp", "data": {"source": "synthetic", "name": "blobs", "synthetic_rows": 420,
                                 "batch_size": 32},
          "model": {"hidden_sizes": [16]}, "optimizer": {"name": "adam", "learning_rate": 0.01},
          "train": {"epochs": 2000, "steps_per_call": 2},
          "checkpoint": {"every_steps": 10, "keep": 100}, "logging": {"progress": "plain"}}


def _launch(tmp, *args):
    cmd = [sys.executable, "-m", "jaxtrain", "launch", "-n", "2", "--cpu-devices", "2", "--", *args]
    return subprocess.Popen(cmd, cwd=tmp, env=dict(os.environ, JAX_NUM_CPU_DEVICES="2"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _steps(workdir: Path) -> list[int]:
    ckpts = workdir / "checkpoints"
    return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) if ckpts.is_dir() else []


def _finish(proc, timeout):
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise


def test_sigterm_to_one_worker_stops_both_at_one_step_and_resume_is_bit_exact(tmp_path):
    (tmp_path / "mp.yaml").write_text(yaml.safe_dump(CONFIG))
    proc = _launch(tmp_path, "train", "mp.yaml", "--workdir", "cut")
    t0 = time.monotonic()
    while not _steps(tmp_path / "cut"):  # training is under way
        assert proc.poll() is None, _finish(proc, 10)
        assert time.monotonic() - t0 < 300, "no checkpoint within 300 s"
        time.sleep(0.05)
    workers = _children(proc.pid)
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGTERM)  # one worker only
    out, err = _finish(proc, 300)
    assert proc.returncode == 143, out[-3000:] + err[-3000:]
    lines = [line for line in err.splitlines() if "stopped by SIGTERM at step" in line]  # each process's stderr
    stops = {line[:4]: int(line.split("at step ")[1].split(";")[0]) for line in lines}
    assert set(stops) == {"[p0]", "[p1]"} and len(set(stops.values())) == 1, out[-3000:]
    step = stops["[p0]"]
    assert _steps(tmp_path / "cut")[-1] == step  # both saved there, once
    assert "stopping the others" not in err  # nobody was killed: both left on their own

    # Resume to one epoch past the stop; an uninterrupted run of that length must agree bit for
    # bit (a constant learning rate: the run's length does not change its steps).
    epochs = step // 10 + 1
    resumed = _launch(tmp_path, "train", "--resume", "cut", "--set", f"train.epochs={epochs}")
    out, err = _finish(resumed, 600)
    assert resumed.returncode == 0, out[-3000:] + err[-3000:]
    assert f"continuing from checkpoint step {step} " in out
    straight = _launch(tmp_path, "train", "mp.yaml", "--workdir", "straight", "--set", f"train.epochs={epochs}")
    out, err = _finish(straight, 600)
    assert straight.returncode == 0, out[-3000:] + err[-3000:]
    a, meta_a = load_named_params(tmp_path / "cut")
    b, meta_b = load_named_params(tmp_path / "straight")
    assert meta_a["step"] == meta_b["step"] == 10 * epochs and a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
