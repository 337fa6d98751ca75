"""Execution: how batches reach the compiled step, K steps per call.

Two modes with one interface, `Engine.run_epoch(state, epoch, start_step)`, a
generator yielding `(state, metric_sums, steps_done)` after every compiled call:

- on-device: the preprocessed training set is uploaded once; each epoch uploads
  only its permutation, and batches are gathered on the device;
- streaming: host batches from `Dataset.train_batches` are stacked K at a time
  and transferred by a background thread one chunk ahead (prefetch.py), so host
  work and transfer overlap with compute.

How a call runs on the mesh (`jax.jit` with shardings, or `jax.shard_map`) and how its
inputs are placed is the executor's (executors.py); the Engine decides what to call when.

K (`train.steps_per_call`) is an integer, `epoch`, or `auto`: then `prepare()`
times a few candidates on throwaway calls over a copy of the state (autotune.py)
before training starts, so the measurement never changes the results.

Every chunk length is compiled once, ahead of time, and the compile time is
accumulated in `compile_s` so that it never pollutes throughput figures. A call
whose arguments no longer match the compiled signature is recompiled with a
warning that names the cause (compilation.py).

The hot loop makes no implicit transfers: the per-call start offsets are uploaded
once, and only `jax.device_put` moves data (see tests/test_perf_hygiene.py).
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jaxtrain.engine import autotune

from jaxtrain.parallel import distributed
from jaxtrain.parallel.placement import device_memory
from jaxtrain.parallel.watchdog import ProgressWatchdog
from jaxtrain.engine.compilation import signature_mismatch
from jaxtrain.data import Dataset, epoch_permutation
from jaxtrain.util.phase_timer import PhaseTimer
from jaxtrain.util.time_account import TimeAccount
from jaxtrain.engine.prefetch import prefetch_to_device, stack
from jaxtrain.engine.executors import Executor
from jaxtrain.engine.step import TrainState, accumulate_metrics

# Streaming chunks stay below this many host bytes (K x batch), bounding memory.
STREAM_CHUNK_BYTES = 64 << 20


class RecompileWarning(UserWarning):
    """A compiled step had to be compiled again after its first call."""


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    return max(1, math.ceil(n_train / batch_size))


def padded_order(n: int, seed: int, epoch: int, total: int) -> np.ndarray:
    """The epoch's permutation padded with -1 (masked slots) to `total` entries."""
    order = np.full(total, -1, np.int32)
    order[:n] = epoch_permutation(n, seed, epoch)
    return order


def fits_on_device(dataset: Dataset, fraction: float) -> bool:
    """Whether the training set fits in `fraction` of the first device's memory, on every
    process: each measures its own memory, and all must compile the same program."""
    if dataset.train is None or fraction <= 0:
        return False
    need = dataset.train.x.nbytes + dataset.train.y.nbytes
    limit, _, _ = device_memory()
    return bool(distributed.agreed_min(int(need <= fraction * limit)))


def resolve_steps_per_call(setting: int | str, steps: int, step_multiple: int | None = None) -> int | None:
    """K for a fixed setting; None for 'auto' (decided by measurement in `Engine.prepare`).
    With `step_multiple` (checkpoint.every_steps), K is the largest divisor of it not above
    the setting, so that step-based saves fall on call boundaries."""
    if setting == "auto":
        return None
    k = steps if setting == "epoch" else min(int(setting), steps)
    return autotune.divisor_at_most(step_multiple, k) if step_multiple else k


