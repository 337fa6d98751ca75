"""`jaxtrain export --format onnx`: onnxruntime on raw rows, encoded by hand from the contract
file, gives what `jaxtrain predict` gives on the same rows (an MLP on a CSV, a CNN with batch
norm on images); a model jax2onnx cannot convert is refused in one line."""

import csv
import json

import numpy as np
import pytest

from jaxtrain.cli.main import main

pytest.importorskip("jax2onnx")
ort = pytest.importorskip("onnxruntime")

COMMON = ["--set", "train.steps_per_call=epoch", "--set", "parallel.data_axis_size=1",
          "--set", "logging.progress=none"]
CITIES = ["lyon", "nice", "paris"]


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _onnx(model_path, contract, x):
    session = ort.InferenceSession(str(model_path))
    assert [i.name for i in session.get_inputs()] == [contract["input"]["name"]]
    return session.run([contract["output"]["name"]], {contract["input"]["name"]: x})[0]


def _write_table(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["rooms", "area", "city", "price"])
        w.writerows(rows)


def test_mlp_on_a_csv_matches_predict(tmp_path):
    rng = np.random.default_rng(0)
    n = 240
    rooms, area = rng.integers(1, 7, n), rng.uniform(20, 200, n).round(1)
    city = rng.choice(CITIES, n)
    price = 50 + 3 * area + 20 * rooms + np.select([city == "paris", city == "nice"], [100, 40], 0) \
        + rng.normal(0, 5, n)
    _write_table(tmp_path / "houses.csv", zip(rooms, area, city, price.round(2)))
    new = [(3, 75.5, "paris", ""), (1, 20.0, "lyon", ""), (6, 180.25, "nice", "")]
    _write_table(tmp_path / "new.csv", new)

    run = tmp_path / "run"
    assert main(["train", "--workdir", str(run), *COMMON, "--set", "data.source=csv",
                 "--set", f"data.path={tmp_path / 'houses.csv'}", "--set", "data.target=price",
                 "--set", "model.hidden_sizes=[8]", "--set", "train.epochs=3"]) == 0
    assert main(["predict", str(run), "--input", str(tmp_path / "new.csv"),
                 "--output", str(tmp_path / "p.csv")]) == 0
    assert main(["export", str(run), "--format", "onnx", "--output", str(tmp_path / "houses.onnx")]) == 0
    contract = json.loads((tmp_path / "houses.json").read_text())
    names = contract["input"]["feature_names"]
    assert names == ["rooms", "area", "city=lyon", "city=nice", "city=paris"]

    # The encoded vector by hand: the numeric columns, then one-hot cities by the contract's names.
    x = np.array([[r, a] + [float(f"city={c}" == name) for name in names[2:]] for r, a, c, _ in new],
                 np.float32)
    got = _onnx(tmp_path / "houses.onnx", contract, x)
    want = np.array([float(row["predicted"]) for row in _read_csv(tmp_path / "p.csv")])
    assert got.shape == (3, 1)
    np.testing.assert_allclose(got[:, 0], want, rtol=1e-4, atol=1e-4)


def test_cnn_with_batch_norm_on_images_matches_predict(tmp_path):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    x = rng.integers(0, 60, (300, 10, 10)).astype(np.uint8)
    for i, c in enumerate(y):                  # a bright square in one of three places
        x[i, 1 + 3 * c:4 + 3 * c, 2:6] = 250
    np.savez(tmp_path / "squares.npz", x=x, y=y)
    new = rng.integers(0, 255, (7, 10, 10)).astype(np.uint8)
    np.savez(tmp_path / "new.npz", x=new)

    run = tmp_path / "run"
    assert main(["train", "--workdir", str(run), *COMMON, "--set", "data.source=npz",
                 "--set", f"data.path={tmp_path / 'squares.npz'}", "--set", "model.name=cnn",
                 "--set", "model.channels=[4]", "--set", "model.kernel_sizes=[3]",
                 "--set", "model.hidden_sizes=[8]", "--set", "model.batch_norm=true",
                 "--set", "train.epochs=2"]) == 0
    assert main(["predict", str(run), "--input", str(tmp_path / "new.npz"),
                 "--output", str(tmp_path / "p.csv")]) == 0
    assert main(["export", str(run)]) == 0
    contract = json.loads((run / "model.json").read_text())
    assert contract["input"]["shape"] == ["batch", 100] and contract["input"]["image_shape"] == [10, 10]
    assert contract["output"]["classes"] == ["0", "1", "2"]

    got = _onnx(run / "model.onnx", contract, new.reshape(7, 100).astype(np.float32))   # raw pixels
    want = np.array([[float(row[f"prob_{k}"]) for k in range(3)] for row in _read_csv(tmp_path / "p.csv")])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


CALLBACK_MODULE = '''
import jax
from flax import nnx


class HostScaled(nnx.Module):
    def __init__(self, input_shape, out_features, *, rngs):
        self.out = nnx.Linear(input_shape[0] * input_shape[1], out_features, rngs=rngs)

    def __call__(self, x):
        x = jax.pure_callback(lambda a: a * 0.5, jax.ShapeDtypeStruct(x.shape, x.dtype), x)
        return self.out(x.reshape(x.shape[0], -1))


def make(input_shape, out_features, *, rngs):
    return HostScaled(input_shape, out_features, rngs=rngs)
'''


def test_a_model_onnx_cannot_express_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "host_scaled_export.py").write_text(CALLBACK_MODULE)
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    assert main(["train", "--workdir", str(run), *COMMON, "--set", "model.name=host_scaled_export:make",
                 "--set", "train.epochs=1"]) == 0
    capsys.readouterr()
    assert main(["export", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot be exported to ONNX" in err and "host_scaled_export" in err, err
    assert not (run / "model.onnx").exists()
