"""The entry point of the data stage: from a `data` config section to a `Dataset`."""

from __future__ import annotations

from jaxtrain.config.data import DataConfig
from jaxtrain.data import pipeline_grain, pipeline_tf, preprocess, sources
from jaxtrain.data.dataset import Dataset
from jaxtrain.data.featurestats import FeatureStats
from jaxtrain.data.streaming import load_streaming
from jaxtrain.data.tfhelp import require_tf


def load_dataset(cfg: DataConfig, stats: FeatureStats | None = None) -> Dataset:
    """Load, clean, transform and normalize the data `cfg` names.

    With `stats` (from a saved run), reuse them instead of fitting new ones.
    """
    require_tf(cfg)                    # the optional backends: one line now if not installed
    if cfg.backend == "grain":
        pipeline_grain.import_grain()
    if cfg.streaming:
        return load_streaming(cfg, stats)
    raw = sources.load_raw(cfg)
    if cfg.backend == "tfdata":
        ds = preprocess.prepare(raw, cfg, stats, keep_raw_train=True)
        return pipeline_tf.attach(ds, cfg)
    ds = preprocess.prepare(raw, cfg, stats)
    return pipeline_grain.attach(ds, cfg) if cfg.backend == "grain" else ds
