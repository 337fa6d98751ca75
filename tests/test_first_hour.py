"""A new user's first hour (issue 16): the messages and commands a README walkthrough hit."""

import json
import re
import sys
import threading

import numpy as np
import pytest
from flax import nnx

import jaxtrain
from jaxtrain.ckpt.params import load_named_params
from jaxtrain.cli.main import main
from jaxtrain.runs.predict import predict
from jaxtrain.runs.report import write_report
from jaxtrain.runs.sweep import write_results
from run_files import read_results
from jaxtrain.util.errors import UserError
from jaxtrain.util.events import Console

FAST = {"train.epochs": 2, "parallel.data_axis_size": 1}


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


class Net(nnx.Module):
    """A model the config cannot describe: its parameters are named hidden/out, not layers/head."""

    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(64, 16, rngs=rngs)
        self.out = nnx.Linear(16, 10, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.hidden(x)))


@pytest.fixture(scope="module")
def python_model_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("pymodel") / "run"
    summary = jaxtrain.train("digits_mlp", workdir=run, model=Net(nnx.Rngs(0)), console=Console("none"),
                             overrides=FAST)
    return run, summary


def test_a_run_trained_with_a_python_model_is_evaluated_with_a_new_instance_of_it(python_model_run):
    run, summary = python_model_run
    again = jaxtrain.evaluate(run, model=Net(nnx.Rngs(7)))  # other initial values: the checkpoint's count
    assert again["accuracy"] == summary["test"]["accuracy"]
    assert again["loss"] == pytest.approx(summary["test"]["loss"], rel=1e-6)
    with pytest.raises(UserError, match="trained with a Python model .*Net"):
        jaxtrain.evaluate(run)


def test_predict_and_report_take_the_python_model(python_model_run, tmp_path):
    run, _ = python_model_run
    x = np.random.default_rng(0).uniform(0, 16, (5, 64))
    np.savez(tmp_path / "new.npz", x=x)
    header, rows = predict(run, tmp_path / "new.npz", model=Net(nnx.Rngs(1)))
    assert header == ["row", "predicted", *[f"prob_{c}" for c in range(10)]] and len(rows) == 5
    # NumPy: the run's normalizer and checkpoint, through Net's two layers, then a softmax
    params, _ = load_named_params(run)
    norm = json.loads((run / "stats.json").read_text())["normalize"]
    z = (x - np.asarray(norm["shift"])) / np.asarray(norm["scale"])
    hidden = np.maximum(z @ params["hidden.kernel"] + params["hidden.bias"], 0.0)
    logits = hidden @ params["out.kernel"] + params["out.bias"]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    assert [r[0] for r in rows] == list(range(5))
    assert [r[1] for r in rows] == [str(c) for c in probs.argmax(1)]
    np.testing.assert_allclose(np.array([r[2:] for r in rows], float), probs, rtol=1e-4, atol=1e-6)
    written = write_report(run, model=Net(nnx.Rngs(1)))
    assert run / "confusion_matrix.png" in written and written[-1] == run / "report.md"


