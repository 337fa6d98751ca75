"""The tf.data backend: same values and same epoch order as the NumPy backend.

The training split is kept encoded but not normalized; each epoch is a tf.data
pipeline over the `batch_plan` of the `epoch_permutation` (that permutation *is* the
shuffle, so every backend visits examples in the same order): one element per batch
(from a resumed epoch's batch on, this process's rows of each), a parallel map gathers
the rows and normalizes them in float32 (the same operations as `transforms.normalize_`),
then prefetch. The last batch is padded with index 0 and masked.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterator

import numpy as np

from jaxtrain.data.dataset import Dataset, batch_plan
from jaxtrain.config.data import DataConfig
from jaxtrain.data.tfhelp import import_tf
from jaxtrain.data.featurestats import Normalizer


def normalize_fn(norm: Normalizer, feature_shape: tuple[int, ...]) -> Callable:
    """A TF function: encoded float32 rows (batch, ...) -> normalized, as `transforms.normalize_`."""
    tf = import_tf()
    flat = int(np.prod(feature_shape))
    arrays = norm.arrays()
    width = norm.width

    def fn(x):
        x = tf.reshape(tf.cast(x, tf.float32), [-1, flat])
        if arrays is not None:
            shift, scale = (tf.constant(a, tf.float32) for a in arrays)
            x = tf.concat([(x[:, :width] - shift) / scale, x[:, width:]], axis=1)
        return tf.reshape(x, [-1, *feature_shape])
    return fn


def tf_batches(gather: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], n: int,
               dtypes: tuple[np.dtype, np.dtype], normalize: Callable, cfg: DataConfig,
               batch_size: int, seed: int, epoch: int, start: int = 0, rows: slice = slice(None)
               ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(x, y, mask) batches: tf.data over the batches of the plan, parallel map, prefetch."""
    tf = import_tf()
    idx, mask = batch_plan(n, batch_size, seed, epoch, start, rows)
    parallel = tf.data.AUTOTUNE if cfg.num_parallel_calls == -1 else cfg.num_parallel_calls

    def load(i, m):
        x, y = tf.numpy_function(gather, [i], [tf.as_dtype(dtypes[0]), tf.as_dtype(dtypes[1])],
                                 stateful=False)
        y.set_shape([None])
        return normalize(x), y, m

    ds = (tf.data.Dataset.from_tensor_slices((idx, mask))
          .map(load, num_parallel_calls=parallel, deterministic=True)
          .prefetch(cfg.prefetch if cfg.prefetch > 0 else tf.data.AUTOTUNE))
    yield from ds.as_numpy_iterator()


def attach(ds: Dataset, cfg: DataConfig) -> Dataset:
    """Make `ds` stream its training split through tf.data (ds.train becomes None)."""
    enc, y, _ = ds.raw_train

    def gather(i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return enc[i], y[i]

    norm = normalize_fn(ds.stats.normalize, tuple(enc.shape[1:]))
    return _attach(ds, cfg, gather, (enc.dtype, y.dtype), norm, len(y))


def attach_rows(ds: Dataset, cfg: DataConfig, gather: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
                dtypes: tuple[Any, Any]) -> Dataset:
    """Like `attach`, for rows `gather` returns already normalized (the streaming cache)."""
    identity = normalize_fn(Normalizer(), ds.feature_shape)
    return _attach(ds, cfg, gather, tuple(np.dtype(d) for d in dtypes), identity, ds.num_train)


def _attach(ds: Dataset, cfg: DataConfig, gather, dtypes, normalize, n: int) -> Dataset:
    ds.batcher = functools.partial(tf_batches, gather, n, dtypes, normalize, cfg)
    ds.train, ds.raw_train = None, None
    ds.num_train = n
    return ds
