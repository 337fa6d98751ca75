"""Config loading and the CLI's handling of a user's mistakes."""

import subprocess
import sys

import pytest
import yaml

from jaxtrain.cli.main import main
from jaxtrain.config.schema import dump_yaml, load_config
from jaxtrain.util.errors import ConfigError


def _run(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_unknown_key_lists_the_valid_keys(capsys, tmp_path):
    code, err = _run(capsys, "train", "--set", "optimizer.learnig_rate=0.1", "--workdir", str(tmp_path / "r"))
    assert code == 2
    assert "optimizer.learnig_rate" in err and "learning_rate" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "r").exists()  # nothing written for a rejected config
    # Unknown keys that YAML reads as numbers, beside text keys, are reported the same way.
    (tmp_path / "numeric.yaml").write_text("model:\n  1: 2\n  x: 3\n")
    code, err = _run(capsys, "train", str(tmp_path / "numeric.yaml"), "--workdir", str(tmp_path / "r"))
    assert code == 2 and "unknown config key 'model.1'" in err and "hidden_sizes" in err


@pytest.mark.parametrize("where,typo,meant", [
    ("set", "data.batch_sise=32", "data.batch_size"), ("set", "trian.epochs=3", "train"),
    ("yaml", "optimizer:\n  lerning_rate: 0.1\n", "optimizer.learning_rate"),
    ("yaml", "data:\n  clean:\n    duplicate: true\n", "data.clean.duplicates")])
def test_a_misspelled_key_or_section_gets_the_closest_valid_one(capsys, tmp_path, where, typo, meant):
    args = ["--set", typo] if where == "set" else [str(tmp_path / "typo.yaml")]
    (tmp_path / "typo.yaml").write_text(typo)
    code, err = _run(capsys, "train", *args, "--workdir", str(tmp_path / "r"))
    assert code == 2 and f"did you mean '{meant}'?" in err, err
    assert len(err.strip().splitlines()) == 1


def test_a_key_like_no_valid_one_gets_no_guess(capsys, tmp_path):
    code, err = _run(capsys, "train", "--set", "data.zzz=1", "--workdir", str(tmp_path / "r"))
    assert code == 2 and "unknown config key 'data.zzz'" in err and "did you mean" not in err


def test_wrong_type_names_the_key(capsys, tmp_path):
    code, err = _run(capsys, "train", "--set", "train.epochs=many", "--workdir", str(tmp_path / "r"))
    assert code == 2 and "train.epochs" in err and "many" in err


def test_out_of_range_value_names_the_key(capsys, tmp_path):
    code, err = _run(capsys, "train", "--set", "optimizer.learning_rate=-1", "--workdir", str(tmp_path / "r"))
    assert code == 2 and "optimizer.learning_rate" in err


def test_missing_config_file_is_named(capsys, tmp_path):
    missing = tmp_path / "nope.yaml"
    code, err = _run(capsys, "train", str(missing))
    assert code == 2 and str(missing) in err


def test_bad_yaml_names_file_and_line(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: [1,\n")
    code, err = _run(capsys, "train", str(bad))
    assert code == 2 and str(bad) in err and "line" in err


def test_subprocess_error_has_no_traceback_unless_debug(tmp_path):
    cmd = [sys.executable, "-m", "jaxtrain", "train", "--set", "model.nme=mlp"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr and "model.nme" in out.stderr
    out = subprocess.run(cmd[:3] + ["--debug"] + cmd[3:], capture_output=True, text=True, cwd=tmp_path)
    assert "Traceback" in out.stderr


def test_overrides_and_round_trip(tmp_path):
    cfg = load_config("digits_mlp", ["model.hidden_sizes=[32, 16]", "optimizer.name=sgd",
                                      "train.steps_per_call=4"])
    assert cfg.model.hidden_sizes == (32, 16) and cfg.optimizer.name == "sgd"
    assert cfg.train.steps_per_call == 4 and cfg.name == "digits_mlp"
    path = tmp_path / "c.yaml"
    path.write_text(dump_yaml(cfg))
    assert load_config(path) == cfg
    # config.yaml keeps only the model keys the model reads; they load back as they were
    for name, used in (("linear", set()), ("cnn", {"channels", "kernel_sizes", "batch_norm", "hidden_sizes"})):
        other = load_config(cfg, [f"model.name={name}"])
        saved = set(yaml.safe_load(dump_yaml(other))["model"]) - {"name", "import_root", "init_from"}
        assert saved - {"activation", "dropout"} == used
        path.write_text(dump_yaml(other))
        assert load_config(path).model.name == name


def test_dict_config_rejects_unknown_section():
    with pytest.raises(ConfigError, match="valid keys.*optimizer"):
        load_config({"optimiser": {}})


def test_shipped_configs_all_load():
    for name in ("digits_mlp", "house_prices_linear", "mnist_mlp"):
        assert load_config(name).name == name
    # the table recipe names no file of its own: it needs data.path (and data.target) to load
    with pytest.raises(ConfigError, match="data.path"):
        load_config("tabular")
    cfg = load_config("tabular", ["data.path=t.csv", "data.target=y"])
    assert (cfg.name, cfg.data.source, cfg.model.numeric_embedding) == ("tabular", "csv", "piecewise_linear")


def test_rejected_data_leaves_no_run_directory_so_a_retry_works(capsys, tmp_path):
    workdir = tmp_path / "run"
    missing = tmp_path / "nope.csv"
    code, err = _run(capsys, "train", "house_prices_linear", "--set", "data.source=csv",
                     "--set", f"data.path={missing}", "--set", "data.target=price", "--workdir", str(workdir))
    assert code == 2 and "nope.csv" in err
    assert not workdir.exists()  # nothing was trained, so nothing is kept to block the retry
    code, _ = _run(capsys, "train", "house_prices_linear", "--set", "train.epochs=1",
                   "--set", "logging.progress=none", "--workdir", str(workdir))
    assert code == 0 and (workdir / "summary.json").is_file()


def test_an_existing_directory_is_never_removed_on_rejection(capsys, tmp_path):
    workdir = tmp_path / "mine"
    workdir.mkdir()
    (workdir / "notes.txt").write_text("keep me")
    code, _ = _run(capsys, "train", "--set", "data.source=csv", "--set", f"data.path={tmp_path / 'x.csv'}",
                   "--set", "data.target=y", "--workdir", str(workdir))
    assert code == 2 and (workdir / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in workdir.iterdir()) == ["notes.txt"]  # only the run's own files went


def test_export_format_is_checked_and_chooses_the_exporter(capsys, tmp_path, monkeypatch):
    """`--format onnx` (documented) runs the ONNX exporter; any other format is refused, exit 2."""
    assert main(["export", str(tmp_path), "--format", "tflite"]) == 2
    assert "invalid choice: 'tflite'" in capsys.readouterr().err
    from jaxtrain.runs import export
    called = []
    monkeypatch.setattr(export, "export_onnx", lambda run, out: called.append((run, out)) or ("m", "c"))
    assert main(["export", str(tmp_path), "--format", "onnx", "--output", "x.onnx"]) == 0
    assert called == [(str(tmp_path), "x.onnx")]


def test_an_error_runs_what_registered_to_leave_and_keeps_exit_status_2(capsys, tmp_path, monkeypatch):
    """The CLI's one-line error calls what a joined multi-process run registered (errors.py), with 2."""
    from jaxtrain.util import errors
    left = []
    monkeypatch.setattr(errors, "_LEAVE_AT_ONCE", [left.append])
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert left == [2] and "missing.yaml" in capsys.readouterr().err
