"""Execution: how batches reach the compiled step, K steps per call.

Two modes with one interface, `Engine.run_epoch(state, epoch, start_step)`, a
generator yielding `(state, metric_sums, steps_done)` after every compiled call:

- on-device: the preprocessed training set is uploaded once; each epoch uploads
  only its permutation, and batches are gathered on the device;
- streaming: host batches from `Dataset.train_batches` are stacked K at a time
  and transferred.

Every chunk length is compiled once, ahead of time, and the compile time is
accumulated in `compile_s` so that it never pollutes throughput figures.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np

from jaxtrain import parallel
from jaxtrain.data import Dataset, epoch_permutation
from jaxtrain.step import TrainState, make_device_epoch_runner, make_stream_runner


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    return max(1, math.ceil(n_train / batch_size))


def padded_order(n: int, seed: int, epoch: int, total: int) -> np.ndarray:
    """The epoch's permutation padded with -1 (masked slots) to `total` entries."""
    order = np.full(total, -1, np.int32)
    order[:n] = epoch_permutation(n, seed, epoch)
    return order


def fits_on_device(dataset: Dataset, fraction: float) -> bool:
    """Whether the training set fits in `fraction` of the first device's memory."""
    if dataset.train is None or fraction <= 0:
        return False
    need = dataset.train.x.nbytes + dataset.train.y.nbytes
    stats = jax.devices()[0].memory_stats() or {}
    limit = stats.get("bytes_limit")
    if limit is None:  # CPU: the device memory is host memory
        limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return need <= fraction * limit


def resolve_steps_per_call(setting: int | str, steps: int, on_device: bool) -> int:
    if setting == "epoch":
        return steps
    if setting == "auto":
        # Whole epochs on the device; a short window when streaming keeps host memory bounded.
        return steps if on_device else min(steps, 8)
    return min(int(setting), steps)


class Engine:
    def __init__(self, train_step: Callable, dataset: Dataset, mesh, *, batch_size: int, seed: int,
                 on_device: bool, steps_per_call: int | str, clock: Callable[[], float] = time.perf_counter):
        self.dataset, self.mesh, self.batch_size, self.seed = dataset, mesh, batch_size, seed
        self.on_device, self.clock = on_device, clock
        self.n_train = len(dataset.train)
        self.steps = steps_per_epoch(self.n_train, batch_size)
        self.k = resolve_steps_per_call(steps_per_call, self.steps, on_device)
        self.compile_s = 0.0
        self._compiled: dict[int, Any] = {}
        self._repl = parallel.replicated(mesh)
        batch_shard = parallel.batch_sharding(mesh)

        def constrain(batch):
            return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, batch_shard), batch)

        if on_device:
            self._runner = jax.jit(make_device_epoch_runner(train_step, dataset.task, batch_size, constrain),
                                   static_argnames="num_steps", donate_argnums=0)
            self._x = jax.device_put(dataset.train.x, self._repl)
            self._y = jax.device_put(dataset.train.y, self._repl)
        else:
            self._runner = jax.jit(make_stream_runner(train_step, dataset.task, constrain), donate_argnums=0)

    def _call(self, state: TrainState, num: int, *args) -> tuple[TrainState, dict]:
        """Run `num` fused steps, compiling that chunk length once, ahead of time."""
        if num not in self._compiled:
            t0 = self.clock()
            if self.on_device:
                lowered = self._runner.lower(state, *args, num_steps=num)
            else:
                lowered = self._runner.lower(state, *args)
            self._compiled[num] = lowered.compile()
            self.compile_s += self.clock() - t0
        return self._compiled[num](state, *args)

    def run_epoch(self, state: TrainState, epoch: int, start_step: int = 0
                  ) -> Iterator[tuple[TrainState, dict, int]]:
        """Train one epoch from step `start_step` of it; yield after each compiled call."""
        if self.on_device:
            order = jax.device_put(padded_order(self.n_train, self.seed, epoch,
                                                self.steps * self.batch_size), self._repl)
            for start in range(start_step, self.steps, self.k):
                num = min(self.k, self.steps - start)
                state, sums = self._call(state, num, self._x, self._y, order,
                                         jax.device_put(np.int32(start), self._repl))
                yield state, sums, start + num
            return
        batches = self.dataset.train_batches(self.batch_size, self.seed, epoch)
        for _ in range(start_step):  # skip what a resumed run already trained on
            next(batches, None)
        done = start_step
        sharding = parallel.batch_sharding(self.mesh, 1)
        while True:
            chunk = [b for _, b in zip(range(self.k), batches)]
            if not chunk:
                return
            stacked = jax.device_put(tuple(np.stack(a) for a in zip(*chunk)), sharding)
            state, sums = self._call(state, len(chunk), *stacked)
            done += len(chunk)
            yield state, sums, done
