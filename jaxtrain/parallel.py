"""Device mesh and shardings.

The default strategy is data parallelism with `jax.jit` and `NamedSharding`:
batches are split over the mesh's `data` axis, parameters and optimizer state
are replicated, and XLA inserts the gradient all-reduce.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxtrain.config import ParallelConfig
from jaxtrain.errors import ConfigError

DATA_AXIS = "data"


def make_mesh(cfg: ParallelConfig) -> jax.sharding.Mesh:
    devices = jax.devices()
    n = cfg.data_axis_size or len(devices)
    if n > len(devices) or len(devices) % n:
        raise ConfigError(f"config key 'parallel.data_axis_size': {n} does not fit the "
                          f"{len(devices)} available device(s); use a divisor of {len(devices)}")
    return jax.make_mesh((n,), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=devices[:n])


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh, leading_axes: int = 0) -> NamedSharding:
    """Shard the batch dimension (after `leading_axes` stacked dims) over the data axis."""
    return NamedSharding(mesh, P(*([None] * leading_axes), DATA_AXIS))


def check_batch_size(batch_size: int, mesh, key: str = "data.batch_size") -> None:
    n = mesh.shape[DATA_AXIS]
    if batch_size % n:
        lower = batch_size - batch_size % n
        options = [b for b in (lower, lower + n) if b > 0]
        raise ConfigError(f"config key '{key}': {batch_size} is not divisible by the {n} devices on "
                          f"the data axis; use {' or '.join(map(str, options))}")


def device_summary(mesh) -> dict:
    devs = list(np.asarray(mesh.devices).flat)
    return {"count": len(devs), "kind": devs[0].device_kind, "platform": devs[0].platform,
            "processes": jax.process_count()}
