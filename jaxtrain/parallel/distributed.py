"""Joining JAX's multi-controller runtime (`jax.distributed`) from the config or the environment.

Where the settings come from, first match wins:

1. `parallel.distributed.coordinator`, `num_processes`, `process_id` in the config;
2. the variables `jaxtrain launch` sets for each process: `JAX_COORDINATOR_ADDRESS`
   (which JAX itself reads), `JAXTRAIN_NUM_PROCESSES`, `JAXTRAIN_PROCESS_ID`;
3. a cluster JAX detects by itself (SLURM, Open MPI, Cloud TPU pods, Kubernetes):
   then `jax.distributed.initialize()` is called with no arguments.

With none of these a run is one process and nothing is initialized. The
coordinator's heartbeat makes a run fail as a whole: when a process dies, the
others stop within `heartbeat_timeout_s` (JAX terminates them with a message
naming the dead task) instead of hanging in a collective.
"""

from __future__ import annotations

import os
import socket
import sys
import time

import jax
import numpy as np

from jaxtrain.config.schema import DistributedConfig
from jaxtrain.util.errors import UserError, on_error_leave

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAXTRAIN_NUM_PROCESSES"
ENV_PROCESS_ID = "JAXTRAIN_PROCESS_ID"


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name}={value!r} must be an integer") from None


def cluster_detected() -> bool:
    """Whether JAX's own cluster auto-detection would find an environment (SLURM, TPU pod, ...)."""
    if os.environ.get("SLURM_NTASKS") == "1":  # a one-task job (e.g. an interactive allocation)
        return False
    try:
        from jax._src import xla_bridge
        if xla_bridge.backends_are_initialized():  # too late to join; e.g. inside a test session
            return False
    except (ImportError, AttributeError):
        pass
    try:
        from jax._src.clusters import ClusterEnv  # the registry jax.distributed.initialize uses
        return any(not env.opt_in_only_method and env.is_env_present() for env in ClusterEnv._cluster_types)
    except Exception:  # noqa: BLE001 - a private API; fall back to the common variables
        return int(os.environ.get("SLURM_NTASKS", "1")) > 1 or int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1


def settings(cfg: DistributedConfig) -> dict | None:
    """The arguments for `jax.distributed.initialize`, or None for a single-process run."""
    coordinator = cfg.coordinator or os.environ.get(ENV_COORDINATOR)
    num = cfg.num_processes if cfg.num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    pid = cfg.process_id if cfg.process_id is not None else _env_int(ENV_PROCESS_ID)
    timeouts = {"initialization_timeout": cfg.initialization_timeout_s,
                "heartbeat_timeout_seconds": cfg.heartbeat_timeout_s}
    explicit = {"coordinator_address": coordinator, "num_processes": num, "process_id": pid}
    if cfg.enabled is False:
        return None
    if all(v is not None for v in explicit.values()):
        if num == 1:
            return None
        if not 0 <= pid < num:
            raise UserError(f"config key 'parallel.distributed.process_id': {pid} must be in [0, {num}); "
                            f"each process needs its own id")
        return {**explicit, **timeouts}
    if cfg.enabled is True or cluster_detected():
        # Let JAX fill in what is missing from the cluster environment.
        return {**{k: v for k, v in explicit.items() if v is not None}, **timeouts}
    if any(v is not None for v in explicit.values()):
        missing = [k for k, v in explicit.items() if v is None]
        raise UserError(f"multi-process settings are incomplete: missing {', '.join(missing)}; set "
                        f"parallel.distributed.{{coordinator,num_processes,process_id}} (or "
                        f"{ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}), or use `jaxtrain launch`")
    return None


def _reachable(address: str, timeout_s: float) -> bool:
    """Whether a TCP connection to host:port succeeds within `timeout_s` (retrying)."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                return True
        except (OSError, ValueError):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.25)


def initialize(cfg: DistributedConfig) -> None:
    """Join the multi-process runtime when asked to; a no-op when already joined or single-process."""
    if jax.distributed.is_initialized():
        return
    args = settings(cfg)
    if args is None:
        return
    args["shutdown_timeout_seconds"] = cfg.heartbeat_timeout_s  # bounds the exit barrier too
    where = args.get("coordinator_address", "the detected coordinator")
    if args.get("process_id", 0) != 0 and "coordinator_address" in args:
        # JAX aborts the process (a C++ check failure) when the coordinator never answers;
        # probing first turns that into one clear line, after the same bounded wait.
        if not _reachable(args["coordinator_address"], args["initialization_timeout"]):
            raise UserError(f"could not reach the coordinator at {where} within "
                            f"{args['initialization_timeout']} s (process {args['process_id']} of "
                            f"{args.get('num_processes', '?')}); check that process 0 runs and that the address "
                            f"is right (parallel.distributed.coordinator or {ENV_COORDINATOR})")
    try:
        jax.distributed.initialize(**args)
    except Exception as e:  # noqa: BLE001 - XLA raises runtime errors of several types
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "DEADLINE_EXCEEDED" in str(e) or "UNAVAILABLE" in str(e) or "timed out" in str(e).lower():
            raise UserError(f"could not reach the coordinator at {where} within "
                            f"{args['initialization_timeout']} s (process {args.get('process_id', '?')} of "
                            f"{args.get('num_processes', '?')}); check that process 0 runs and the address "
                            f"and port are right (parallel.distributed.coordinator, {ENV_COORDINATOR})") from None
        raise UserError(f"jax.distributed.initialize failed ({where}): {text}") from None
    # A failing process must not wait in JAX's exit barrier for peers that wait on it in a
    # collective: it prints its error and leaves at once; the others then fail fast too.
    sys.excepthook = _exit_after_traceback
    on_error_leave(exit_if_joined)  # the CLI's one-line errors too (cli/main.py)


def _exit_after_traceback(exc_type, exc, tb) -> None:
    sys.__excepthook__(exc_type, exc, tb)
    exit_if_joined(1)


def exit_if_joined(status: int) -> None:
    """End a multi-process run's process now with `status`, skipping the exit barrier."""
    if jax.distributed.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def is_lead() -> bool:
    """Process 0 writes logs, summaries and plots; every process takes part in checkpoints."""
    return jax.process_index() == 0


def lead_decides(flag: bool) -> bool:
    """Process 0's value of `flag` on every process (a decision made by a clock, say)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils
    return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))
def same_int_on_all(value: int) -> int:
    """Process 0's `value` on every process: one decision for what each process measured."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils
    return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def agreed_min(value: int) -> int:
    """The smallest of every process's `value` (e.g. 1 if every process's memory fits, else 0)."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils
    return int(np.min(multihost_utils.process_allgather(np.int32(value))))


def same_on_all(text: str, max_bytes: int = 1024) -> str:
    """Process 0's value of `text` on every process (e.g. a default run directory named by time)."""
    if jax.process_count() == 1:
        return text
    from jax.experimental import multihost_utils
    raw = text.encode()[:max_bytes]
    buf = np.zeros(max_bytes, np.uint8)
    buf[:len(raw)] = np.frombuffer(raw, np.uint8)
    out = np.asarray(multihost_utils.broadcast_one_to_all(buf))
    return bytes(out).rstrip(b"\0").decode()
