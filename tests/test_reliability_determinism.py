"""Same config and seed: bit-identical parameters on CPU, and the same data order, every time."""

import json

import numpy as np
import pytest

from jaxtrain import train
from jaxtrain.ckpt.params import load_named_params
from jaxtrain.config.schema import load_config
from jaxtrain.data import epoch_permutation, load_dataset


def _run(path, **over):
    # A fixed K: 'auto' picks K by timing, and the epoch's loss is summed chunk by chunk, so its
    # last bits (not the parameters) can differ with K (README, Reliability).
    overrides = {"train.epochs": 2, "logging.progress": "none", "data.batch_size": 40,
                 "train.steps_per_call": 8, **over}
    summary = train(None, workdir=path, overrides=overrides)
    params, _ = load_named_params(path)
    losses = [json.loads(line)["loss"] for line in (path / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["event"] == "train"]
    return params, losses, summary


@pytest.mark.parametrize("mode", ["on_device", "streaming"])
def test_two_runs_give_bit_identical_parameters(tmp_path, mode):
    """On 8 simulated devices (sharded batch, cross-device gradient reduction) and with dropout."""
    over = {"train.on_device_fraction": 0.25 if mode == "on_device" else 0.0, "model.dropout": 0.1}
    a, losses_a, sa = _run(tmp_path / "a", **over)
    b, losses_b, sb = _run(tmp_path / "b", **over)
    assert sa["execution"]["on_device_data"] == (mode == "on_device")
    assert a.keys() == b.keys() and len(a) >= 4
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert losses_a == losses_b and sa["test"] == sb["test"]
    if mode == "on_device":  # the comparison can fail: another seed gives other parameters
        c, _, _ = _run(tmp_path / "c", **over, **{"train.seed": 1})
        assert any(not np.array_equal(a[name], c[name]) for name in a)


def test_data_order_is_a_function_of_seed_and_epoch():
    ds = load_dataset(load_config().data)
    first = [y for _, y, _ in ds.train_batches(64, seed=3, epoch=2)]
    again = [y for _, y, _ in ds.train_batches(64, seed=3, epoch=2)]
    for u, v in zip(first, again, strict=True):
        np.testing.assert_array_equal(u, v)
    order = epoch_permutation(len(ds.train), 3, 2)
    np.testing.assert_array_equal(np.concatenate(first)[:len(order)], ds.train.y[order])
    assert not np.array_equal(order, epoch_permutation(len(ds.train), 3, 3))
    assert not np.array_equal(order, epoch_permutation(len(ds.train), 4, 2))