def test_the_cli_says_in_one_line_that_the_run_needs_its_model(python_model_run, capsys):
    run, _ = python_model_run
    assert main(["eval", str(run)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "trained with a Python model" in line and "model=" in line


def test_the_python_api_is_silent_at_verbose_0_and_names_python_arguments(tmp_path, capfd):
    run = tmp_path / "run"
    summary = jaxtrain.train("digits_mlp", workdir=run, verbose=0, overrides=FAST)
    assert jaxtrain.evaluate(run, verbose=0)["accuracy"] == summary["test"]["accuracy"]
    out, err = capfd.readouterr()
    assert out == "" and "Traceback" not in err
    with pytest.raises(UserError) as raised:  # a second run into the same directory
        jaxtrain.train("digits_mlp", workdir=run, verbose=0, overrides=FAST)
    message = str(raised.value)
    assert "workdir=" in message and "jaxtrain.resume(" in message and "--" not in message
    with pytest.raises(UserError) as raised:
        jaxtrain.evaluate(run, split="nope", verbose=0)
    assert "split='test'" in str(raised.value) and "--split" not in str(raised.value)
    # the command line says the same in flags
    assert main(["train", "digits_mlp", "--workdir", str(run)]) == 2
    line = _one_line(capfd.readouterr().err)
    assert "pass a new --workdir (or resume it with --resume)" in line


def test_verbose_1_prints_epoch_lines_and_2_progress_too(tmp_path, capsys, monkeypatch):
    import time
    from jaxtrain.engine.engine import Engine
    calls = Engine._call
    monkeypatch.setattr(Engine, "_call", lambda self, *args: (time.sleep(0.3), calls(self, *args))[1])
    # the console train() builds: plain lines, a progress line after 0.05 s of quiet
    monkeypatch.setattr(Console.__init__, "__defaults__", ("plain", None, 0.05, time.monotonic, 2))
    outs = {}
    for verbose in (1, 2):
        jaxtrain.train("digits_mlp", workdir=tmp_path / f"v{verbose}", verbose=verbose,
                       overrides={**FAST, "train.steps_per_call": 4})
        outs[verbose] = capsys.readouterr().out
    for out in outs.values():
        assert "epoch 1/2 loss=" in out and "epoch 2/2 loss=" in out and "\ntest " in out
    progress = re.compile(r"^epoch \d: \d+/\d+ steps", re.M)
    assert progress.search(outs[2]) and not progress.search(outs[1])
    with pytest.raises(UserError, match="verbose=3: pass 0"):
        jaxtrain.train("digits_mlp", workdir=tmp_path / "other", verbose=3)


def test_an_error_names_its_arguments_in_each_front_ends_terms():
    from jaxtrain.data.tfhelp import IDX_INSTEAD
    from jaxtrain.util.errors import Arg, UserError, either
    error = UserError("pass ", Arg("overrides", {"train.epochs": "N"}), " with N > 3, or ",
                      Arg("overrides", {"data.path": "x.csv"}))
    assert str(error) == "pass overrides={'train.epochs': N} with N > 3, or overrides={'data.path': 'x.csv'}"
    assert error.cli == "pass --set train.epochs=N with N > 3, or --set data.path=x.csv"
    wrapped = UserError(*error.parts, "; or ", *IDX_INSTEAD)  # wrapping keeps the arguments
    assert wrapped.cli.endswith("; or read its four IDX files instead with --set data.source=idx --set data.path=DIR")
    assert str(wrapped).endswith("read its four IDX files instead with overrides={'data.source': 'idx', "
                                 "'data.path': DIR}")
    choice = UserError("pass ", *either(Arg("split", s) for s in ("test", "val")), "; drop ", Arg("config"))
    assert (choice.cli, str(choice)) == ("pass --split test or --split val; drop the CONFIG argument",
                                         "pass split='test' or split='val'; drop the config argument")


@pytest.fixture(scope="module")
def digits_run_without_val(tmp_path_factory):
    run = tmp_path_factory.mktemp("noval") / "run"
    jaxtrain.train("digits_mlp", workdir=run, console=Console("none"), overrides={**FAST, "data.val_fraction": 0.0})
    return run


def test_eval_of_a_missing_split_lists_only_the_runs_splits(digits_run_without_val, capsys):
    assert main(["eval", str(digits_run_without_val), "--split", "val"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "split 'val' is not available" in line and "it has test, train" in line
    assert "val or" not in line and "or --split val" not in line


def test_predict_with_a_csv_on_an_image_run_says_image_runs_take_idx_or_npz(tmp_path, capsys):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 120)
    x = rng.integers(0, 255, (120, 8, 8)).astype(np.uint8)
    np.savez(tmp_path / "images.npz", x_train=x[:100], y_train=y[:100], x_test=x[100:], y_test=y[100:])
    run = tmp_path / "run"
    jaxtrain.train({"data": {"source": "npz", "path": str(tmp_path / "images.npz"), "val_fraction": 0.0}},
                   workdir=run, console=Console("none"), overrides=FAST)
    (tmp_path / "new.csv").write_text("a,b\n1,2\n")
    assert main(["predict", str(run), "--input", str(tmp_path / "new.csv")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "image runs take an IDX images file, an .npz" in line and "not a CSV" in line


def test_report_without_checkpoints_draws_the_curves_and_prints_what_it_wrote(tmp_path, capsys):
    run = tmp_path / "run"
    jaxtrain.train("digits_mlp", workdir=run, console=Console("none"),
                   overrides={**FAST, "checkpoint.enabled": False})
    assert not (run / "checkpoints").exists()
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {run / 'curves.png'}" in out and f"wrote {run / 'report.md'}" in out
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (run / "confusion_matrix.png").exists()
    assert "No checkpoint was kept" in (run / "report.md").read_text()


def test_training_ends_with_the_run_directory_and_next_steps(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--workdir", str(run), "--set", "train.epochs=1", "--set", "logging.progress=plain",
                 "--set", "parallel.data_axis_size=1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert f"run saved in {run}; next: jaxtrain report {run}, jaxtrain eval {run}, " \
           f"jaxtrain predict {run} --input FILE" in lines


def test_offline_mnist_names_the_idx_source(tmp_path, capsys):
    """tfds has nothing prepared in an empty data_dir: the message gives both ways to get MNIST."""
    code = main(["train", "mnist_mlp", "--workdir", str(tmp_path / "run"), "--set", f"data.data_dir={tmp_path}"])
    assert code == 2
    line = _one_line(capsys.readouterr().err)
    assert "data.source=idx" in line and "data.path=DIR" in line and "tfds build mnist" in line


def test_without_tensorflow_mnist_names_the_idx_source_too(tmp_path, capsys, monkeypatch):
    """The lean install has no TensorFlow: the first error an mnist_mlp user meets names both
    the tf extra and the IDX files, which need no TensorFlow."""
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # import tensorflow now fails
    code = main(["train", "mnist_mlp", "--workdir", str(tmp_path / "run")])
    assert code == 2
    line = _one_line(capsys.readouterr().err)
    assert "jaxtrain[tf]" in line and "data.source=idx" in line and "data.path=DIR" in line
    assert not (tmp_path / "run").exists()


def test_sweeps_choose_on_the_validation_metric_not_the_test_one(tmp_path):
    rows = [{"point": "a", "val.accuracy": 0.90, "val.loss": 0.3, "test.accuracy": 0.50, "train.loss": 0.1},
            {"point": "b", "val.accuracy": 0.80, "val.loss": 0.4, "test.accuracy": 0.99, "train.loss": 0.2}]
    table, best, metric = write_results(tmp_path, rows, [], "classification")
    assert (best, metric) == ("a", "val.accuracy")
    md = (tmp_path / "results.md").read_text()
    assert "Best: **a**" in md and "a validation metric" in md
    assert any(line.startswith("| **a**") for line in table)
    # Without a validation split: the training loss, never the test accuracy.
    no_val = [{k: v for k, v in r.items() if not k.startswith("val.")} for r in rows]
    assert write_results(tmp_path, no_val, [], "classification")[1:] == ("a", "train.loss")
    assert "no validation split" in (tmp_path / "results.md").read_text()


def test_sweep_prints_the_results_table_and_the_chosen_point(tmp_path, capsys):
    assert main(["sweep", "--grid", "optimizer.learning_rate=0.01,0.000001", "--workdir", str(tmp_path / "s"),
                 "--set", "train.epochs=2", "--set", "parallel.data_axis_size=1",
                 "--set", "logging.progress=plain", "--set", "checkpoint.enabled=false"]) == 0
    out = capsys.readouterr().out
    rows = {r["point"]: float(r["val.accuracy"]) for r in read_results(tmp_path / "s")}
    chosen = max(rows, key=rows.get)
    assert "| point | optimizer.learning_rate |" in out
    assert f"sweep: best point by val.accuracy: {chosen}" in out


def test_resume_with_no_epochs_left_says_so(tmp_path, capsys):
    run = tmp_path / "run"
    sets = ["--set", "train.epochs=1", "--set", "parallel.data_axis_size=1", "--set", "logging.progress=plain"]
    assert main(["train", "--workdir", str(run), *sets]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--set", "logging.progress=plain"]) == 0
    out = capsys.readouterr().out
    assert "all 1 epochs (train.epochs) are already trained: nothing left to train, only evaluating" in out


PHASES = {"input_wait": 0.0, "h2d_transfer": 0.0, "dispatch": 0.1, "device_compute": 0.5,
          "metric_transfer": 0.0, "checkpointing": 0.0, "evaluation": 0.0}


def test_checkpoint_and_evaluation_bound_runs_get_their_own_verdicts():
    from jaxtrain.training.hooks.profiling import profile_table
    saving = profile_table({**PHASES, "checkpointing": 1.5}, wall=2.1, steps=100, k=10)
    assert saving["verdict"] == "checkpoint-bound" and "checkpoint.async_save" in saving["advice"]
    evaluating = profile_table({**PHASES, "evaluation": 1.5}, wall=2.1, steps=100, k=10)
    assert evaluating["verdict"] == "eval-bound" and "train.eval_every_epochs" in evaluating["advice"]
    assert evaluating["ms_per_step"]["evaluation"] == pytest.approx(15.0)


@pytest.mark.parametrize("precision, platform, speedup, advised", [
    ("float32", "cpu", 0.36, False),   # AVX2: bf16 matmuls measured slower than fp32
    ("float32", "cpu", 1.8, True),     # a CPU with bf16 dot instructions
    ("bfloat16", "cpu", 1.8, False),   # already on
    ("float32", "gpu", None, True),    # known to pay: not measured
])
def test_bf16_is_advised_only_where_it_pays(precision, platform, speedup, advised):
    from jaxtrain.training.hooks.profiling import Bf16Advice, profile_table

    def measure():
        assert speedup is not None, "GPU and TPU are not measured"
        return speedup
    report = profile_table(PHASES, wall=0.6, steps=100, k=10, bf16=Bf16Advice(precision, platform, measure))
    assert report["verdict"] == "compute-bound"
    assert ("bfloat16" in report["advice"]) == advised, report["advice"]


def test_a_profile_window_is_labelled_as_such(tmp_path, capsys):
    assert main(["profile", "--steps", "8", "--set", "parallel.data_axis_size=1", "--set", "train.steps_per_call=4",
                 "--set", "logging.progress=plain", "--workdir", str(tmp_path / "prof")]) == 0
    out = capsys.readouterr().out
    assert "profile window of 8 steps (8 of 40 steps of epoch 1/30) loss=" in out
    assert "epoch 1/30 loss" not in out


def test_rates_read_at_a_glance():
    from jaxtrain.util.events import duration, format_metrics
    assert format_metrics({"loss": 0.25, "examples_per_sec": 154123.0}) == "loss=0.25 examples_per_sec=154k"
    assert format_metrics({"examples_per_sec": 1.2e6}) == "examples_per_sec=1.2M"
    assert (duration(45), duration(185), duration(7800)) == ("45s", "3m05s", "2h10m")


def test_without_a_terminal_progress_prints_a_line_with_an_eta_every_few_seconds():
    import io
    now = [0.0]
    out = io.StringIO()
    console = Console("plain", stream=out, plain_every_s=10.0, clock=lambda: now[0])
    for step in range(1, 100):
        now[0] = step * 0.5
        console.progress("epoch 1", step, 100, rate=154000.0, eta_s=(100 - step) * 0.5)
    lines = out.getvalue().splitlines()
    assert len(lines) == 4  # at 10, 20, 30 and 40 s
    assert lines[0] == "epoch 1: 20/100 steps 154k ex/s ETA 40s"


def test_a_rising_validation_loss_warns_and_names_early_stopping():
    from jaxtrain.training.loop import overfitting_warning
    from jaxtrain.training.record import EpochRecord
    history = [EpochRecord(epoch=e + 1, val={"loss": v}) for e, v in enumerate([0.3, 0.167, 0.17, 0.18, 0.196])]
    warning = overfitting_warning(history)
    assert "risen 3 evaluations in a row (0.167 -> 0.196; best 0.167 at epoch 2)" in warning
    assert "train.early_stopping" in warning
    assert overfitting_warning(history[:4]) is None  # risen twice only
    history[3].val["loss"] = 0.165  # a dip: not three rises in a row
    assert overfitting_warning(history) is None


def test_every_python_name_the_readme_uses_exists():
    """The README's `jaxtrain.X(...)` calls and `from jaxtrain... import X` lines resolve
    after `import jaxtrain` (a README once named `jaxtrain.sweep.run_sweep`, which did not)."""
    import importlib
    import pathlib
    import re

    import jaxtrain
    text = re.sub(r"`?\s*\n\s*`?", " ", (pathlib.Path(__file__).parents[1] / "README.md").read_text())
    calls = set(re.findall(r"\bjaxtrain\.(\w+)\(", text))
    imports = set(re.findall(r"from (jaxtrain[\w.]*) import (\w+)", text))
    assert calls and imports, "the README's Python examples moved: update this test"
    missing = [f"jaxtrain.{name}" for name in sorted(calls) if not hasattr(jaxtrain, name)]
    missing += [f"{module}.{name}" for module, name in sorted(imports)
                if not hasattr(importlib.import_module(module), name)]
    assert not missing, missing


class _FakeTime:
    """Fake seconds shared by a slow call (which advances them) and a Heartbeat thread (which
    sleeps on them): `advance` returns only once the heartbeat has acted on the new time
    and sleeps again, so what it printed at each fake second is deterministic."""

    def __init__(self):
        self.now, self.deadline, self.stopped = 0.0, None, False
        self.cond = threading.Condition()

    def clock(self) -> float:
        return self.now

    def wait(self, seconds: float) -> bool:  # the heartbeat's sleep
        with self.cond:
            self.deadline = self.now + seconds
            self.cond.notify_all()
            assert self.cond.wait_for(lambda: self.now >= self.deadline or self.stopped, timeout=60)
            self.deadline = None
            return self.stopped

    def advance(self, seconds: float) -> None:  # the slow call's time passing
        with self.cond:
            self.now += seconds
            self.cond.notify_all()
            assert self.cond.wait_for(lambda: self.deadline is not None and self.deadline > self.now, timeout=60)

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()


def test_a_long_compiled_call_gets_a_progress_line_at_least_every_15_s_of_fake_time():
    import io
    from jaxtrain.util.heartbeat import Heartbeat
    fake, out = _FakeTime(), io.StringIO()
    stamped = []  # (fake second, line) as the lines appear
    out.write = lambda text, write=out.write: (stamped.append((fake.now, text)), write(text))[1]
    console = Console("plain", stream=out, plain_every_s=10.0, clock=fake.clock)
    beat = Heartbeat(console, clock=fake.clock, wait=fake.wait)
    with beat:
        console.line("epoch 1/3 loss=0.5")
        console.progress("epoch 2", 0, 600, rate=1000.0, eta_s=120.0)  # then one call: the whole epoch
        for _ in range(65):
            fake.advance(1.0)
        fake.stop()
    assert not beat._thread.is_alive()  # stopped with the run
    times = [t for t, text in stamped if text.strip()]
    assert times[0] == 0.0 and all(b - a <= 15.0 for a, b in zip(times, times[1:] + [65.0])), stamped
    beats = [text.rstrip("\n") for t, text in stamped if "elapsed" in text]  # a line and its end: one write
    assert len(beats) == 6  # at 10, 20, ..., 60 s of the 65 s call
    assert beats[0] == "epoch 2: 0/600 steps, 10s elapsed ETA 1m50s"  # the run's ETA, counted down
    assert beats[-1].startswith("epoch 2: 0/600 steps, 1m00s elapsed ETA 1m00s")


def test_training_with_one_call_per_epoch_prints_heartbeats_while_it_waits(tmp_path, monkeypatch):
    """The loop runs a Heartbeat: a slowed compiled call (real time, a short interval) gets lines."""
    import io
    import time as real_time
    from jaxtrain.engine.engine import Engine
    calls = Engine._call

    def slow_call(self, *args):
        real_time.sleep(0.5)
        return calls(self, *args)

    monkeypatch.setattr(Engine, "_call", slow_call)
    out = io.StringIO()
    jaxtrain.train("digits_mlp", workdir=tmp_path / "run", console=Console("plain", out, plain_every_s=0.1),
                   overrides={**FAST, "train.steps_per_call": "epoch"})
    beats = [line for line in out.getvalue().splitlines() if " elapsed" in line]
    assert any(line.startswith("epoch 1: 0/") for line in beats), out.getvalue()
    assert any(line.startswith("epoch 2: ") for line in beats), out.getvalue()


def test_the_progress_between_calls_shows_steps_rate_and_eta(tmp_path):
    """The progress hook shows each epoch's start and, after each call, the steps done with the
    rate and ETA the loop measured on the run's clock."""
    import io
    out = io.StringIO()
    jaxtrain.train("digits_mlp", workdir=tmp_path / "run", console=Console("plain", out, plain_every_s=0.0),
                   overrides={**FAST, "train.epochs": 2, "train.steps_per_call": 1})
    lines = out.getvalue().splitlines()
    assert any(line.startswith("epoch 2: 0/") for line in lines), lines
    between = [line for line in lines if line.startswith("epoch 2: ") and not line.startswith("epoch 2: 0/")
               and " elapsed" not in line]  # not the heartbeat's repeats
    assert between and all(" ex/s ETA " in line for line in between), lines
