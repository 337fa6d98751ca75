"""Device mesh, shardings and the data-parallel strategies (`parallel.strategy`).

- `sharded` (default): `jax.jit` with `NamedSharding`. The batch is split over the
  mesh, parameters and optimizer state are replicated, and XLA inserts the
  gradient all-reduce.
- `pmap`: a pmap-style SPMD step written with `jax.shard_map` (which is how
  `jax.pmap` itself is built today). Each device runs the step on its shard; the
  step averages gradients explicitly with `lax.pmean` (see step.py: each shard's
  loss is its masked sum over the *global* count, so padding weighs exactly as in
  `sharded`).
- `fsdp`: like `sharded`, but every parameter and optimizer-state array is split
  over the `fsdp` axis (or `data` when the mesh has none) on its largest dimension
  that the axis size divides; arrays with no such dimension stay replicated. XLA
  gathers them where the step needs them.

The mesh has a `data` axis and optionally an `fsdp` axis (`parallel.mesh`); the
batch is split over all of them. Everything here works on the global mesh of a
multi-process run: arrays are built from host data that every process holds
(`put_global`) or from each process's rows of the batch (`put_batch`, through
`jax.make_array_from_process_local_data`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxtrain.config.schema import ParallelConfig
from jaxtrain.util.errors import ConfigError

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"


# ---------------------------------------------------------------- the mesh


def mesh_shape(cfg: ParallelConfig, num_devices: int) -> dict[str, int]:
    """Axis sizes from `parallel.mesh` / `parallel.data_axis_size`; -1 (or unset) takes the rest."""
    shape = dict(cfg.mesh) or {DATA_AXIS: cfg.data_axis_size or -1}
    if cfg.mesh and cfg.data_axis_size is not None:
        raise ConfigError("config keys 'parallel.mesh' and 'parallel.data_axis_size' both set; "
                          "keep one (parallel.mesh: {data: N} is the same as data_axis_size: N)")
    fixed = math.prod(v for v in shape.values() if v != -1)
    rest = [k for k, v in shape.items() if v == -1]
    if len(rest) > 1:
        raise ConfigError(f"config key 'parallel.mesh': only one axis may be -1, got {shape}")
    if rest:
        shape[rest[0]] = num_devices // fixed if fixed and num_devices % fixed == 0 else 0
    used = math.prod(shape.values())
    if used < 1 or num_devices % used:
        raise ConfigError(f"config key 'parallel.{'mesh' if cfg.mesh else 'data_axis_size'}': {shape} "
                          f"does not fit the {num_devices} available device(s); use sizes whose "
                          f"product divides {num_devices}")
    return shape


def make_mesh(cfg: ParallelConfig) -> jax.sharding.Mesh:
    """A mesh over all devices of all processes (or the first N when the mesh asks for fewer)."""
    devices = jax.devices()
    shape = mesh_shape(cfg, len(devices))
    n = math.prod(shape.values())
    return jax.make_mesh(tuple(shape.values()), tuple(shape),
                         axis_types=(jax.sharding.AxisType.Auto,) * len(shape), devices=devices[:n])


def batch_axes(mesh) -> tuple[str, ...]:
    """The batch is split over every mesh axis (data, and fsdp when present)."""
    return tuple(mesh.axis_names)


def batch_shards(mesh) -> int:
    """How many pieces the global batch is cut into: the devices in the mesh."""
    return math.prod(mesh.shape[a] for a in batch_axes(mesh))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh, leading_axes: int = 0) -> NamedSharding:
    """Shard the batch dimension (after `leading_axes` stacked dims) over the mesh."""
    return NamedSharding(mesh, P(*([None] * leading_axes), batch_axes(mesh)))


def output_sharding(mesh, leading_axes: int = 0) -> NamedSharding:
    """For results the host reads back: split over devices in one process, replicated
    across several (a process can only read the shards it holds)."""
    return replicated(mesh) if jax.process_count() > 1 else batch_sharding(mesh, leading_axes)


def check_batch_size(batch_size: int, mesh, key: str = "data.batch_size") -> None:
    n = batch_shards(mesh)
    if batch_size % n:
        lower = batch_size - batch_size % n
        options = [b for b in (lower, lower + n) if b > 0]
        raise ConfigError(f"config key '{key}': {batch_size} is not divisible by the {n} devices "
                          f"the batch is split over; use {' or '.join(map(str, options))}")


def check_microbatches(microbatches: int, batch_size: int, mesh) -> None:
    """Each device's rows of a batch must split into `train.grad_accum_steps` equal microbatches."""
    per_device = batch_size // batch_shards(mesh)
    if per_device % microbatches:
        divisors = [d for d in range(1, per_device + 1) if per_device % d == 0]
        raise ConfigError(f"config key 'train.grad_accum_steps': {microbatches} microbatches do not split "
                          f"the {per_device} rows each of the {batch_shards(mesh)} device(s) gets of "
                          f"data.batch_size={batch_size}; use one of {', '.join(map(str, divisors))}, "
                          f"or a data.batch_size that is a multiple of {microbatches * batch_shards(mesh)}")