class Engine:
    def __init__(self, train_step: Callable, dataset: Dataset, executor: Executor, *, seed: int,
                 on_device: bool, steps_per_call: int | str, clock: Callable[[], float] = time.perf_counter,
                 step_multiple: int | None = None,
                 account: TimeAccount | None = None, watchdog: ProgressWatchdog | None = None,
                 trace_dir: Path | None = None, trace_calls: int = 0):
        """`executor` (executors.py) compiles the runners of `train_step` for the mesh and
        places their inputs; it holds the batch size and, for a vectorized sweep, the number
        of stacked points. `trace_dir`, `trace_calls`: see PhaseTimer."""
        self.executor = executor
        self.dataset, self.mesh, self.batch_size, self.seed = dataset, executor.mesh, executor.batch_size, seed
        self.points = executor.points
        self.on_device, self.clock = on_device, clock
        self.n_train = dataset.num_train
        self.steps = steps_per_epoch(self.n_train, self.batch_size)
        # Every K (fixed or measured) divides step_multiple: checkpoints save between calls.
        self.step_multiple = step_multiple
        self.k = resolve_steps_per_call(steps_per_call, self.steps, step_multiple)
        self.k_timings: dict[int, float] = {}   # auto: seconds per step for each K tried
        self.compile_s = 0.0
        self.recompiles = 0
        # Inactive unless the loop starts it (train.profile).
        self.timer = PhaseTimer(clock, trace_dir=trace_dir, trace_calls=trace_calls)
        self.account = account or TimeAccount(clock)  # compiling and measuring K go to 'compile'
        self.watchdog = watchdog or ProgressWatchdog(None, 0, 1)  # multi-process: ends a stuck run
        # XLA's CPU runtime can deadlock when a call holding cross-process collectives overlaps
        # other work on a process with several devices: a jitted data-parallel step hung at its
        # second call, and ran with one device per process or when each call was waited for
        # (tests/test_parallel_multiprocess.py runs two processes of two CPU devices). So there
        # each call waits for its inputs and its results.
        self._wait_each_call = jax.process_count() > 1 and self.mesh.devices.flat[0].platform == "cpu"
        self._compiled: dict[int, Any] = {}
        self._starts: dict[int, jax.Array] = {}
        self._copier: Callable | None = None
        # Streamed chunks: this process's rows of each batch, assembled into global arrays.
        self._put_chunk = executor.stream_placer()
        if on_device:
            self._runner = executor.device_runner(train_step)
            self._x = executor.put_dataset(dataset.train.x)
            self._y = executor.put_dataset(dataset.train.y)
        else:
            self._runner = executor.stream_runner(train_step)

    # ------------------------------------------------------------ compiling and calling

    def _compile(self, num: int, state: TrainState, args: tuple) -> Any:
        t0 = self.clock()
        with self.account.part("compile"):
            if self.on_device:
                lowered = self._runner.lower(state, *args, num_steps=num)
            else:
                lowered = self._runner.lower(state, *args)
            compiled = lowered.compile()
        seconds = self.clock() - t0
        self.compile_s += seconds
        self.timer.add("compile", seconds)
        return compiled

    def flops_per_step(self) -> float | None:
        """FLOPs of one training step on all devices, from XLA's cost analysis of the compiled
        call. The analysis counts a while loop's body once, so a K-step call reports one step
        (tests/test_accounting.py checks this against the MLP's analytic count); it describes
        one device's program, so it is multiplied by the devices of the mesh."""
        compiled = self._compiled.get(self.k) or next(iter(self._compiled.values()), None)
        if compiled is None:
            return None
        flops = (compiled.cost_analysis() or {}).get("flops")
        return float(flops) * self.mesh.size if flops and flops > 0 else None

    def _call(self, state: TrainState, num: int, *args) -> tuple[TrainState, dict]:
        """Run `num` fused steps, compiling that chunk length once, ahead of time."""
        if num not in self._compiled:
            self._compiled[num] = self._compile(num, state, args)
        compiled = self._compiled[num]
        if self._wait_each_call:
            jax.block_until_ready((state, args))
        try:
            out = self.timer.call(compiled, num, state, *args)
        except (TypeError, ValueError) as exc:
            if "differ" not in str(exc) and "sharding" not in str(exc).lower():
                raise
            cause = signature_mismatch(compiled, (state, *args))
            self.recompiles += 1
            warnings.warn(f"recompiling the {num}-step train call after its first use: {cause}. "
                          f"Keep shapes, dtypes and shardings of the state and batches fixed.",
                          RecompileWarning, stacklevel=2)
            self._compiled[num] = self._compile(num, state, args)
            out = self.timer.call(self._compiled[num], num, state, *args)
        if self._wait_each_call:
            jax.block_until_ready(out)
        return out

    def executable(self) -> Any | None:
        """The compiled call for the longest chunk (None before the first call)."""
        return self._compiled[max(self._compiled)] if self._compiled else None

    def _start(self, start: int) -> jax.Array:
        """The device scalar for a chunk's first step, uploaded once and reused every epoch."""
        if start not in self._starts:
            self._starts[start] = self.executor.put_scalar(np.int32(start))
        return self._starts[start]

    # ------------------------------------------------------------ choosing K

    def prepare(self, state: TrainState) -> None:
        """Decide K for `steps_per_call: auto` by timing candidates on a copy of `state`."""
        if self.k is not None:
            return
        with self.account.part("compile"):
            self._choose_k(state)

    def _choose_k(self, state: TrainState) -> None:
        max_k = None
        if not self.on_device:
            row = self._row_bytes()
            max_k = max(1, min(64, STREAM_CHUNK_BYTES // max(1, row * self.batch_size)))
        ks = autotune.candidates(self.steps, max_k, self.step_multiple)
        measure = self._measure_on_device if self.on_device else self._stream_measurer(max(ks))
        multi = jax.process_count() > 1
        k, self.k_timings = autotune.choose(lambda k: measure(state, k), ks, early_stop=not multi)
        # Each process timed its own calls; all must run the same chunk lengths: process 0 decides.
        self.k = distributed.same_int_on_all(k)

    def _row_bytes(self) -> int:
        split = self.dataset.train if self.dataset.train is not None else self.dataset.test
        return int(split.x[:1].nbytes + split.y[:1].nbytes)

    def _copy(self, state: TrainState) -> TrainState:
        """A device copy of `state` in its own shardings (the calls measuring K donate it)."""
        if self._copier is None:  # one compile for all the candidates measured
            shardings = jax.tree.map(lambda a: a.sharding, state)
            self._copier = jax.jit(lambda s: jax.tree.map(jnp.copy, s), out_shardings=shardings)
        return self._copier(state)

    def _time_calls(self, state: TrainState, k: int, make_args: Callable[[int], tuple]) -> float:
        """Seconds per step of throwaway calls of k steps on a copy of `state`, best of two rounds.

        Each round dispatches its calls back to back and adds up their metric sums as
        the training loop does, waiting only at the end: with asynchronous dispatch the
        per-call host cost only shows where the device outruns the host, as in training.
        """
        phase = f"measuring {k} steps per call (train.steps_per_call: auto)"
        self.watchdog.enter(phase)
        scratch = self._copy(state)
        calls = max(1, min(8, 64 // k))
        best = math.inf
        scratch, _ = self._call(scratch, k, *make_args(0))  # warm-up: allocations, caches
        jax.block_until_ready(scratch)
        for _ in range(2 if calls * k <= 128 else 1):
            t0 = time.perf_counter()
            sums = None
            for i in range(calls):
                self.watchdog.enter(phase)
                scratch, chunk = self._call(scratch, k, *make_args(i))
                sums = chunk if sums is None else accumulate_metrics(sums, chunk)
            jax.block_until_ready((scratch, sums))
            best = min(best, (time.perf_counter() - t0) / (calls * k))
        del scratch
        return best

    def _measure_on_device(self, state: TrainState, k: int) -> float:
        order = self.executor.put_order(padded_order(self.n_train, self.seed, 0, self.steps * self.batch_size))
        starts = [s for s in range(0, self.steps - k + 1, k)] or [0]
        return self._time_calls(state, k, lambda i: (self._x, self._y, order,
                                                     self._start(starts[i % len(starts)])))

    def _stream_measurer(self, max_k: int) -> Callable[[TrainState, int], float]:
        sample = list(itertools.islice(self._local_batches(0), max_k))

        def measure(state: TrainState, k: int) -> float:
            chunk = self._put_chunk(stack((sample * k)[:k]))
            return self._time_calls(state, k, lambda i: chunk)
        return measure

    # ------------------------------------------------------------ the epoch

    def _local_batches(self, epoch: int, start: int = 0) -> Iterator:
        """This process's rows of the epoch's batches from batch `start` on (all rows in one process)."""
        return self.executor.local_batches(self.dataset, self.seed, epoch, start)

    def run_epoch(self, state: TrainState, epoch: int, start_step: int = 0
                  ) -> Iterator[tuple[TrainState, dict, int]]:
        """Train one epoch from step `start_step` of it; yield after each compiled call."""
        if self.k is None:
            self.prepare(state)
        first_step = epoch * self.steps
        if self.on_device:
            with self.timer.phase("h2d_transfer"):
                order = self.executor.put_order(padded_order(self.n_train, self.seed, epoch,
                                                             self.steps * self.batch_size))
            for start in range(start_step, self.steps, self.k):
                num = min(self.k, self.steps - start)
                self.watchdog.enter(f"the train call at step {first_step + start}")
                with self.timer.annotate(first_step + start):
                    state, sums = self._call(state, num, self._x, self._y, order, self._start(start))
                yield state, sums, start + num
            return
        batches = self._local_batches(epoch, start_step)  # a resumed epoch seeks: nothing is re-read
        done = start_step
        for num, chunk in prefetch_to_device(batches, self.k, self._put_chunk, timer=self.timer):
            self.watchdog.enter(f"the train call at step {first_step + done}")
            with self.timer.annotate(first_step + done):
                state, sums = self._call(state, num, *chunk)
            done += num
            yield state, sums, done
