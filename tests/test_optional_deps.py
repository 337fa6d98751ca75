"""`pip install .` brings what the default run needs; TensorFlow, tensorflow-datasets,
matplotlib and tensorboardX come with extras. A feature whose extra is missing exits 2 with
one line naming the `pip install 'jaxtrain[...]'` that brings it. A missing package is
simulated by `sys.modules[name] = None`, which makes `import name` fail."""

import json
import subprocess
import sys

import pytest

from jaxtrain.cli.main import main
from jaxtrain.config.data import DataConfig
from jaxtrain.data import load_dataset
from jaxtrain.util.errors import UserError

FAST = ["--set", "train.epochs=1", "--set", "checkpoint.enabled=false"]


def _one_line(err: str, *parts: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for part in parts:
        assert part in lines[0], err


@pytest.mark.parametrize("missing, kw, feature", [
    ("tensorflow", dict(source="builtin", name="iris", backend="tfdata"), "data.backend=tfdata"),
    ("tensorflow", dict(source="tfds", name="mnist"), "data.source=tfds"),
    ("tensorflow_datasets", dict(source="tfds", name="mnist"), "data.source=tfds"),
])
def test_tf_features_without_tf_name_the_extra(monkeypatch, missing, kw, feature):
    monkeypatch.setitem(sys.modules, missing, None)
    with pytest.raises(UserError) as e:
        load_dataset(DataConfig(**kw))
    _one_line(str(e.value), feature, missing, "pip install 'jaxtrain[tf]'")


def test_cli_tfdata_without_tf_exits_2_in_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    code = main(["train", "--set", "data.backend=tfdata", *FAST, "--workdir", str(tmp_path / "run")])
    assert code == 2
    _one_line(capsys.readouterr().err, "data.backend=tfdata", "pip install 'jaxtrain[tf]'")


def test_cli_report_without_matplotlib_exits_2_in_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["report", str(tmp_path)]) == 2
    _one_line(capsys.readouterr().err, "matplotlib", "pip install 'jaxtrain[report]'")


def test_cli_sweep_without_matplotlib_refuses_before_training(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code = main(["sweep", "--grid", "optimizer.learning_rate=0.1,0.01", *FAST, "--workdir", str(tmp_path / "s")])
    assert code == 2
    _one_line(capsys.readouterr().err, "matplotlib", "pip install 'jaxtrain[report]'")
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())


def test_cli_tensorboard_without_tensorboardx_exits_2_in_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    code = main(["train", "--set", "logging.tensorboard=true", *FAST, "--workdir", str(tmp_path / "run")])
    assert code == 2
    _one_line(capsys.readouterr().err, "tensorboardX", "pip install 'jaxtrain[tensorboard]'")


def test_image_folders_without_pillow_name_the_extra(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "PIL", None)
    (tmp_path / "imgs" / "cat").mkdir(parents=True)
    with pytest.raises(UserError) as e:
        load_dataset(DataConfig(source="images", path=str(tmp_path / "imgs")))
    _one_line(str(e.value), "data.source=images", "pip install 'jaxtrain[images]'")
    code = main(["train", "--set", "data.source=images", "--set", f"data.path={tmp_path / 'imgs'}", *FAST,
                 "--workdir", str(tmp_path / "run")])
    assert code == 2
    _one_line(capsys.readouterr().err, "data.source=images", "pip install 'jaxtrain[images]'")


BLOCK = "tensorflow tensorflow_datasets sklearn scipy matplotlib tensorboardX PIL".split()
RUN_BLOCKED = ("import sys\nfor m in {block!r}: sys.modules[m] = None\n"
               "from jaxtrain.cli.main import entry\nsys.argv = ['jaxtrain'] + {argv!r}\nentry()\n")


def test_default_run_needs_no_extra(tmp_path):
    """`jaxtrain train` with every extra's package (and scikit-learn) unimportable, in a fresh
    process, as after `pip install .`; and the tf.data backend there exits 2 in one line."""
    work = tmp_path / "run"
    argv = ["train", *FAST, "--workdir", str(work)]
    out = subprocess.run([sys.executable, "-c", RUN_BLOCKED.format(block=BLOCK, argv=argv)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads((work / "summary.json").read_text())["status"] == "completed"
    argv = ["train", "--set", "data.backend=tfdata", *FAST, "--workdir", str(tmp_path / "tf")]
    out = subprocess.run([sys.executable, "-c", RUN_BLOCKED.format(block=BLOCK, argv=argv)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 2
    _one_line(out.stderr, "data.backend=tfdata", "pip install 'jaxtrain[tf]'")
