"""ckpt/: what mutmut's surviving mutants showed unchecked (docs/testing.md): a batch-norm
model's running statistics come back from its checkpoint for `eval` and `predict`."""

import numpy as np
from test_models_cnn import CNN_DIGITS

from jaxtrain.ckpt.checkpoint import read_raw
from jaxtrain.ckpt.params import named_leaves
from jaxtrain.engine.step import split_model
from jaxtrain.runs.api import train
from jaxtrain.runs.trained import checkpoint_dir, load_run, model_from_stats, restore_model
from jaxtrain.util.events import Console


def test_a_batch_norm_runs_statistics_come_back_from_its_checkpoint(tmp_path):
    """The restored statistics are the arrays the checkpoint holds (read another way), not the
    fresh model's (mean 0, variance 1), which one epoch of training moved."""
    run = tmp_path / "run"
    train("digits_mlp", workdir=run, console=Console("none"), overrides={**CNN_DIGITS, "train.epochs": 1})
    cfg, stats = load_run(run)
    model = model_from_stats(cfg, stats)
    def statistics(rest) -> dict[str, np.ndarray]:   # the rest also holds dropout's RNG keys
        return {name: np.asarray(v) for name, v in named_leaves(rest).items() if name.endswith((".mean", ".var"))}
    fresh = statistics(split_model(model)[3])
    restored = statistics(restore_model(run, cfg, model)[2])
    raw, _ = read_raw(checkpoint_dir(run))
    saved = {name: np.asarray(v) for name, v in named_leaves(raw["rest"]).items()
             if np.issubdtype(np.asarray(v).dtype, np.floating)}
    assert restored and set(restored) <= set(saved) and set(restored) == set(fresh)
    for name in restored:
        np.testing.assert_array_equal(restored[name], saved[name])
        assert not np.array_equal(restored[name], fresh[name]), name
