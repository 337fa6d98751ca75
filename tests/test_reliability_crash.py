"""Crash safety: SIGKILL mid-save and resume, SIGTERM/SIGINT preemption, a busy work directory.

Subprocess runs share one uninterrupted reference run (module fixture); the long
version with 20+ random kills is `python tests/crash_trials.py --trials 20`.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import crash_trials as ct
from jaxtrain import train
from jaxtrain.ckpt.params import load_named_params
from jaxtrain.util.errors import Preempted
from jaxtrain.training.hooks.protocol import Hook


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return ct.reference_run(tmp_path_factory.mktemp("crash"))


def test_sigkill_during_a_save_then_resume_matches_the_uninterrupted_run(tmp_path, reference):
    results = ct.run_trials_with(reference, 1, tmp_path, seed=5, modes=["mid-save"])
    assert results[0]["kills"][0]["how"] == "mid-save", results
    assert results[0]["ok"], results[0]["problems"]


def _wait_for_checkpoint(proc, workdir, timeout=120):
    t0 = time.monotonic()
    while not ct.checkpoint_steps(workdir)[0]:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < timeout
        time.sleep(0.01)


# `jaxtrain train` as the CLI runs it, with one more hook that sends the process SIGTERM after
# its 3rd compiled call: the signal arrives while training is under way, however fast the machine.
SIGTERM_AFTER_3_CALLS = """
import os, signal, sys
import jaxtrain.runs.lanes as api
from jaxtrain.cli.main import entry
from jaxtrain.training.hooks.protocol import Hook
build = api.build_hooks
class Term(Hook):
    calls = 0
    def after_call(self, info):
        Term.calls += 1
        if Term.calls == 3:
            os.kill(os.getpid(), signal.SIGTERM)