def device_summary(mesh) -> dict:
    devs = list(np.asarray(mesh.devices).flat)
    return {"count": len(devs), "kind": devs[0].device_kind, "platform": devs[0].platform,
            "processes": jax.process_count(), "mesh": dict(mesh.shape)}


# ---------------------------------------------------------------- placing host data


# XLA's CPU client runs each device's share of a call on a pool with one thread per device. A
# share whose device already has its maximum of calls queued waits for a slot while holding a
# pool thread. When the host runs far ahead (an epoch of small calls dispatched, the devices
# slowed by a loaded machine), every pool thread can end up waiting so, while the call in
# progress still needs threads for the devices that have not yet joined its all-reduce: a
# deadlock, which XLA ends at its rendezvous timeout with SIGABRT. A few calls in flight keep
# the queues far from full.
CPU_CALLS_IN_FLIGHT = 4


def calls_in_flight_limit(mesh) -> int | None:
    """How many compiled calls the host may dispatch ahead of the devices (None: no limit)."""
    local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    return CPU_CALLS_IN_FLIGHT if len(local) > 1 and local[0].platform == "cpu" else None


def is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def put_global(value: Any, sharding: NamedSharding) -> jax.Array:
    """Place a host value that every process holds identically onto `sharding`.

    Each process provides only the pieces its own devices hold, so this works for
    meshes that span processes. Typed PRNG keys travel as their raw data.
    """
    if is_key(value):
        impl = jax.random.key_impl(value)
        return jax.random.wrap_key_data(put_global(jax.random.key_data(value), sharding), impl=impl)
    host = np.asarray(value)
    # An intended upload: allowed even where the hot loop runs under jax.transfer_guard("disallow").
    with jax.transfer_guard_host_to_device("allow"):
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def local_rows(sharding: NamedSharding, global_shape: tuple[int, ...], axis: int) -> slice:
    """The rows along `axis` that this process's devices hold: a contiguous block."""
    spans = {(s[axis].start or 0, global_shape[axis] if s[axis].stop is None else s[axis].stop)
             for s in sharding.addressable_devices_indices_map(global_shape).values()}
    lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
    if sum(b - a for a, b in spans) != hi - lo:
        raise RuntimeError("this process's devices do not hold a contiguous block of the batch; "
                           "build the mesh with each process's devices next to each other")
    return slice(lo, hi)


def put_batch(local: np.ndarray, sharding: NamedSharding, global_shape: tuple[int, ...]) -> jax.Array:
    """Assemble a global batch from each process's rows of it (`local_rows`)."""
    if jax.process_count() == 1:
        return jax.device_put(local, sharding)
    with jax.transfer_guard_host_to_device("allow"):  # intended, as in put_global
        return jax.make_array_from_process_local_data(sharding, local, global_shape)


def to_host(tree: Any) -> Any:
    """NumPy copies of every leaf. A leaf split over several processes (fsdp) is gathered
    from all of them: a collective, so every process must call this together."""
    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            from jax.experimental import multihost_utils
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return jax.device_get(x)

    return jax.tree.map(one, tree)


# ---------------------------------------------------------------- strategies


def _largest_dividing_dim(shape: tuple[int, ...], n: int) -> int | None:
    dims = sorted(range(len(shape)), key=lambda d: -shape[d])
    return next((d for d in dims if shape[d] >= n and shape[d] % n == 0), None)


