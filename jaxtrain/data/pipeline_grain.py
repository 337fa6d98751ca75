"""The grain backend: the JAX ecosystem's host input pipeline, with worker processes.

Each epoch is a grain `MapDataset` with one element per batch of the `batch_plan`, so
batches come in the NumPy backend's order: from a resumed epoch's batch on (the plan
starts there; nothing before it is read) and, in several processes, only this process's
rows of each batch. With `data.workers > 0` the batches are gathered in that many worker
processes (`mp_prefetch`, spawned: the gather function and what it holds are pickled to
them) and handed back in order.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Iterator

import numpy as np

from jaxtrain.config.data import DataConfig
from jaxtrain.data.dataset import Dataset, batch_plan
from jaxtrain.util.optional import require

Gather = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def import_grain():
    return require("grain", "grain", "data.backend=grain")


@dataclasses.dataclass(frozen=True)
class _Plan:
    """A random-access source: element i is batch i of the plan (row indices and mask)."""
    idx: np.ndarray
    mask: np.ndarray

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.idx[i], self.mask[i]


@dataclasses.dataclass(frozen=True)
class _ReadBatch:
    gather: Gather

    def __call__(self, planned: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx, mask = planned
        x, y = self.gather(idx)
        return x, y, mask


def grain_batches(gather: Gather, n: int, cfg: DataConfig, batch_size: int, seed: int, epoch: int,
                  start: int = 0, rows: slice = slice(None)) -> Iterator[tuple[np.ndarray, ...]]:
    """(x, y, mask) batches of the epoch from batch `start` on, `rows` of each."""
    grain = import_grain()
    plan = _Plan(*batch_plan(n, batch_size, seed, epoch, start, rows))
    # Threads as data.num_parallel_calls says (-1: one per core); the buffer holds at least one
    # batch per thread (grain's advice) and data.prefetch batches.
    threads = cfg.num_parallel_calls if cfg.num_parallel_calls > 0 else os.cpu_count() or 1
    read = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(threads, cfg.prefetch))
    batches = grain.MapDataset.source(plan).map(_ReadBatch(gather)).to_iter_dataset(read)
    if cfg.workers > 0:
        _absl_flags_parsed()
        batches = batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.workers))
    yield from batches


def _absl_flags_parsed() -> None:
    """grain 0.2.18's mp_prefetch reads an absl flag, which fails unless flags were parsed
    (grain issue #1355, fixed in later releases); jaxtrain parses no absl flags itself."""
    from absl import flags
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def attach(ds: Dataset, cfg: DataConfig, gather: Gather | None = None) -> Dataset:
    """Make `ds` feed its training split through grain: its in-memory rows, or `gather`'s
    (the streaming cache). ds.train becomes None: the trainer takes the host-fed path."""
    n = ds.num_train
    if gather is None:
        gather, n = _InMemory(ds.train.x, ds.train.y), len(ds.train)
    ds.batcher = lambda batch_size, seed, epoch, start, rows: grain_batches(
        gather, n, cfg, batch_size, seed, epoch, start, rows)
    ds.train, ds.raw_train, ds.num_train = None, None, n
    return ds


@dataclasses.dataclass(frozen=True)
class _InMemory:
    x: np.ndarray
    y: np.ndarray

    def __call__(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.x[idx], self.y[idx]
