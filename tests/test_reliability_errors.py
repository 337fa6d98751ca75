"""Every user error exits 2 with one line; unusable work directories are caught up front."""

import errno
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from jaxtrain.cli import main as cli
from jaxtrain.util.errors import ConfigError, UserError

FAST = ["--set", "train.epochs=1", "--set", "parallel.data_axis_size=1", "--set", "logging.progress=none"]


def _train(tmp_path, *args, debug=False):
    argv = (["--debug"] if debug else []) + ["train", *FAST, *args, "--workdir", str(tmp_path / "run")]
    return cli.main(argv)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jaxtrain: error: ") and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.parametrize("overrides,expected", [
    (["optimizer.learning_rate=-0.1"], "optimizer.learning_rate': must be a positive number"),
    (["optimizer.learning_rate=.nan"], "optimizer.learning_rate"),
    (["data.batch_size=-4"], "data.batch_size': must be >= 1"),
    (["model.hidden_sizes=[32, 0]"], "every layer needs a positive width"),
    (["train.seed=-3"], "train.seed': must be >= 0"),
    (["optimizer.b2=1.5"], "optimizer.b1/b2"),
    (["train.epochs=0"], "train.epochs': must be >= 1"),
    (["data.val_fraction=0", "train.early_stopping={metric: val.loss}"], "needs a validation split"),
    (["data.val_fraction=0", "checkpoint.best_metric=val.accuracy"], "needs a validation split"),
    (["train.early_stopping={metric: loss}"], "must look like val.<metric>"),
    (["optimizer.momentum=0.9"], "applies to sgd only"),
    (["optimizer.weight_decay=0.01"], "applies to adamw only"),
    (["optimizer.name=sgd", "optimizer.nesterov=true"], "needs optimizer.name=sgd with optimizer.momentum > 0"),
    (["model.name=linear", "model.dropout=0.5"], "the linear model has no hidden layer"),
    (["data.task=regression", "data.num_classes=3"], "num_classes is for classification"),
    (["data.prefetch=-3"], "data.prefetch': must be >= 0"),
    (["train.augment.image_shape=[0, 4]"], "every dimension must be >= 1"),
    (["trian.epochs=3"], "unknown config key 'trian'"),
    (["data.source=csv"], "data.source=csv needs data.path"),
    (["data.source=npz", "data.path=/nonexistent/x.npz"], "not found"),
])
def test_config_errors_exit_2_with_one_line(tmp_path, capsys, overrides, expected):
    args = [a for o in overrides for a in ("--set", o)]
    assert _train(tmp_path, *args) == 2
    assert expected in _one_line_error(capsys)


def test_metric_that_the_task_does_not_report(tmp_path, capsys):
    """Needs the data: house prices are a regression, so there is no accuracy to stop on."""
    assert _train(tmp_path, "house_prices_linear", "--set", "train.early_stopping={metric: val.accuracy}") == 2
    assert "'val.accuracy' is not reported for regression; use one of val.loss, val.mse" in _one_line_error(capsys)


def test_yaml_floats_without_a_dot_are_numbers(tmp_path):
    """YAML 1.1 reads `1e-3` as a string; the config accepts it as the number it means."""
    from jaxtrain import load_config
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("optimizer:\n  learning_rate: 1e-3\n")
    assert load_config(cfg_file).optimizer.learning_rate == 0.001


def test_a_batch_that_cannot_fit_is_caught_before_training(tmp_path, capsys):
    assert _train(tmp_path, "--set", "data.batch_size=4000000000") == 2
    line = _one_line_error(capsys)
    assert "the run needs about" in line and "of host memory is available; lower data.batch_size" in line
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_memory_estimate_against_available(tmp_path):
    from jaxtrain import load_config
    from jaxtrain.engine.memory import check_fits
    cfg = load_config(None, ["data.batch_size=100", "model.hidden_sizes=[10]"])
    params = {"w": np.zeros((64, 10)), "b": np.zeros(10), "head": np.zeros((10, 10))}
    parts = check_fits(cfg, params, (64,), 10, num_devices=1, per_device_batch=100, steps_per_call=1, streaming=False,
                       available=(10**9, "test memory"))
    n = 64 * 10 + 10 + 100
    assert parts["parameters"] == 4 * n * 4 and parts["optimizer_state"] == 2 * n * 4  # adam: mu, nu
    assert parts["activations"] == 100 * 3 * (64 + 10 + 10) * 4
    with pytest.raises(UserError, match=r"needs about .* but only 1000 B of test memory is available"):
        check_fits(cfg, params, (64,), 10, num_devices=1, per_device_batch=100, steps_per_call=1, streaming=False,
                   available=(1000, "test memory"))


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ConfigError):
        _train(tmp_path, "--set", "optimizer.learning_rate=-1", debug=True)