class Strategy:
    """How state is laid out over the mesh and how the fused runners are compiled.

    The engine asks it for the state's shardings, the compiled runner for each
    execution mode, and how to place the epoch's order and the streamed batches.
    """

    def __init__(self, name: str, mesh):
        if name not in ("sharded", "pmap", "fsdp"):
            raise ConfigError(f"config key 'parallel.strategy': unknown strategy '{name}'; "
                              f"use sharded, pmap or fsdp")
        self.name, self.mesh = name, mesh
        self.axes = batch_axes(mesh)
        self.shards = batch_shards(mesh)

    # The axis name the train step averages gradients over (pmap only): see step.py.
    @property
    def step_axis(self) -> tuple[str, ...] | None:
        return self.axes if self.name == "pmap" else None

    def state_sharding(self, state: Any) -> Any:
        """A NamedSharding per leaf: replicated, or split on the largest dividing dim (fsdp)."""
        repl = replicated(self.mesh)
        if self.name != "fsdp":
            return jax.tree.map(lambda _: repl, state)
        axis = FSDP_AXIS if FSDP_AXIS in self.mesh.shape else DATA_AXIS
        n = self.mesh.shape[axis]

        def leaf(x):
            dim = None if is_key(x) else _largest_dividing_dim(np.shape(x), n)
            if dim is None:
                return repl
            spec = [None] * np.ndim(x)
            spec[dim] = axis
            return NamedSharding(self.mesh, P(*spec))

        return jax.tree.map(leaf, state)

    def place_state(self, state: Any) -> Any:
        """Lay the state out over the mesh; the compiled runners keep it in that layout."""
        self._state_sharding = self.state_sharding(state)
        return jax.tree.map(put_global, state, self._state_sharding)

    def _jit(self, run: Callable, **kwargs) -> Callable:
        state_sharding = getattr(self, "_state_sharding", None)
        if state_sharding is not None:  # keep the layout across calls (fsdp), so nothing recompiles
            kwargs["out_shardings"] = (state_sharding, replicated(self.mesh))
        return jax.jit(run, donate_argnums=0, **kwargs)

    # ------------------------------------------------ on-device data

    def put_dataset(self, array: np.ndarray) -> jax.Array:
        """The training set, replicated on every device (every process holds all of it)."""
        return put_global(array, replicated(self.mesh))

    def put_scalar(self, value) -> jax.Array:
        return put_global(value, replicated(self.mesh))

    def put_order(self, order: np.ndarray, batch_size: int) -> jax.Array:
        """The epoch's padded order. pmap: as (steps, batch), each device holding its columns."""
        if self.name == "pmap":
            return put_global(order.reshape(-1, batch_size), NamedSharding(self.mesh, P(None, self.axes)))
        return put_global(order, replicated(self.mesh))

    def device_runner(self, make_runner: Callable, train_step, task: str, batch_size: int) -> Callable:
        """Compile `make_device_epoch_runner(...)`: run(state, x, y, order, start, num_steps)."""
        if self.name == "pmap":
            inner = make_runner(train_step, task, batch_size // self.shards)

            def run(state, x_all, y_all, order, start, num_steps: int):
                def per_device(state, x_all, y_all, order, start):
                    # This device's columns of each step's batch, laid end to end.
                    return inner(state, x_all, y_all, order.reshape(-1), start, num_steps)

                return jax.shard_map(per_device, mesh=self.mesh,
                                     in_specs=(P(), P(), P(), P(None, self.axes), P()),
                                     out_specs=(P(), P()), check_vma=False)(state, x_all, y_all, order, start)
        else:
            run = make_runner(train_step, task, batch_size, self._constrain())
        return self._jit(run, static_argnames="num_steps")

    # ------------------------------------------------ streamed data

    def stream_sharding(self) -> NamedSharding:
        return batch_sharding(self.mesh, 1)

    def local_batch_rows(self, batch_size: int) -> slice:
        """The rows of every global batch this process supplies."""
        return local_rows(self.stream_sharding(), (1, batch_size), 1)

    def local_batches(self, dataset, batch_size: int, seed: int, epoch: int, start: int = 0) -> Iterator:
        """This process's rows of each (x, y, mask) batch of the epoch from batch `start` on, in
        `train_batches` order: every backend gathers only those rows."""
        return dataset.train_batches(batch_size, seed, epoch, start, self.local_batch_rows(batch_size))

    def stream_placer(self, batch_size: int) -> Callable[[tuple], tuple]:
        """(K, local rows, ...) host arrays from this process -> global (K, batch_size, ...) arrays."""
        sharding = self.stream_sharding()

        def place(local: tuple[np.ndarray, ...]) -> tuple[jax.Array, ...]:
            return tuple(put_batch(a, sharding, (a.shape[0], batch_size, *a.shape[2:])) for a in local)

        return place

    def stream_runner(self, make_runner: Callable, train_step, task: str) -> Callable:
        """Compile `make_stream_runner(...)`: run(state, xs, ys, masks) over (K, B, ...) arrays."""
        if self.name == "pmap":
            batch = P(None, self.axes)
            run = jax.shard_map(make_runner(train_step, task), mesh=self.mesh,
                                in_specs=(P(), batch, batch, batch), out_specs=(P(), P()), check_vma=False)
        else:
            run = make_runner(train_step, task, self._constrain())
        return self._jit(run)

    def _constrain(self) -> Callable[[Any], Any]:
        """Tell XLA to split each gathered batch over the mesh (sharded, fsdp)."""
        shard = batch_sharding(self.mesh, 0)

        def constrain(batch):
            return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, shard), batch)

        return constrain
