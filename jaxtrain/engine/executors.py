"""Executors: how the engine's fused K-step calls run on the mesh (`parallel.strategy`).

- `ShardedExecutor` (`sharded`, `fsdp`): `jax.jit` with `NamedSharding`s. Each gathered
  batch is constrained to be split over the mesh; XLA inserts the gradient all-reduce
  (and, under fsdp, gathers the split parameters where the step needs them).
- `ShardMapExecutor` (`pmap`): a pmap-style SPMD step written with `jax.shard_map` (which
  is how `jax.pmap` itself is built today). Each device runs the step on its shard of the
  batch; the step averages gradients explicitly with `lax.pmean` over `step_axis` (see
  step.py: each shard's loss is its masked sum over the *global* count, so padding weighs
  exactly as in `sharded`).

An executor compiles the two runners of step.py for one pure train step, and places what
their calls take: the training set (on-device mode), the epoch's order, a chunk's first
step, the streamed batches. The state's layout over the mesh is `placement.Layout`'s; the
compiled calls keep the state in it, so nothing recompiles.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxtrain.engine.step import make_device_epoch_runner, make_stream_runner, vmapped
from jaxtrain.parallel.placement import Layout, batch_sharding, local_rows, put_batch, put_global, replicated


class Executor:
    """Compiles the runners and places their inputs. `points`: the state is P points stacked
    (a vectorized sweep), each trained on the same batches by a vmapped runner."""

    step_axis: tuple[str, ...] | None = None  # the axes the step averages over (pmap-style only)

    def __init__(self, layout: Layout, task: str, batch_size: int, points: int | None = None):
        self.layout, self.mesh, self.task = layout, layout.mesh, task
        self.batch_size, self.points = batch_size, points

    # ------------------------------------------------ compiling

    def device_runner(self, train_step) -> Callable:
        """The compiled `run(state, x_all, y_all, order, start, num_steps)` over on-device data."""
        return self._jit(self._device_run(train_step), static_argnames="num_steps")

    def stream_runner(self, train_step) -> Callable:
        """The compiled `run(state, xs, ys, masks)` over (K, B, ...) streamed arrays."""
        return self._jit(self._stream_run(train_step))

    def _device_run(self, train_step) -> Callable:
        raise NotImplementedError

    def _stream_run(self, train_step) -> Callable:
        raise NotImplementedError

    def _make_device_runner(self) -> Callable:
        return make_device_epoch_runner if self.points is None else vmapped(make_device_epoch_runner)

    def _jit(self, run: Callable, **kwargs) -> Callable:
        if self.layout.state_shardings is not None:  # keep the placed layout across calls (fsdp)
            kwargs["out_shardings"] = (self.layout.state_shardings, replicated(self.mesh))
        return jax.jit(run, donate_argnums=0, **kwargs)

    # ------------------------------------------------ on-device data

    def put_dataset(self, array: np.ndarray) -> jax.Array:
        """The training set, replicated on every device (every process holds all of it)."""
        return put_global(array, replicated(self.mesh))

    def put_scalar(self, value) -> jax.Array:
        return put_global(value, replicated(self.mesh))

    def put_order(self, order: np.ndarray) -> jax.Array:
        """The epoch's padded order, as the device runner reads it."""
        return put_global(order, replicated(self.mesh))

    # ------------------------------------------------ streamed data

    def stream_sharding(self) -> NamedSharding:
        return batch_sharding(self.mesh, 1)

    def local_batch_rows(self) -> slice:
        """The rows of every global batch this process supplies."""
        return local_rows(self.stream_sharding(), (1, self.batch_size), 1)

    def local_batches(self, dataset, seed: int, epoch: int, start: int = 0) -> Iterator:
        """This process's rows of each (x, y, mask) batch of the epoch from batch `start` on, in
        `train_batches` order: every backend gathers only those rows."""
        return dataset.train_batches(self.batch_size, seed, epoch, start, self.local_batch_rows())

    def stream_placer(self) -> Callable[[tuple], tuple]:
        """(K, local rows, ...) host arrays from this process -> global (K, batch_size, ...) arrays."""
        sharding, batch_size = self.stream_sharding(), self.batch_size

        def place(local: tuple[np.ndarray, ...]) -> tuple[jax.Array, ...]:
            return tuple(put_batch(a, sharding, (a.shape[0], batch_size, *a.shape[2:])) for a in local)

        return place


class ShardedExecutor(Executor):
    """`jax.jit` over the global batch, split over the mesh by sharding constraints."""

    def _device_run(self, train_step) -> Callable:
        return self._make_device_runner()(train_step, self.task, self.batch_size, self._constrain())

    def _stream_run(self, train_step) -> Callable:
        return make_stream_runner(train_step, self.task, self._constrain())

    def _constrain(self) -> Callable[[Any], Any]:
        """Tell XLA to split each gathered batch over the mesh."""
        shard = batch_sharding(self.mesh, 0)

        def constrain(batch):
            return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, shard), batch)

        return constrain


class ShardMapExecutor(Executor):
    """`jax.shard_map`: each device runs the step on its columns of every batch."""

    def __init__(self, layout: Layout, task: str, batch_size: int, points: int | None = None):
        super().__init__(layout, task, batch_size, points)
        self.step_axis = layout.batch_axes

    def put_order(self, order: np.ndarray) -> jax.Array:
        """As (steps, batch), each device holding its columns of every step's batch."""
        return put_global(order.reshape(-1, self.batch_size), NamedSharding(self.mesh, P(None, self.step_axis)))

    def _device_run(self, train_step) -> Callable:
        inner = self._make_device_runner()(train_step, self.task, self.batch_size // self.layout.shards)
        mesh, columns = self.mesh, P(None, self.step_axis)

        def run(state, x_all, y_all, order, start, num_steps: int):
            def per_device(state, x_all, y_all, order, start):
                # This device's columns of each step's batch, laid end to end.
                return inner(state, x_all, y_all, order.reshape(-1), start, num_steps)

            return jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(), P(), columns, P()),
                                 out_specs=(P(), P()), check_vma=False)(state, x_all, y_all, order, start)

        return run

    def _stream_run(self, train_step) -> Callable:
        batch = P(None, self.step_axis)
        return jax.shard_map(make_stream_runner(train_step, self.task), mesh=self.mesh,
                             in_specs=(P(), batch, batch, batch), out_specs=(P(), P()), check_vma=False)


def make_executor(layout: Layout, task: str, batch_size: int, points: int | None = None) -> Executor:
    """The executor of `parallel.strategy` (the layout's name)."""
    cls = ShardMapExecutor if layout.name == "pmap" else ShardedExecutor
    return cls(layout, task, batch_size, points)
