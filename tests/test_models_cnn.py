"""The built-in CNN: its forward pass against NumPy, every parallel strategy against one
device, bf16, resume and `report` on small images, and its refusal of tables."""

import json

import jax
import numpy as np
import pytest
from conftest import make_dataset
from flax import nnx

from jaxtrain import load_config
from jaxtrain.cli.main import main
from jaxtrain.model.kernels import Kernels, shifted_matmul_conv
from jaxtrain.model.models import CNN, build_model
from jaxtrain.runs.api import train
from jaxtrain.training.loop import fit
from jaxtrain.training.setup import setup
from jaxtrain.engine.plan import make_plan
from jaxtrain.util.events import Console


def _numpy_cnn(model: CNN, x: np.ndarray) -> np.ndarray:
    """One 'SAME' conv block (relu, 2x2 max pool) and the head, in float64 loops."""
    kernel = np.asarray(model.convs[0].kernel[...], np.float64)   # (k, k, c_in, c_out)
    bias = np.asarray(model.convs[0].bias[...], np.float64)
    k = kernel.shape[0]
    img = x.reshape(len(x), *model.image_shape).astype(np.float64)
    pad = np.pad(img, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))
    n, h, w, _ = img.shape
    conv = np.zeros((n, h, w, kernel.shape[3]))
    for i in range(h):
        for j in range(w):
            conv[:, i, j] = np.einsum("nabc,abcd->nd", pad[:, i:i + k, j:j + k], kernel)
    act = np.maximum(conv + bias, 0)
    pooled = act[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, -1).max(axis=(2, 4))
    head = model.dense.head
    return pooled.reshape(n, -1) @ np.asarray(head.kernel[...], np.float64) + np.asarray(head.bias[...])


