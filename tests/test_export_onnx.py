"""`jaxtrain export --format onnx`: onnxruntime fed the raw CSV rows, one input per column,
gives what `jaxtrain predict` gives on the same rows (missing numbers, values past the clip
bounds, a log column, an unseen category; regression and classification), and so does the
CNN on raw pixels with and without batch norm, its convolution an ONNX `Conv`. A free-text
column and a model jax2onnx cannot convert are refused in one line."""

import csv
import json
import struct

import jax
import numpy as np
import pytest

from jaxtrain import evaluate
from jaxtrain.cli.main import main

pytest.importorskip("jax2onnx")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

COMMON = ["--set", "train.steps_per_call=epoch", "--set", "parallel.data_axis_size=1",
          "--set", "logging.progress=none"]
CITIES = ["lyon", "nice", "paris"]


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _session(model_path, contract):
    session = ort.InferenceSession(str(model_path))
    assert sorted(i.name for i in session.get_inputs()) == sorted(i["name"] for i in contract["inputs"])
    return session


def _raw_feeds(rows, contract):
    """The raw CSV rows as a user feeds them, one [batch, 1] input per column: numbers as
    float32 with NaN where the CSV has nothing, categories as the strings written."""
    feeds = {}
    for spec in contract["inputs"]:
        values = [row[spec["name"]] for row in rows]
        if spec["dtype"] == "float32":
            feeds[spec["name"]] = np.array([[float(v) if v.strip() not in ("", "NA") else np.nan] for v in values], np.float32)
        else:
            feeds[spec["name"]] = np.array([[v] for v in values], object)
    return feeds


def _houses(n, rng):
    """rooms (some missing), area (log-normal: the log column), city (some missing), price."""
    rooms, area = rng.integers(1, 7, n).astype(float), rng.lognormal(4, 0.5, n)
    city = rng.choice(CITIES, n)
    price = 50 + 3 * area + 20 * rooms + np.select([city == "paris", city == "nice"], [100, 40], 0) \
        + rng.normal(0, 5, n)
    return [["" if i % 13 == 0 else f"{rooms[i]:g}", f"{area[i]:.3f}", "" if i % 11 == 0 else city[i],
             f"{price[i]:.2f}"] for i in range(n)]


# Rows a model has to guess about: missing numbers (empty, NA), values far past the clip bounds
# (both sides), a category never seen in training, missing categories (empty, NA, null), inf
# and -inf (missing, as in training).
NEW_ROWS = [["3", "75.5", "paris"], ["", "20", "lyon"], ["6", "90000", "nice"], ["2", "", "berlin"],
            ["-40", "1", ""], ["4", "NA", "NA"], ["250", "0", "null"], ["1", "60", "Lyon"],
            ["inf", "-inf", "nice"]]


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_the_exported_table_model_takes_raw_rows_and_matches_predict(tmp_path, task):
    _check_table_export(tmp_path, task, [])


# The tabular mlp (model/tabular.py): its encodings and the ensemble's mean are in the graph.
@pytest.mark.parametrize("task, model", [
    ("classification", {"numeric_embedding": "piecewise_linear", "bins": 8, "embedding_dim": 0}),
    ("regression", {"numeric_embedding": "piecewise_linear", "bins": 16}),
    ("regression", {"numeric_embedding": "periodic", "frequencies": 8, "frequency_scale": 0.5}),
    ("classification", {"category_embedding": "learned"}),
    ("classification", {"ensemble": 3, "numeric_embedding": "piecewise_linear", "bins": 8}),
    ("regression", {"ensemble": 4, "category_embedding": "learned"}),
], ids=["ple-flat", "ple-dim", "periodic", "learned-categories", "ensemble-classes", "ensemble-regression"])
def test_the_tabular_mlp_exports_its_encodings_and_ensemble_mean(tmp_path, task, model):
    _check_table_export(tmp_path, task, [a for k, v in model.items() for a in ("--set", f"model.{k}={v}")])


