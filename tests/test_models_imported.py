"""A model from the user's own module (`model.name: "module:factory"`), from the command line:
it trains, evaluates, predicts and resumes from another working directory, and every way
of getting it wrong is one line naming model.name."""

import csv
import json

import numpy as np
import pytest
import yaml
from sklearn.datasets import load_digits

from jaxtrain.cli.main import main
from jaxtrain.runs.api import load_trained

MODULE = '''
import jax
from flax import nnx


class Softmax(nnx.Module):
    """Linear logits over the flattened image, optionally with a hidden layer."""

    def __init__(self, input_shape, out_features, *, rngs, hidden=0):
        size = 1
        for d in input_shape:
            size *= d
        self.hidden = nnx.Linear(size, hidden, rngs=rngs) if hidden else None
        self.out = nnx.Linear(hidden or size, out_features, rngs=rngs)

    def __call__(self, x):
        assert x.ndim == 3, x.shape          # batches arrive in input_shape, not flattened
        x = x.reshape(x.shape[0], -1)
        if self.hidden is not None:
            x = jax.nn.relu(self.hidden(x))
        return self.out(x)


def make(input_shape, out_features, *, rngs, hidden=0):
    assert tuple(input_shape) == (8, 8), input_shape
    return Softmax(input_shape, out_features, rngs=rngs, hidden=hidden)


def raises(input_shape, out_features, *, rngs):
    raise ValueError("no such layer")


def wrong_shape(input_shape, out_features, *, rngs):
    return nnx.Linear(input_shape[-1], out_features, rngs=rngs)   # (B, 8, 10), not (B, 10)
'''

COMMON = ["--set", "train.steps_per_call=epoch", "--set", "parallel.data_axis_size=1",
          "--set", "logging.progress=none"]


def _train(workdir, *extra):
    return main(["train", "--workdir", str(workdir), *COMMON, *extra])


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """The user's project: their module in the working directory (a name unique to this test file)."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "user_nets_cli.py").write_text(MODULE)
    monkeypatch.chdir(project)
    return project


def test_user_model_trains_evaluates_predicts_and_resumes(user_dir, tmp_path, monkeypatch, capsys):
    run, longer = tmp_path / "run", tmp_path / "longer"
    assert _train(run, "--set", "model.name=user_nets_cli:make", "--set", "train.epochs=1") == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())["model"]
    assert saved["name"] == "user_nets_cli:make" and saved["import_root"] == str(user_dir)
    assert set(saved) == {"name", "kwargs", "import_root", "init_from"}  # no hidden_sizes it never read
    assert _train(longer, "--set", "model.name=user_nets_cli:make", "--set", "train.epochs=2") == 0

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)                 # eval, predict, resume find the module by import_root
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    evaluated = json.loads(capsys.readouterr().out)["test"]
    summary = json.loads((run / "summary.json").read_text())
    assert evaluated["accuracy"] == summary["test"]["accuracy"]
    np.testing.assert_allclose(evaluated["loss"], summary["test"]["loss"], rtol=1e-6)

    # predict against NumPy: softmax of the saved linear layer over the normalized pixels.
    x = load_digits().data[:20].astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    assert main(["predict", str(run), "--input", str(tmp_path / "x.npz"),
                 "--output", str(tmp_path / "p.csv")]) == 0
    with open(tmp_path / "p.csv") as f:
        rows = list(csv.DictReader(f))
    got = np.array([[float(r[f"prob_{k}"]) for k in range(10)] for r in rows])
    trained = load_trained(run, with_data=False)
    norm = trained.stats.normalize
    z = (x - np.asarray(norm.shift)) / np.asarray(norm.scale)     # digits: 64 pixel columns
    kernel = np.asarray(trained.params["net"]["out"]["kernel"][...], np.float64)
    bias = np.asarray(trained.params["net"]["out"]["bias"][...], np.float64)
    logits = z @ kernel + bias
    want = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(got, want / want.sum(1, keepdims=True), atol=1e-5)

    # Resumed to 2 epochs = trained for 2 epochs straight.
    assert main(["train", "--resume", str(run), "--set", "train.epochs=2"]) == 0
    resumed = json.loads((run / "summary.json").read_text())["test"]
    straight = json.loads((longer / "summary.json").read_text())["test"]
    np.testing.assert_allclose(resumed["loss"], straight["loss"], rtol=1e-6)
    assert resumed["accuracy"] == straight["accuracy"]


def test_kwargs_reach_the_factory_and_fine_tuning_rebuilds_the_model(user_dir, tmp_path):
    base, tuned = tmp_path / "base", tmp_path / "tuned"
    args = ["--set", "model.name=user_nets_cli:make", "--set", "model.kwargs={hidden: 7}"]
    assert _train(base, *args, "--set", "train.epochs=1") == 0
    assert load_trained(base, with_data=False).params["net"]["hidden"]["kernel"][...].shape == (64, 7)
    assert _train(tuned, *args, "--set", "train.epochs=1", "--set", f"model.init_from={base}") == 0
    events = [json.loads(line) for line in (tuned / "metrics.jsonl").read_text().splitlines()]
    loaded = next(e for e in events if e["event"] == "init_from")["loaded"]
    assert sorted(loaded) == ["net.hidden.bias", "net.hidden.kernel", "net.out.bias", "net.out.kernel"]


@pytest.mark.parametrize("name, expected", [
    ("no_such_module_xyz:make", "module 'no_such_module_xyz' not found"),
    ("user_nets_cli:missing", "has no callable 'missing'"),
    ("user_nets_cli:raises", "the factory raised ValueError: no such layer"),
    ("user_nets_cli:wrong_shape", "it must return (batch, 10)"),
])
def test_a_broken_user_model_is_one_line_naming_model_name(user_dir, tmp_path, capsys, name, expected):
    capsys.readouterr()
    assert _train(tmp_path / "run", "--set", f"model.name={name}") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model.name" in err and name in err and expected in err, err
    assert not (tmp_path / "run").exists()


def test_kwargs_need_an_imported_model(capsys, tmp_path):
    assert _train(tmp_path / "run", "--set", "model.kwargs={hidden: 3}") == 2
    assert "model.kwargs" in capsys.readouterr().err


def test_an_imported_model_vectorizes_and_each_point_names_its_import_root(user_dir, tmp_path, capsys):
    """A vectorized sweep of an imported model trains its points in one program, and each
    point's config.yaml says where the module was found, as a separate run's does (so eval,
    predict and --resume of a point work from any directory)."""
    from jaxtrain.runs.sweep import run_sweep
    from jaxtrain.runs.vsweep import why_not_vectorized
    from jaxtrain.config.schema import load_config
    (user_dir / "user_nets_vsweep.py").write_text(MODULE)  # a module no other test has imported
    cfg = {"model": {"name": "user_nets_vsweep:make"}, "train": {"epochs": 1, "steps_per_call": "epoch"},
           "checkpoint": {"enabled": False}, "parallel": {"data_axis_size": 1}, "logging": {"progress": "plain"}}
    assert why_not_vectorized(load_config(cfg)) is None
    rows = run_sweep(cfg, ["optimizer.learning_rate=0.1,0.01"], workdir=tmp_path / "sweep", vectorized=True)
    assert "sweep: 2 points in one vectorized program" in capsys.readouterr().out
    assert len(rows) == 2
    for row in rows:
        saved = yaml.safe_load((tmp_path / "sweep" / row["point"] / "config.yaml").read_text())["model"]
        assert saved["name"] == "user_nets_vsweep:make" and saved["import_root"] == str(user_dir)