@pytest.mark.parametrize("conv_impl", ["xla", "im2col"])
def test_forward_matches_numpy(conv_impl):
    model = CNN((7, 6, 2), (3,), (3,), (), 4, rngs=nnx.Rngs(0), kernels=Kernels(conv_impl=conv_impl))
    x = np.random.default_rng(0).normal(size=(5, 7 * 6 * 2)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(model(x)), _numpy_cnn(model, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_shifted_matmul_conv_equals_xla_conv_values_and_gradients(k):
    """The CPU convolution against lax.conv_general_dilated ('SAME', even kernels padded one
    more after than before), forward and both gradients."""
    rng = np.random.default_rng(k)
    x = jax.numpy.asarray(rng.normal(size=(3, 7, 6, 2)), np.float32)
    w = jax.numpy.asarray(rng.normal(size=(k, k, 2, 5)), np.float32)
    dims = ("NHWC", "HWIO", "NHWC")
    reference = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dims)
    ours = lambda x, w: shifted_matmul_conv(x, w, (1, 1), "SAME", dimension_numbers=dims)
    np.testing.assert_allclose(ours(x, w), reference(x, w), rtol=1e-5, atol=1e-5)
    loss = lambda f: jax.grad(lambda x, w: (f(x, w) ** 2).sum(), argnums=(0, 1))(x, w)
    for a, b in zip(loss(ours), loss(reference)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_im2col_refuses_what_it_does_not_compute():
    """Argument checks are errors (they hold under python -O), naming the way out."""
    x, w = jax.numpy.zeros((1, 4, 4, 1)), jax.numpy.zeros((3, 3, 1, 2))
    for args, kwargs in [(((2, 2), "SAME"), {}), (((1, 1), "VALID"), {}),
                         (((1, 1), "SAME"), {"rhs_dilation": (2, 2)}),
                         (((1, 1), "SAME"), {"dimension_numbers": ("NCHW", "OIHW", "NCHW")})]:
        with pytest.raises(ValueError, match="model.conv_impl: xla"):
            shifted_matmul_conv(x, w, *args, **kwargs)


@pytest.mark.parametrize("setting,platform,used", [("auto", "cpu", "im2col"), ("auto", "gpu", "xla"),
                                                   ("xla", "cpu", "xla"), ("im2col", "tpu", "im2col")])
def test_conv_impl_is_honoured(setting, platform, used):
    """model.conv_impl picks the convolution the built CNN's layers call (auto: by platform),
    and both give the same outputs."""
    cfg = load_config({"model": {"name": "cnn", "channels": [3], "kernel_sizes": [3], "hidden_sizes": [],
                                 "conv_impl": setting}})
    model = build_model(cfg.model, (6, 6), 4, seed=0, platform=platform)
    want = shifted_matmul_conv if used == "im2col" else jax.lax.conv_general_dilated
    assert model.convs[0].conv_general_dilated is want
    other = CNN((6, 6, 1), (3,), (3,), (), 4, rngs=nnx.Rngs(params=0, dropout=1),
                kernels=Kernels(conv_impl="im2col" if used == "xla" else "xla"))
    assert other.convs[0].conv_general_dilated is not want
    nnx.update(other, nnx.state(model))
    x = np.random.default_rng(2).normal(size=(3, 36)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(other(x)), rtol=1e-5, atol=1e-5)


def test_conv_impl_is_recorded_in_the_summary(tmp_path):
    train("digits_mlp", workdir=tmp_path / "run", console=Console("none"),
          overrides={**CNN_DIGITS, "train.epochs": 1, "model.conv_impl": "xla", "checkpoint.enabled": False})
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["model"] == {"name": "cnn", "conv_impl": "xla"}


@pytest.fixture(scope="module")
def images():
    """10x10 grayscale images whose class is the quadrant holding a bright blob."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 320)
    x = rng.normal(scale=0.3, size=(320, 10, 10)).astype(np.float32)
    for i, c in enumerate(y):
        r, q = 1 + 5 * (c // 2) + rng.integers(0, 2), 1 + 5 * (c % 2) + rng.integers(0, 2)
        x[i, r:r + 2, q:q + 2] += 2.0
    return make_dataset(x, y, "classification", 4)


def _fit(ds, ctx, strategy="sharded", devices=None, precision="float32", batch_norm=False, epochs=2):
    cfg = load_config({"model": {"name": "cnn", "channels": [4, 8], "kernel_sizes": [3, 3],
                                 "hidden_sizes": [16], "batch_norm": batch_norm},
                       "data": {"batch_size": 32},
                       "optimizer": {"learning_rate": 0.01},
                       "train": {"epochs": epochs, "steps_per_call": 4, "precision": precision},
                       "parallel": {"strategy": strategy, "data_axis_size": devices}})
    model = build_model(cfg.model, ds.feature_shape, 4, seed=0, platform="cpu", compute_dtype=jax.numpy.dtype(
        "bfloat16" if precision == "bfloat16" else "float32"))
    run = setup(cfg, model, ds, ctx, plan=make_plan(cfg, ds))
    return run, fit(run)


@pytest.fixture(scope="module")
def one_device(images):
    from jaxtrain.training.context import RunContext
    from jaxtrain.util.events import JsonlWriter
    ctx = RunContext(console=Console("none"), events=JsonlWriter(None))
    run, summary = _fit(images, ctx, devices=1)
    return jax.tree.map(np.asarray, run.state.params), summary


@pytest.mark.parametrize("strategy", ["sharded", "pmap", "fsdp"])
def test_every_strategy_on_8_devices_matches_one_device(images, ctx, one_device, strategy):
    run, _ = _fit(images, ctx, strategy=strategy, devices=8)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5),
                 jax.tree.map(np.asarray, run.state.params), one_device[0])


@pytest.mark.parametrize("strategy", ["sharded", "fsdp"])
def test_batch_norm_on_8_devices_matches_one_device(images, ctx, strategy):
    """Batch statistics over the global batch: parameters and running statistics as on one device."""
    one, _ = _fit(images, ctx, devices=1, batch_norm=True, epochs=1)
    run, _ = _fit(images, ctx, strategy=strategy, devices=8, batch_norm=True, epochs=1)
    for got, want in ((run.state.params, one.state.params), (run.state.rest, one.state.rest)):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5),
                     jax.tree.map(np.asarray, got), jax.tree.map(np.asarray, want))
    assert np.abs(np.asarray(one.state.rest["norms"][0]["mean"][...])).max() > 1e-4


def test_pmap_batch_norm_keeps_one_running_mean_across_devices(images, ctx):
    """After one step of 8 equal shards, the pmean of the shards' means is the batch mean: the
    running mean under pmap equals the sharded (global-batch) one."""
    ds_one_step = make_dataset(images.train.x[:40], images.train.y[:40], "classification", 4, 0.2)
    run_p, _ = _fit(ds_one_step, ctx, strategy="pmap", devices=8, batch_norm=True, epochs=1)
    run_s, _ = _fit(ds_one_step, ctx, strategy="sharded", devices=8, batch_norm=True, epochs=1)
    assert run_p.global_step == 1
    mean_p = np.asarray(run_p.state.rest["norms"][0]["mean"][...])
    mean_s = np.asarray(run_s.state.rest["norms"][0]["mean"][...])
    assert np.abs(mean_s).max() > 1e-4
    np.testing.assert_allclose(mean_p, mean_s, rtol=1e-5, atol=1e-7)


def test_bf16_trains_like_float32(images, ctx, one_device):
    run, summary = _fit(images, ctx, devices=1, precision="bfloat16")
    assert all(p.dtype == np.float32 for p in jax.tree.leaves(run.state.params))
    fp32 = one_device[1]
    assert fp32["test"]["accuracy"] > 0.9
    assert abs(summary["test"]["accuracy"] - fp32["test"]["accuracy"]) < 0.05
    assert abs(summary["train"]["loss"] - fp32["train"]["loss"]) < 0.1 * fp32["train"]["loss"] + 0.02


CNN_DIGITS = {"model.name": "cnn", "model.channels": [4], "model.kernel_sizes": [3],
              "model.hidden_sizes": [16], "model.batch_norm": True, "model.dropout": 0.1,
              "parallel.data_axis_size": 1, "train.steps_per_call": "epoch"}


def test_resume_and_report_on_digits_images(tmp_path):
    cut, straight = tmp_path / "cut", tmp_path / "straight"
    train("digits_mlp", workdir=cut, console=Console("none"), overrides={**CNN_DIGITS, "train.epochs": 1})
    train(resume=cut, overrides={"train.epochs": 2}, console=Console("none"))
    train("digits_mlp", workdir=straight, console=Console("none"), overrides={**CNN_DIGITS, "train.epochs": 2})
    resumed = json.loads((cut / "summary.json").read_text())["test"]
    whole = json.loads((straight / "summary.json").read_text())["test"]
    np.testing.assert_allclose(resumed["loss"], whole["loss"], rtol=1e-6)

    assert main(["report", str(cut)]) == 0
    matrix = np.loadtxt(cut / "confusion_matrix.csv", delimiter=",", dtype=np.int64)
    assert np.trace(matrix) / matrix.sum() == resumed["accuracy"]
    assert (cut / "samples.png").is_file()


def test_cnn_refuses_a_table(tmp_path, capsys):
    code = main(["train", "--set", "model.name=cnn", "--set", "data.name=iris",
                 "--workdir", str(tmp_path / "run"), "--set", "logging.progress=none"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "model.name" in err and "image" in err


def test_cnn_on_image_folders_matches_the_same_images_as_arrays(tmp_path):
    """Digits written as PNG files, one sub-folder per class and a separate test folder, train the
    CNN (with augmentation) to the test metrics of the same pixels given as NPZ arrays."""
    from image_folders import digits_uint8, folder_order, write_folder
    x, y = digits_uint8()
    write_folder(tmp_path / "train", x[:1200], y[:1200])
    write_folder(tmp_path / "test", x[1200:], y[1200:])
    tr, te = folder_order(y[:1200]), 1200 + folder_order(y[1200:])
    np.savez(tmp_path / "digits.npz", x_train=x[tr], y_train=y[tr], x_test=x[te], y_test=y[te])
    common = {**CNN_DIGITS, "train.epochs": 2, "optimizer.learning_rate": 0.01, "train.augment.shift": 1,
              "logging.progress": "none"}
    folders = {"data.source": "images", "data.path": str(tmp_path / "train"),
               "data.test_path": str(tmp_path / "test"), "data.cache_dir": str(tmp_path / "cache")}
    train("digits_mlp", workdir=tmp_path / "png", console=Console("none"), overrides={**common, **folders})
    train("digits_mlp", workdir=tmp_path / "npz", console=Console("none"),
          overrides={**common, "data.source": "npz", "data.path": str(tmp_path / "digits.npz")})
    png, npz = (json.loads((tmp_path / r / "summary.json").read_text()) for r in ("png", "npz"))
    assert png["test"]["accuracy"] == npz["test"]["accuracy"] > 0.5      # chance: 0.1
    np.testing.assert_allclose(png["test"]["loss"], npz["test"]["loss"], rtol=1e-6)
    assert png["data"] == npz["data"] and png["data"]["test"] == len(te)
