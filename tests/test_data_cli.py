"""The data stage through the command line: bad files exit 2 with one line naming the file,
and the shipped configs run on the sources the issue names (tfds, IDX, CSV), on both backends."""

import json
import subprocess
import sys

import numpy as np
import pytest

from jaxtrain.cli.main import main
from test_data_sources import make_idx

FAST = ["--set", "train.epochs=1", "--set", "parallel.data_axis_size=1", "--set", "checkpoint.enabled=false"]


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def _one_line_naming(err: str, name: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert name in lines[0], err


BAD_CSV = {
    "empty": ("", "empty"),
    "header_only": ("a,b,y\n", "only a header"),
    "ragged": ("a,b,y\n1,2,1\n4,5\n", "line 3: 2 fields"),
    "non_numeric": ("a,b,y\n" + "1,2,1\n" * 5 + "1,x7,0\n", "line 7 column 'b'"),
    "all_missing": ("a,b,y\n" + "1,,1\n2,NA,0\n" * 20, "column 'b': every value"),
    "no_target": ("a,b,c\n1,2,1\n", "target column 'y' not in the header"),
    "label_out_of_range": ("a,b,y\n" + "".join(f"{i},{i % 5},{i % 3}\n" for i in range(40)) + "5,5,7\n",
                           "line 42 column 'y'"),
}


@pytest.mark.parametrize("streaming", [False, True], ids=["numpy", "streaming"])
@pytest.mark.parametrize("case", list(BAD_CSV))
def test_bad_csv_exits_2_naming_the_file(capsys, tmp_path, case, streaming):
    text, where = BAD_CSV[case]
    path = tmp_path / f"{case}.csv"
    path.write_text(text)
    extra = ["--set", "data.backend=tfdata", "--set", "data.streaming=true"] if streaming else []
    code, err = _cli(capsys, "train", "digits_mlp", "--set", "data.source=csv", "--set", f"data.path={path}",
                     "--set", "data.target=y", "--set", "data.task=classification", "--set", "data.num_classes=3",
                     "--set", "data.test_fraction=0.0", "--set", "data.val_fraction=0.0", *FAST, *extra,
                     "--workdir", tmp_path / "run")
    assert code == 2
    _one_line_naming(err, f"{case}.csv")
    assert where in err


def test_idx_wrong_image_shape_exits_2(capsys, tmp_path):
    make_idx(tmp_path, test_shape=(5, 3))
    code, err = _cli(capsys, "train", "mnist_mlp", "--set", "data.source=idx", "--set", f"data.path={tmp_path}",
                     *FAST, "--workdir", tmp_path / "run")
    assert code == 2
    _one_line_naming(err, "t10k-images-idx3-ubyte.gz")


def test_bad_file_in_a_subprocess_exits_2_without_traceback(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text("a,b,y\n1,2,3\n4,5\n")
    cmd = [sys.executable, "-m", "jaxtrain", "train", "house_prices_linear", "--set", "data.source=csv",
           "--set", f"data.path={path}", "--set", "data.target=y", "--workdir", str(tmp_path / "run")]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 2
    _one_line_naming(out.stderr, "ragged.csv line 3")


def _summary(workdir):
    return json.loads((workdir / "summary.json").read_text())


def test_mnist_config_on_idx_both_backends_agree(capsys, tmp_path):
    make_idx(tmp_path, n_train=48, n_test=16, shape=(28, 28))
    runs = {}
    for backend in ("numpy", "tfdata"):
        code, err = _cli(capsys, "train", "mnist_mlp", "--set", "data.source=idx", "--set", f"data.path={tmp_path}",
                         "--set", f"data.backend={backend}", "--set", "data.batch_size=16", *FAST,
                         "--set", "train.epochs=2", "--workdir", tmp_path / backend)
        assert code == 0, err
        runs[backend] = _summary(tmp_path / backend)
        stats = json.loads((tmp_path / backend / "stats.json").read_text())
        assert stats["normalize"]["kind"] == "minmax_sym" and stats["feature_shape"] == [784]
    # same cleaning, statistics, values and epoch order: the same training, up to float rounding
    a, b = runs["numpy"]["test"], runs["tfdata"]["test"]
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-4)
    assert a["accuracy"] == b["accuracy"]


def test_mnist_config_on_tfds_mock_agrees_with_the_same_arrays_from_npz(capsys, tmp_path):
    """The tfds path and the NPZ path must train alike on the same images and labels."""
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=32):
        code, err = _cli(capsys, "train", "mnist_mlp", "--set", "data.batch_size=16", *FAST,
                         "--workdir", tmp_path / "tfds")
        rows = {s: list(tfds.as_numpy(tfds.builder("mnist").as_dataset(split=s))) for s in ("train", "test")}
    assert code == 0, err
    arrays = {f"{k}_{s}": np.stack([r["image" if k == "x" else "label"] for r in rows[s]])
              for s in rows for k in ("x", "y")}
    np.savez(tmp_path / "mnist.npz", **arrays)
    code, err = _cli(capsys, "train", "mnist_mlp", "--set", "data.source=npz", "--set",
                     f"data.path={tmp_path / 'mnist.npz'}", "--set", "data.num_classes=10",
                     "--set", "data.batch_size=16", *FAST, "--workdir", tmp_path / "npz")
    assert code == 0, err
    a, b = _summary(tmp_path / "tfds")["test"], _summary(tmp_path / "npz")["test"]
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    assert a["accuracy"] == b["accuracy"]
    report = json.loads((tmp_path / "tfds" / "preprocess_report.json").read_text())
    assert report["rows_in"]["train"] == 32 and report["features"] == 784


def test_house_prices_config_on_a_messy_csv(capsys, tmp_path):
    rng = np.random.default_rng(0)
    n = 240
    area, age = rng.uniform(40, 250, n), rng.uniform(0, 80, n)
    city = rng.choice(["north", "south", "centre"], n)
    price = 2000 * area - 500 * age + np.select([city == "centre", city == "north"], [60000, 20000], 0) \
        + 100000 + rng.normal(0, 5000, n)
    lines = ["id,area,age,city,price"]
    for i in range(n):
        a = "" if i % 20 == 3 else ("NA" if i % 20 == 7 else f"{area[i]:.2f}")
        c = "" if i % 30 == 5 else city[i]
        lines.append(f"{i},{a},{age[i]:.1f},{c},{price[i]:.0f}")
    path = tmp_path / "houses.csv"
    path.write_text("\n".join(lines) + "\n")
    code, err = _cli(capsys, "train", "configs/house_prices_linear.yaml", "--set", "data.source=csv",
                     "--set", f"data.path={path}", "--set", "data.target=price", "--set", "data.drop_columns=[id]",
                     "--set", "parallel.data_axis_size=1", "--set", "checkpoint.enabled=false",
                     "--set", "train.epochs=30", "--workdir", tmp_path / "run")
    assert code == 0, err
    s = _summary(tmp_path / "run")
    assert s["test"]["r2"] > 0.9                       # the city one-hot carries real signal
    assert s["test"]["mae"] < 20000                    # in original units, not standardized
    stats = json.loads((tmp_path / "run" / "stats.json").read_text())
    assert stats["categories"]["city"] == ["centre", "north", "south"]
    report = json.loads((tmp_path / "run" / "preprocess_report.json").read_text())
    per_col = {k: v for k, v in report["missing"]["per_column"].items()}
    # every missing value is counted (train split) and imputed; no row disappears silently
    assert set(per_col) == {"area", "city"} and report["missing"]["rows_dropped"] == 0
    assert sum(report["rows_in"].values()) == n
