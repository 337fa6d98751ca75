"""The run plan: what every part of a run derives from the config and the devices, computed once.

`make_plan` runs once per run, before anything is compiled (preflight's memory
estimate needs it), and every part reads its facts from the frozen `RunPlan`: the
optimizer's schedule (steps per epoch), the engine (batch, K, on-device or
streamed), the memory estimate (the per-device batch), the resume checks and the
summary. Deciding whether the training set fits on the device is a collective
every process joins, so it happens here and nowhere else.

A new fact that more than one part derives from the config, the data or the mesh
belongs here, as a field computed in `make_plan`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax

from jaxtrain.engine import autotune
from jaxtrain.parallel import distributed, placement


@dataclasses.dataclass(frozen=True)
class RunPlan:
    batch_size: int            # the global batch (data.batch_size)
    batch_shards: int          # devices the batch is split over: every axis of the mesh
    mesh: tuple                # ((axis, size), ...) of parallel.mesh / parallel.data_axis_size
    microbatches: int          # train.grad_accum_steps
    n_train: int               # training examples
    steps_per_epoch: int
    epochs: int
    steps_per_call: int | None  # K; None for 'auto' (measured before training: Engine.prepare)
    k_candidates: tuple[int, ...]  # 'auto': the K values Engine.prepare times (else empty)
    step_multiple: int | None  # checkpoint.every_steps: every K divides it, saves fall between calls
    on_device: bool            # the training set is uploaded once (else streamed, K batches a call)
    eval_batch_size: int
    # Several CPU processes: each call waits for its inputs and results (see make_plan).
    calls_wait: bool = False
    points: int | None = None  # a vectorized sweep's points (one compiled program for all)

    @property
    def per_device_batch(self) -> int:
        return self.batch_size // self.batch_shards

    @property
    def microbatch(self) -> int:
        """Rows of one microbatch on one device."""
        return math.ceil(self.per_device_batch / self.microbatches)

    def mesh_text(self) -> str:
        return ", ".join(f"{axis}: {size}" for axis, size in self.mesh)


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    return max(1, math.ceil(n_train / batch_size))


def resolve_steps_per_call(setting: int | str, steps: int, step_multiple: int | None = None) -> int | None:
    """K for a fixed setting; None for 'auto' (decided by measurement in `Engine.prepare`).
    With `step_multiple` (checkpoint.every_steps), K is the largest divisor of it not above
    the setting, so that step-based saves fall on call boundaries."""
    if setting == "auto":
        return None
    k = steps if setting == "epoch" else min(int(setting), steps)
    return autotune.divisor_at_most(step_multiple, k) if step_multiple else k


# A streamed call's K batches are gathered on the host at once: at most this many bytes.
STREAM_CHUNK_BYTES = 64 << 20


def stream_max_k(dataset: Any, batch_size: int) -> int:
    """The largest K whose streamed chunk stays within STREAM_CHUNK_BYTES (and 64 steps)."""
    split = dataset.train if dataset.train is not None else dataset.test
    row = int(split.x[:1].nbytes + split.y[:1].nbytes)
    return max(1, min(64, STREAM_CHUNK_BYTES // max(1, row * batch_size)))


def fits_on_device(dataset: Any, fraction: float) -> bool:
    """Whether the training set fits in `fraction` of the first device's memory, on every
    process: each measures its own memory, and all must compile the same program."""
    if dataset.train is None or fraction <= 0:
        return False
    need = dataset.train.x.nbytes + dataset.train.y.nbytes
    limit, _, _ = placement.device_memory()
    return bool(distributed.agreed_min(int(need <= fraction * limit)))


def make_plan(cfg: Any, dataset: Any, num_devices: int | None = None, points: int | None = None) -> RunPlan:
    """The plan of a run of `cfg` on `dataset` over `num_devices` (all of them by default).
    `points`: a vectorized sweep's (its data stays on the device, one call per epoch for auto)."""
    shape = placement.mesh_shape(cfg.parallel, num_devices or jax.device_count())
    steps = steps_per_epoch(dataset.num_train, cfg.data.batch_size)
    step_multiple = cfg.checkpoint.every_steps if cfg.checkpoint.enabled else None
    setting = cfg.train.steps_per_call
    if points and setting == "auto":
        # P points per step: the host's per-call cost is already spread thin, and measuring
        # K would compile the vmapped program once per candidate. One call per epoch.
        setting = "epoch"
    on_device = True if points else fits_on_device(dataset, cfg.train.on_device_fraction)
    # XLA's CPU runtime can deadlock when a call holding cross-process collectives overlaps
    # other work on a process with several devices: a jitted data-parallel step hung at its
    # second call, and ran with one device per process or when each call was waited for
    # (tests/test_parallel_multiprocess.py runs two processes of two CPU devices). So there
    # each call waits for its inputs and its results.
    calls_wait = jax.process_count() > 1 and jax.devices()[0].platform == "cpu"
    k = resolve_steps_per_call(setting, steps, step_multiple)
    k_candidates: tuple[int, ...] = ()
    if k is None:
        max_k = None if on_device else stream_max_k(dataset, cfg.data.batch_size)
        k_candidates = tuple(autotune.candidates(steps, max_k, step_multiple))
        if calls_wait:
            # No call overlaps the next, so a longer one only saves per-call costs: take the
            # longest candidate untimed (timing them cost over a minute of cross-process
            # collectives in a 2-process run, bench/launch_cost.py). Same on every process.
            k, k_candidates = max(k_candidates), ()
    return RunPlan(batch_size=cfg.data.batch_size, batch_shards=math.prod(shape.values()),
                   mesh=tuple(shape.items()), microbatches=cfg.train.grad_accum_steps,
                   n_train=dataset.num_train, steps_per_epoch=steps, epochs=cfg.train.epochs,
                   steps_per_call=k, k_candidates=k_candidates,
                   step_multiple=step_multiple, on_device=on_device,
                   eval_batch_size=cfg.data.eval_batch_size, calls_wait=calls_wait, points=points)
