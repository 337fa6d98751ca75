"""Device mesh, shardings and the layout of the state under each `parallel.strategy`.

The batch is split over the mesh under every strategy. Parameters and optimizer
state are replicated under `sharded` (default) and `pmap`; under `fsdp` every
parameter and optimizer-state array is split over the `fsdp` axis (or `data` when
the mesh has none) on its largest dimension that the axis size divides, and arrays
with no such dimension stay replicated (`Layout`). How the compiled calls run under
each strategy (`jax.jit` with shardings, or `jax.shard_map`) is engine/executors.py.

The mesh has a `data` axis and optionally an `fsdp` axis (`parallel.mesh`); the
batch is split over all of them. Everything here works on the global mesh of a
multi-process run: arrays are built from host data that every process holds
(`put_global`) or from each process's rows of the batch (`put_batch`, through
`jax.make_array_from_process_local_data`).
"""

from __future__ import annotations

import math
import os
from typing import Any

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


def platform() -> str:
    """The platform of the devices a mesh is built over ('cpu', 'gpu', 'tpu'): what the
    model's kernels are chosen for (model/kernels.py) before the mesh exists."""
    return jax.devices()[0].platform


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


def device_memory(device: Any | None = None) -> tuple[int, int, str]:
    """(total bytes, free bytes, where) of the first local device's memory, or of the host's
    on CPU, where device memory is host memory."""
    device = device or jax.local_devices()[0]  # devices() includes other processes' devices
    stats = device.memory_stats() or {}
    if "bytes_limit" in stats:
        limit = int(stats["bytes_limit"])
        return limit, limit - int(stats.get("bytes_in_use", 0)), f"{device.device_kind} memory"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), host_available_bytes(), "host memory"


def host_available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


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


# ---------------------------------------------------------------- the state's layout

STRATEGIES = ("sharded", "pmap", "fsdp")


def _largest_dividing_dim(shape: tuple[int, ...], n: int) -> int | None:
    dims = sorted(range(len(shape)), key=lambda d: -shape[d])
    return next((d for d in dims if shape[d] >= n and shape[d] % n == 0), None)


class Layout:
    """How the training state lies over the mesh under `parallel.strategy`: replicated
    (sharded, pmap), or each leaf split on its largest dimension the fsdp axis divides (fsdp).
    How the compiled calls run is the engine's executors' concern (engine/executors.py)."""

    def __init__(self, name: str, mesh):
        if name not in STRATEGIES:
            raise ConfigError(f"config key 'parallel.strategy': unknown strategy '{name}'; "
                              f"use {', '.join(STRATEGIES[:-1])} or {STRATEGIES[-1]}")
        self.name, self.mesh = name, mesh
        self.batch_axes = batch_axes(mesh)
        self.shards = batch_shards(mesh)
        self.state_shardings: Any = None  # of the state place_state laid out

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
        """Lay the state out over the mesh; the compiled calls keep it in that layout."""
        self.state_shardings = self.state_sharding(state)
        return jax.tree.map(put_global, state, self.state_shardings)