def _check_table_export(tmp_path, task, extra):
    rows = _houses(240, np.random.default_rng(0))
    if task == "classification":        # three price bands
        edges = np.quantile([float(r[3]) for r in rows], [1 / 3, 2 / 3])
        rows = [r[:3] + [str(int(np.digitize(float(r[3]), edges)))] for r in rows]
    _write_csv(tmp_path / "houses.csv", ["rooms", "area", "city", "price"], rows)
    _write_csv(tmp_path / "new.csv", ["rooms", "area", "city"], NEW_ROWS)
    run = tmp_path / "run"
    assert main(["train", "--workdir", str(run), *COMMON, "--set", "data.source=csv",
                 "--set", f"data.path={tmp_path / 'houses.csv'}", "--set", "data.target=price",
                 "--set", f"data.task={task}", "--set", "data.log_columns=[area]",
                 "--set", "data.clean.outliers=iqr", "--set", "model.hidden_sizes=[8]",
                 "--set", "train.epochs=3", *extra]) == 0
    stats = json.loads((run / "stats.json").read_text())
    bounds = dict(zip(stats["numeric_columns"], stats["outliers"]["bounds"]))
    assert float(NEW_ROWS[2][1]) > np.expm1(bounds["area"][1]) and -40 < bounds["rooms"][0]  # clipped rows
    assert main(["predict", str(run), "--input", str(tmp_path / "new.csv"), "--full-precision",
                 "--output", str(tmp_path / "p.csv")]) == 0
    assert main(["export", str(run), "--format", "onnx", "--output", str(tmp_path / "houses.onnx")]) == 0
    contract = json.loads((tmp_path / "houses.json").read_text())
    kinds = {i["name"]: (i["dtype"], i["shape"]) for i in contract["inputs"]}
    assert kinds == {"rooms": ("float32", ["batch", 1]), "area": ("float32", ["batch", 1]),
                     "city": ("string", ["batch", 1])}

    onnx.checker.check_model(onnx.load(str(tmp_path / "houses.onnx")), full_check=True)
    session = _session(tmp_path / "houses.onnx", contract)
    got = session.run([contract["output"]["name"]], _raw_feeds(_read_csv(tmp_path / "new.csv"), contract))[0]
    predicted = _read_csv(tmp_path / "p.csv")
    if task == "classification":
        classes = contract["output"]["classes"]
        assert classes == ["0", "1", "2"]
        want = np.array([[float(r[f"prob_{c}"]) for c in classes] for r in predicted])
    else:
        want = np.array([[float(r["predicted"])] for r in predicted])
    assert got.shape == want.shape == (len(NEW_ROWS), len(want[0]))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_a_free_text_column_is_refused_in_one_line_naming_it(tmp_path, capsys):
    rng = np.random.default_rng(2)
    words = ["cosy", "bright", "flat", "garden", "quiet", "street", "view"]
    rows = [[f"{rng.uniform(20, 200):.1f}", " ".join(rng.choice(words, 4)), f"{rng.uniform(100, 900):.1f}"]
            for _ in range(80)]
    _write_csv(tmp_path / "ads.csv", ["area", "note", "price"], rows)
    run = tmp_path / "run"
    assert main(["train", "--workdir", str(run), *COMMON, "--set", "data.source=csv",
                 "--set", f"data.path={tmp_path / 'ads.csv'}", "--set", "data.target=price",
                 "--set", "data.columns={note: text}", "--set", "model.hidden_sizes=[4]",
                 "--set", "train.epochs=1"]) == 0
    capsys.readouterr()
    assert main(["export", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "column 'note' is free text" in err, err
    assert not (run / "model.onnx").exists()


@pytest.mark.parametrize("batch_norm", [True, False])
def test_the_cnn_exports_convolutions_as_conv_and_matches_predict(tmp_path, batch_norm):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    x = rng.integers(0, 60, (300, 10, 10)).astype(np.uint8)
    for i, c in enumerate(y):                  # a bright square in one of three places
        x[i, 1 + 3 * c:4 + 3 * c, 2:6] = 250
    np.savez(tmp_path / "squares.npz", x=x, y=y)
    new = rng.integers(0, 255, (7, 10, 10)).astype(np.uint8)
    labels = rng.integers(0, 3, 7).astype(np.uint8)
    np.savez(tmp_path / "new.npz", x=new, y=labels)

    run = tmp_path / "run"
    assert main(["train", "--workdir", str(run), *COMMON, "--set", "data.source=npz",
                 "--set", f"data.path={tmp_path / 'squares.npz'}", "--set", "model.name=cnn",
                 "--set", "model.channels=[4]", "--set", "model.kernel_sizes=[3]",
                 "--set", "model.hidden_sizes=[8]", "--set", f"model.batch_norm={str(batch_norm).lower()}",
                 "--set", "train.epochs=2"]) == 0
    assert main(["predict", str(run), "--input", str(tmp_path / "new.npz"), "--full-precision",
                 "--output", str(tmp_path / "p.csv")]) == 0
    assert main(["export", str(run)]) == 0
    contract = json.loads((run / "model.json").read_text())
    [pixels] = contract["inputs"]
    assert pixels["shape"] == ["batch", 100] and pixels["image_shape"] == [10, 10]
    assert contract["output"]["classes"] == ["0", "1", "2"]
    ops = [node.op_type for node in onnx.load(str(run / "model.onnx")).graph.node]
    assert ops.count("Conv") == 1 and "MatMul" in ops      # the convolution, then the dense layers
    assert ("BatchNormalization" in ops) == batch_norm

    got = _session(run / "model.onnx", contract).run(
        [contract["output"]["name"]], {pixels["name"]: new.reshape(7, 100).astype(np.float32)})[0]
    want = np.array([[float(row[f"prob_{k}"]) for k in range(3)] for row in _read_csv(tmp_path / "p.csv")])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)

    # The same images scored with their labels, from an .npz and from IDX files: predict's numbers.
    scored = evaluate(run, input=tmp_path / "new.npz")
    assert scored["accuracy"] == np.mean(want.argmax(1) == labels)
    assert scored["loss"] == pytest.approx(-np.mean(np.log(want[np.arange(7), labels])), rel=1e-6)
    _write_idx(tmp_path / "new-images-idx3-ubyte", new)
    _write_idx(tmp_path / "new-labels-idx1-ubyte", labels)
    assert evaluate(run, input=tmp_path / "new-images-idx3-ubyte") == scored


def _write_idx(path, array):
    """An MNIST-format file of uint8 values."""
    path.write_bytes(bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
                     + array.astype(np.uint8).tobytes())


def test_the_exported_cnn_convolves_with_xla_whatever_kernel_training_used():
    """jax2onnx writes `Conv` for lax's convolution; on CPU the CNN trains with another kernel
    of the same values (model/kernels.py), which export replaces (some jax2onnx versions convert
    what the kernel computes, slices and a matmul, instead of the module)."""
    from jaxtrain.config.schema import load_config
    from jaxtrain.model.models import build_model
    from jaxtrain.runs.export import export_config
    cfg = load_config("digits_mlp", ["model.name=cnn", "model.channels=[2]", "model.kernel_sizes=[3]",
                                     "model.hidden_sizes=[4]", "train.precision=bfloat16"])
    x = np.random.default_rng(0).normal(size=(2, 64)).astype(np.float32)

    def built(model_cfg):
        model = build_model(model_cfg, (64,), 3, seed=0, image_shape=(8, 8), platform="cpu")
        return model, {e.primitive.name for e in jax.make_jaxpr(model)(x).jaxpr.eqns}

    trained, trained_ops = built(cfg.model)           # as training on CPU computes
    exported, exported_ops = built(export_config(cfg).model)
    assert "conv_general_dilated" not in trained_ops and "conv_general_dilated" in exported_ops
    assert export_config(cfg).train.precision == "float32"
    np.testing.assert_allclose(np.asarray(exported(x)), np.asarray(trained(x)), rtol=1e-5, atol=1e-6)


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
