"""Devices and processes: the mesh, the data-parallel strategies, `jax.distributed`."""
