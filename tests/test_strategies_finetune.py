"""Fine-tuning: init_from loads what matches by name and shape; frozen parameters stay put."""

import json

import numpy as np

from jaxtrain import train
from jaxtrain.ckpt.params import load_named_params
from jaxtrain.cli.main import main


def _cfg(num_classes, **extra):
    cfg = {"name": "blobs", "data": {"source": "synthetic", "name": "blobs", "synthetic_rows": 300,
                                     "num_classes": num_classes, "batch_size": 20},
           "model": {"hidden_sizes": [16, 8]}, "train": {"epochs": 2, "steps_per_call": 3},
           "parallel": {"data_axis_size": 1}, "logging": {"progress": "plain"}}
    for section, values in extra.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def _params(workdir):
    return load_named_params(workdir / "checkpoints")[0]


def test_init_from_new_head_and_frozen_layers(tmp_path, capsys):
    pre = tmp_path / "pretrained"
    train(_cfg(3), workdir=pre)
    before = _params(pre)
    capsys.readouterr()
    # A 5-class task: the head's shape differs, so it starts fresh; layer 0 is frozen. Weight decay
    # and an L2 penalty must not move the frozen layer either (its updates are zeroed).
    fine = tmp_path / "finetuned"
    train(_cfg(5, model={"init_from": str(pre)},
               optimizer={"name": "adamw", "weight_decay": 0.1, "l2": 0.01, "freeze": ["layers.0.*"]}),
          workdir=fine)
    out = capsys.readouterr().out
    assert "loaded 4 parameters" in out and "head.kernel (shape (8, 3) in the checkpoint, (8, 5) here)" in out
    event = next(json.loads(line) for line in (fine / "metrics.jsonl").read_text().splitlines()
                 if json.loads(line)["event"] == "init_from")
    assert sorted(event["loaded"]) == ["layers.0.bias", "layers.0.kernel", "layers.1.bias", "layers.1.kernel"]
    assert sorted(event["fresh"]) == ["head.bias", "head.kernel"]
    after = _params(fine)
    for name in ("layers.0.kernel", "layers.0.bias"):
        np.testing.assert_array_equal(after[name], before[name])  # loaded, then frozen: bit-identical
    for name in ("layers.1.kernel", "layers.1.bias"):
        assert after[name].shape == before[name].shape and not np.array_equal(after[name], before[name])
    assert after["head.kernel"].shape == (8, 5)


def test_init_from_with_nothing_matching_is_a_user_error(tmp_path, capsys):
    pre = tmp_path / "pretrained"
    train(_cfg(3, train={"epochs": 1}), workdir=pre)
    code = main(["train", "--workdir", str(tmp_path / "lin"), "--set", "model.name=linear",
                 "--set", f"model.init_from={pre}", "--set", "data.source=synthetic",
                 "--set", "data.name=blobs", "--set", "parallel.data_axis_size=1"])
    assert code == 2
    assert "no parameter of" in capsys.readouterr().err
    assert main(["train", "--workdir", str(tmp_path / "x"), "--set", f"model.init_from={tmp_path}/nope"]) == 2