api.build_hooks = lambda cfg, wd, **kw: [Term(), *build(cfg, wd, **kw)]
sys.argv[0] = "jaxtrain"
entry()
"""


def test_sigterm_saves_and_exits_then_resume_finishes_identically(tmp_path, reference):
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-c", SIGTERM_AFTER_3_CALLS, *ct.train_cmd(workdir)[3:]]
    proc = subprocess.run(cmd, env=ct.env(), capture_output=True, text=True, timeout=300)
    err = proc.stderr
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM at step" in err and "continue with --resume" in err
    assert not (workdir / "summary.json").exists()  # a preempted run reports no result
    step = int(err.split("at step ")[1].split(";")[0])
    assert step == 15  # 3 calls of 5 steps
    assert ct.checkpoint_steps(workdir)[0][-1] == step  # saved exactly where it stopped
    events = [json.loads(line)["event"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert events[-1] == "preempted"
    done = subprocess.run(ct.resume_cmd(workdir), env=ct.env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"continuing from checkpoint step {step} " in done.stdout
    params = ct.final_params(workdir)
    for name, ref in reference["params"].items():
        np.testing.assert_array_equal(params[name], ref, err_msg=name)
    assert json.loads((workdir / "summary.json").read_text())["test"] == reference["summary"]["test"]


def test_a_second_run_into_a_live_runs_directory_exits_2_and_a_killed_runs_lock_is_stale(tmp_path):
    from jaxtrain.util.workdir import WorkdirLock
    workdir = tmp_path / "run"
    live = subprocess.Popen(ct.train_cmd(workdir, ["train.epochs=100000"]), env=ct.env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_checkpoint(live, workdir)
        second = subprocess.run(ct.resume_cmd(workdir), env=ct.env(), capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 2, second.stderr
        assert f"is in use by a live run (pid={live.pid} host=" in second.stderr
    finally:
        live.kill()  # SIGKILL: the lock file stays behind, the flock goes with the process
        live.wait()
    assert (workdir / ".lock").read_text().startswith(f"pid={live.pid}")
    with WorkdirLock(workdir):
        pass


class SignalAfter(Hook):
    """Sends this process a signal after the given compiled call, as a scheduler would."""

    def __init__(self, signum, after_calls):
        self.signum, self.after_calls, self.calls = signum, after_calls, 0

    def after_call(self, info):
        self.calls += 1
        if self.calls == self.after_calls:
            os.kill(os.getpid(), self.signum)


@pytest.fixture
def known_handlers():
    """SIGINT and SIGTERM set to a recorder for the test, whatever pytest was started with (a
    background job starts with SIGINT ignored), and put back after it. A signal that jaxtrain
    failed to catch lands in the recorder instead of ending pytest."""
    missed = []

    def recorder(signum, frame):
        missed.append(signum)

    before = {s: signal.signal(s, recorder) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield recorder, missed
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def _with_hook(monkeypatch, hook):
    import jaxtrain.runs.lanes
    from jaxtrain.training.hooks import build_hooks
    monkeypatch.setattr(jaxtrain.runs.lanes, "build_hooks",
                        lambda cfg, wd, **kw: [hook, *build_hooks(cfg, wd, **kw)])


SIGNAL_RUN = {"train.epochs": 3, "train.steps_per_call": 4, "logging.progress": "none",
              "parallel.data_axis_size": 1, "data.batch_size": 64}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_in_process_stops_at_the_next_call_with_a_checkpoint(tmp_path, monkeypatch, known_handlers,
                                                                    signum):
    recorder, missed = known_handlers
    _with_hook(monkeypatch, SignalAfter(signum, 3))
    with pytest.raises(Preempted) as stopped:
        train(None, workdir=tmp_path / "a", overrides=SIGNAL_RUN)
    monkeypatch.undo()  # no more signals
    assert missed == []  # jaxtrain's handler took the signal
    assert stopped.value.signum == signum and stopped.value.step == 12  # 3 calls x 4 steps
    assert signal.getsignal(signum) is recorder  # handlers put back
    _, meta = load_named_params(tmp_path / "a")
    assert meta["step"] == 12 and not (tmp_path / "a" / "summary.json").exists()
    resumed = train(resume=tmp_path / "a", overrides={"logging.progress": "none"})
    clean = train(None, workdir=tmp_path / "b", overrides=SIGNAL_RUN)
    a, _ = load_named_params(tmp_path / "a")
    b, _ = load_named_params(tmp_path / "b")
    for name in b:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert resumed["test"] == clean["test"] and resumed["status"] == "completed"


class SeesHandler(SignalAfter):
    """SignalAfter that also records the SIGINT handler in place during training."""

    def after_call(self, info):
        self.seen = signal.getsignal(signal.SIGINT)
        super().after_call(info)


def test_a_run_started_with_sigint_ignored_keeps_ignoring_it(tmp_path, monkeypatch, known_handlers):
    """A background job of a non-interactive shell starts with SIGINT ignored: jaxtrain leaves it
    so, and the Ctrl-C that such a job must not see does not stop the run."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    hook = SeesHandler(signal.SIGINT, 3)
    _with_hook(monkeypatch, hook)
    summary = train(None, workdir=tmp_path, overrides=SIGNAL_RUN)
    assert hook.calls > 3 and hook.seen is signal.SIG_IGN
    assert summary["status"] == "completed" and summary["train"]["epochs"] == 3
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_nonfinite_stop_keeps_the_last_good_checkpoint_and_writes_no_summary(tmp_path):
    from jaxtrain.util.errors import NonFiniteError
    over = {"optimizer.name": "sgd", "optimizer.learning_rate": 1000.0, "checkpoint.every_steps": 2,
            "train.steps_per_call": 2, "logging.progress": "none", "parallel.data_axis_size": 1}
    with pytest.raises(NonFiniteError) as err:
        train("house_prices_linear", workdir=tmp_path, overrides=over)
    bad = int(str(err.value).split("at step ")[1].split(" ")[0])
    steps = ct.checkpoint_steps(tmp_path)[0]
    assert steps and max(steps) < bad  # nothing at or after the bad step was saved
    params, _ = load_named_params(tmp_path)
    assert all(np.isfinite(v).all() for v in params.values())
    assert not (tmp_path / "summary.json").exists()
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["event"] == "failed" and f"at step {bad}" in last["message"]


def test_signal_handlers_are_restored_when_training_fails(tmp_path):
    from jaxtrain.util.errors import NonFiniteError
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(NonFiniteError):
        train("house_prices_linear", workdir=tmp_path, overrides={
            "optimizer.name": "sgd", "optimizer.learning_rate": 1000.0, "logging.progress": "none",
            "parallel.data_axis_size": 1})
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