def test_pickle_bearing_npz_is_rejected(tmp_path, capsys):
    path = tmp_path / "evil.npz"
    np.savez(path, x=np.array([{"a": 1}] * 20, dtype=object), y=np.zeros(20))
    assert _train(tmp_path, "--set", "data.source=npz", "--set", f"data.path={path}") == 2
    assert "cannot read as .npz" in _one_line_error(capsys)


def test_no_eval_exec_or_pickle_in_the_package():
    """Configs are data and checkpoints are arrays: nothing in jaxtrain runs or unpickles input."""
    import jaxtrain
    root = os.path.dirname(jaxtrain.__file__)
    bad = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                text = open(os.path.join(dirpath, name)).read()
                for needle in (" eval(", "exec(", "import pickle", "allow_pickle=True", "yaml.load(",
                               "yaml.unsafe_load", "yaml.full_load"):
                    if needle in text:
                        bad.append(f"{name}: {needle}")
    assert bad == []


# ---------------------------------------------------------------- work directories


def test_workdir_that_cannot_be_created(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert cli.main(["train", *FAST, "--workdir", str(blocker / "run")]) == 2
    assert "is not writable" in _one_line_error(capsys)


def test_full_disk_is_caught_before_training(tmp_path, capsys, monkeypatch):
    import jaxtrain.util.workdir
    monkeypatch.setattr(jaxtrain.util.workdir.shutil, "disk_usage",
                        lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    assert _train(tmp_path) == 2
    line = _one_line_error(capsys)
    assert "has 1000 B free but the run needs about" in line and "for checkpoints" in line
    assert not (tmp_path / "run" / "summary.json").exists()


def test_disk_full_at_the_first_save(tmp_path, capsys, monkeypatch):
    from jaxtrain.ckpt.checkpoint import Checkpointer

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Checkpointer, "save", full)
    assert _train(tmp_path) == 2
    assert "the disk is full" in _one_line_error(capsys)
    assert not (tmp_path / "run" / "summary.json").exists()  # never success without the checkpoint


def test_lock_held_by_a_live_process_then_released_by_its_death(tmp_path):
    from jaxtrain.util.workdir import WorkdirLock
    code = ("import sys, time; from jaxtrain.util.workdir import WorkdirLock; "
            "WorkdirLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=rf"in use by a live run \(pid={holder.pid} host="):
            WorkdirLock(tmp_path).acquire()
    finally:
        holder.kill()  # SIGKILL: the holder cannot clean up; the kernel drops its flock
        holder.wait()
    assert (tmp_path / ".lock").read_text().startswith(f"pid={holder.pid}")  # stale file left behind
    with WorkdirLock(tmp_path):
        assert (tmp_path / ".lock").read_text().startswith(f"pid={os.getpid()}")


def test_resume_with_a_model_that_does_not_match_its_checkpoint(tmp_path, capsys):
    assert _train(tmp_path, "--set", "model.hidden_sizes=[16]") == 0
    config_before = (tmp_path / "run" / "config.yaml").read_text()
    capsys.readouterr()
    for change, expected in ((["model.hidden_sizes=[7]"], "parameter 'head.kernel' is (16, 10) there but "
                                                           "the model has (7, 10)"),
                             (["optimizer.name=sgd"], "optimizer state does not fit")):
        argv = ["train", "--resume", str(tmp_path / "run"), "--set", "train.epochs=2"]
        assert cli.main(argv + [a for c in change for a in ("--set", c)]) == 2
        assert expected in _one_line_error(capsys)
    # A failed resume leaves the run as it was: still resumable with its own config.
    assert (tmp_path / "run" / "config.yaml").read_text() == config_before


def test_skip_step_count_is_in_the_summary(tmp_path):
    """A diverging learning rate under skip_step: the run completes and says how many steps it skipped."""
    from jaxtrain import train
    summary = train("house_prices_linear", workdir=tmp_path / "run", overrides={
        "optimizer.name": "sgd", "optimizer.learning_rate": 1000.0, "train.on_nonfinite": "skip_step",
        "train.epochs": 2, "logging.progress": "none", "parallel.data_axis_size": 1})
    assert summary["status"] == "completed" and summary["nonfinite_skipped_steps"] > 0
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    per_epoch = [r.get("nonfinite_steps", 0) for r in records if r["event"] == "train"]
    assert summary["nonfinite_skipped_steps"] == sum(per_epoch)
