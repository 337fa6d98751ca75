"""Bin edges for the piecewise-linear encoding of numeric columns (model.numeric_embedding).

The edges are quantiles of each numeric column of the TRAINING split, as the model reads it
(imputed, log1p'd, clipped, normalized: the normalizer is increasing, so these are the
normalized quantiles of the cleaned column), deduplicated; they are fitted once and saved
in stats.json, so eval, predict, a resume and the ONNX export encode with the same edges.
"""

from __future__ import annotations

import itertools

import numpy as np

from jaxtrain.data.dataset import Dataset

SAMPLE_ROWS = 1 << 20          # a streamed training split: quantiles of this many shuffled rows
SAMPLE_BATCH = 8192


def quantile_edges(col: np.ndarray, bins: int) -> list[float]:
    """At most `bins` + 1 increasing float32 edges: the column's quantiles at 0, 1/bins, ..., 1,
    repeated values merged. A constant column gets one bin of width 1 above its value."""
    q = np.unique(np.quantile(col.astype(np.float64), np.linspace(0.0, 1.0, bins + 1)).astype(np.float32))
    if len(q) < 2:
        q = np.array([q[0], q[0] + 1.0], np.float32)
    return [float(v) for v in q]


def training_numbers(dataset: Dataset, width: int) -> np.ndarray:
    """The numeric columns (the first `width` features) of the training split; a streamed
    split gives a shuffled sample of at most SAMPLE_ROWS rows (every process the same)."""
    if dataset.train is not None:
        return dataset.train.x.reshape(len(dataset.train), -1)[:, :width]
    batches = dataset.train_batches(SAMPLE_BATCH, seed=0, epoch=0)
    parts = [x.reshape(len(x), -1)[mask > 0, :width]
             for x, _, mask in itertools.islice(batches, SAMPLE_ROWS // SAMPLE_BATCH)]
    return np.concatenate(parts)


def fit_bin_edges(dataset: Dataset, bins: int) -> None:
    """Fill in `dataset.stats.bin_edges` (one list per numeric column) unless fitted for
    `bins` already (statistics read back for a resume keep theirs)."""
    stats = dataset.stats
    if stats is None or not stats.is_table or (stats.bin_edges is not None and stats.bins == bins):
        return
    width = len(stats.numeric_columns)
    numbers = training_numbers(dataset, width) if width else np.zeros((0, 0), np.float32)
    stats.bin_edges = [quantile_edges(numbers[:, j], bins) for j in range(width)]
    stats.bins = bins
