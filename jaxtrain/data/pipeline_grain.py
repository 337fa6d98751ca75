"""The grain backend: the JAX ecosystem's host input pipeline, with worker processes.

A run reads its training batches through one grain pipeline: a random-access source
whose element g is the g-th batch of the run's `batch_plan`s laid end to end, so batches
come in the NumPy backend's order. The pipeline starts at a resumed epoch's batch
(nothing before it is read) and, in several processes, reads only this process's rows
of each batch. With `data.workers > 0` batches are gathered in that many worker
processes (`mp_prefetch`: spawned once per pipeline, the gather function and what it
holds pickled to them) and handed back in order.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import weakref
from typing import Callable, Iterator

import numpy as np

from jaxtrain.config.data import DataConfig
from jaxtrain.data.dataset import Dataset, batch_plan
from jaxtrain.util.optional import require

Gather = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]

# Epochs a run's pipeline lays end to end: more than any run trains, finite for grain.
EPOCHS_AHEAD = 1_000_000


def import_grain():
    return require("grain", "grain", "data.backend=grain")


@functools.lru_cache(maxsize=2)
def _epoch_plan(n: int, batch_size: int, seed: int, epoch: int, rows: tuple) -> tuple[np.ndarray, np.ndarray]:
    return batch_plan(n, batch_size, seed, epoch, 0, slice(*rows))


@dataclasses.dataclass(frozen=True)
class _EpochBatches:
    """Element g: the g-th batch (row indices, mask) from batch `start` of `epoch` on."""
    n: int
    batch_size: int
    seed: int
    rows: tuple          # (start, stop) of this process's rows in every batch
    epoch: int
    start: int

    @property
    def steps(self) -> int:
        return -(-self.n // self.batch_size)

    def __len__(self) -> int:
        return EPOCHS_AHEAD * self.steps - self.start

    def __getitem__(self, g: int) -> tuple[np.ndarray, np.ndarray]:
        epoch, b = divmod(self.start + g, self.steps)
        idx, mask = _epoch_plan(self.n, self.batch_size, self.seed, self.epoch + epoch, self.rows)
        return idx[b], mask[b]


@dataclasses.dataclass(frozen=True)
class _ReadBatch:
    gather: Gather

    def __call__(self, planned: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx, mask = planned
        x, y = self.gather(idx)
        return x, y, mask


def _pipeline(gather: Gather, cfg: DataConfig, plan: _EpochBatches) -> Iterator:
    """A grain iterator over `plan`'s batches: map threads, and worker processes if asked."""
    grain = import_grain()
    # Threads as data.num_parallel_calls says (-1: one per core); the buffer holds at least
    # one batch per thread (grain's advice) and data.prefetch batches.
    threads = cfg.num_parallel_calls if cfg.num_parallel_calls > 0 else os.cpu_count() or 1
    read = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(threads, cfg.prefetch))
    batches = grain.MapDataset.source(plan).map(_ReadBatch(gather)).to_iter_dataset(read)
    if cfg.workers > 0:
        _absl_flags_parsed()
        batches = batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.workers))
    return iter(batches)


def _absl_flags_parsed() -> None:
    """grain 0.2.18's mp_prefetch reads an absl flag, which fails unless flags were parsed
    (grain issue #1355, fixed in later releases); jaxtrain parses no absl flags itself."""
    from absl import flags
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class GrainFeed:
    """The batcher: (batch_size, seed, epoch, start, rows) -> that epoch's batches from `start`.
    An epoch that begins where the pipeline stands continues it (worker processes start
    once a run); any other position (a resume, another batch size) starts a new pipeline
    there, reading nothing before it."""

    def __init__(self, gather: Gather, n: int, cfg: DataConfig):
        self.gather, self.n, self.cfg = gather, n, cfg
        self._iterator: Iterator | None = None
        self._at: tuple | None = None    # (batch_size, seed, rows, epoch, batch) of the next batch

    def __call__(self, batch_size: int, seed: int, epoch: int, start: int = 0, rows: slice = slice(None)
                 ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        where = (batch_size, seed, (rows.start, rows.stop))
        if self._iterator is None or self._at != (*where, epoch, start):
            self.close()
            self._iterator = _pipeline(self.gather, self.cfg, _EpochBatches(self.n, *where, epoch, start))
        steps = -(-self.n // batch_size)
        for b in range(start, steps):
            batch = next(self._iterator)
            self._at = (*where, epoch, b + 1) if b + 1 < steps else (*where, epoch + 1, 0)
            yield batch

    def close(self) -> None:
        """Stop the pipeline and its worker processes."""
        if self._iterator is not None and hasattr(self._iterator, "close"):
            self._iterator.close()
        self._iterator = self._at = None


def attach(ds: Dataset, cfg: DataConfig, gather: Gather | None = None) -> Dataset:
    """Make `ds` feed its training split through grain: its in-memory rows, or `gather`'s
    (the streaming cache). ds.train becomes None: the trainer takes the host-fed path."""
    n = ds.num_train
    if gather is None:
        gather, n = _InMemory(ds.train.x, ds.train.y), len(ds.train)
    ds.batcher = GrainFeed(gather, n, cfg)
    weakref.finalize(ds, ds.batcher.close)
    ds.train, ds.raw_train, ds.num_train = None, None, n
    return ds


@dataclasses.dataclass(frozen=True)
class _InMemory:
    x: np.ndarray
    y: np.ndarray

    def __call__(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.x[idx], self.y[idx]
