"""The entry point of the data stage: from a `data` config section to a `Dataset`."""

from __future__ import annotations

import contextlib

import numpy as np

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
    with _small_pages():
        return _load(cfg, stats)


@contextlib.contextmanager
def _small_pages():
    """NumPy asks the kernel for huge pages for large arrays (madvise). Where THP defrag is
    `madvise` (a common default), each first touch of such memory may compact memory
    synchronously: the data stage runs once, first, in a fresh process, and on a busy
    2-core machine that kernel time was half of MNIST's data phase (first call 0.97 s, of it
    0.48 s system time; with ordinary pages 0.51 s). Ordinary pages for the stage only."""
    multiarray = getattr(getattr(np, "_core", None), "multiarray", None)
    switch = getattr(multiarray, "_set_madvise_hugepage", None)
    previous = switch(False) if switch is not None else None
    try:
        yield
    finally:
        if switch is not None:
            switch(previous)


def _load(cfg: DataConfig, stats: FeatureStats | None) -> Dataset:
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
