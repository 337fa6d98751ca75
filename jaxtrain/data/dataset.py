"""The contract between the data stage and the trainer."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Literal

import numpy as np

from jaxtrain.config.data import DataConfig
from jaxtrain.data.featurestats import FeatureStats


@dataclasses.dataclass
class Split:
    """Preprocessed arrays: x float32 (n, *feature_shape); y int32 (n,) or float32 (n,)/(n, k)."""
    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.x)


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of training examples in `epoch`: the one definition every backend uses."""
    return np.random.default_rng([seed, epoch]).permutation(n).astype(np.int32)


def batch_plan(n: int, batch_size: int, seed: int, epoch: int, start: int = 0, rows: slice = slice(None)
               ) -> tuple[np.ndarray, np.ndarray]:
    """Row indices and mask of the epoch's batches from batch `start` on, `rows` of each (a
    process's share): two (batches, rows) arrays; the last batch is padded with row 0, masked.
    Every backend reads batches in this plan, so a resumed epoch seeks to its batch."""
    steps = -(-n // batch_size)
    idx = np.zeros(steps * batch_size, np.int32)
    mask = np.zeros(steps * batch_size, np.float32)
    idx[:n], mask[:n] = epoch_permutation(n, seed, epoch), 1.0
    return idx.reshape(steps, batch_size)[start:, rows], mask.reshape(steps, batch_size)[start:, rows]


@dataclasses.dataclass
class Dataset:
    task: Literal["classification", "regression"]
    num_classes: int | None        # classes for classification, None for regression
    feature_shape: tuple[int, ...]
    # Cleaned, transformed, normalized. None when the backend streams the training split
    # (data.backend=tfdata): then use `train_batches` and `num_train`.
    train: Split | None
    val: Split | None
    test: Split
    name: str = ""
    # Fitted preprocessing statistics, saved with a run (stats.json) and reused by eval/predict.
    stats: FeatureStats | None = None
    # Counts of what the preprocessing did (rows in/out, per rule and column).
    report: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Regression targets are standardized for training: y_original = y * scale + mean.
    target_mean: float = 0.0
    target_scale: float = 1.0
    # Training examples after cleaning (== len(train) when train is in memory).
    num_train: int = -1
    # True when the training split is streamed from disk rather than held in memory.
    streaming: bool = False
    # The backend's batch iterator: (batch_size, seed, epoch, start, rows) -> (x, y, mask)
    # batches from batch `start` of the epoch, `rows` of each (see `batch_plan`).
    batcher: Callable[[int, int, int, int, slice], Iterator] | None = dataclasses.field(default=None, repr=False)
    # tf.data backend: (encoded rows before normalization, targets, normalized width).
    raw_train: Any = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.num_train < 0:
            self.num_train = len(self.train) if self.train is not None else 0

    @property
    def num_outputs(self) -> int:
        if self.task == "classification":
            return int(self.num_classes)
        ref = self.train if self.train is not None else self.test
        return 1 if ref.y.ndim == 1 else int(ref.y.shape[1])

    @property
    def image_shape(self) -> tuple[int, ...] | None:
        """(h, w) or (h, w, c) when the examples are images (for plotting them), else None."""
        shape = self.stats.image_shape if self.stats is not None else None
        return tuple(shape) if shape else None

    def to_original_units(self, y: np.ndarray) -> np.ndarray:
        return y * self.target_scale + self.target_mean

    def train_batches(self, batch_size: int, seed: int, epoch: int, start: int = 0, rows: slice = slice(None)
                      ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Fixed-shape (x, y, mask) batches covering every training example once, in
        `epoch_permutation` order; the last batch is padded and masked, never dropped.
        From batch `start` on (a resumed epoch reads nothing before it), `rows` of each batch."""
        if self.batcher is not None:
            yield from self.batcher(batch_size, seed, epoch, start, rows)
            return
        x, y = self.train.x, self.train.y
        yield from gathered_batches(lambda i: (x[i], y[i]), len(self.train), batch_size, seed, epoch, start, rows)


def gathered_batches(gather: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], n: int, batch_size: int,
                     seed: int, epoch: int, start: int = 0, rows: slice = slice(None)
                     ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(x, y, mask) batches of the `n` rows `gather` returns by index, by the epoch's
    `batch_plan`: only the planned rows are read, from batch `start` on."""
    for idx, mask in zip(*batch_plan(n, batch_size, seed, epoch, start, rows)):
        x, y = gather(idx)
        yield x, y, mask
