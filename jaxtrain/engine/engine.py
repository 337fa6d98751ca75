"""Execution: how batches reach the compiled step, K steps per call.

Two modes with one interface, `Engine.run_epoch(state, epoch, start_step)`, a
generator yielding a `CallResult(state, metric_sums, steps_done)` after every compiled call:

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

The engine reads no clock of its own: it is given the run's timeline (timeline.py, the
clock and the watchdog behind one `with timeline.phase(Phase.X):`) and charges its work
to the phase it is in: `compile` when it compiles a chunk length (once, ahead of time, or
again with a warning when the arguments no longer match the compiled signature:
compilation.py) and while it measures K, `input_wait` while it waits for the next streamed
chunk, `h2d_transfer` while it uploads an epoch's order, `dispatch` while it calls the
compiled step, and `device_compute` while it waits for the device: to keep at most
`placement.calls_in_flight_limit` calls in flight, after each call with `train.profile`
(so the device's share shows apart from the host's), and at the epoch's end (its one
sync). Compilation never pollutes throughput figures (training/accounting.py). Each call
runs inside a `jax.profiler.StepTraceAnnotation` named `train` with its first step, which
costs nothing unless a trace is being recorded (train.profile).

The hot loop makes no implicit transfers: the per-call start offsets are uploaded
once, and only `jax.device_put` moves data (see tests/test_perf_hygiene.py).
"""

from __future__ import annotations

import collections
import itertools
import math
import warnings
from typing import Any, Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxtrain.engine import autotune

from jaxtrain.parallel import distributed, placement
from jaxtrain.engine.compilation import abstract, one_step_program, signature_mismatch
from jaxtrain.engine.plan import RunPlan
from jaxtrain.data import Dataset, epoch_permutation
from jaxtrain.engine.prefetch import prefetch_to_device, stack
from jaxtrain.engine.executors import Executor
from jaxtrain.engine.step import TrainState, accumulate_metrics
from jaxtrain.engine.timeline import Timeline
from jaxtrain.util.phases import Phase

class RecompileWarning(UserWarning):
    """A compiled step had to be compiled again after its first call."""


def padded_order(n: int, seed: int, epoch: int, total: int) -> np.ndarray:
    """The epoch's permutation padded with -1 (masked slots) to `total` entries."""
    order = np.full(total, -1, np.int32)
    order[:n] = epoch_permutation(n, seed, epoch)
    return order


class CallResult(NamedTuple):
    """What one compiled call of K steps returns: the new state, the metric sums of its steps
    (on the device), and the steps of the epoch done after it."""
    state: TrainState
    sums: dict
    steps_done: int


class CallPacer:
    """Waits for the call `limit` calls back after each dispatch, so that at most `limit` calls
    are in flight (None: no wait; see placement.calls_in_flight_limit for why)."""

    def __init__(self, limit: int | None, wait=jax.block_until_ready):
        self.limit, self.wait, self.in_flight = limit, wait, collections.deque()

    def __call__(self, outputs) -> None:
        if self.limit is None:
            return
        self.in_flight.append(outputs)
        if len(self.in_flight) > self.limit:
            self.wait(self.in_flight.popleft())


class Engine:
    def __init__(self, train_step: Callable, dataset: Dataset, executor: Executor, plan: RunPlan, *,
                 seed: int, timeline: Timeline | None = None, sync_each_call: bool = False):
        """`executor` (executors.py) compiles the runners of `train_step` for the mesh and places
        their inputs; `plan` (plan.py) gives the batch, K and whether the training set sits on the
        device. `plan.points`: the state is P points stacked (a vectorized sweep), each trained on
        the same batches by a vmapped step. `timeline`: where the engine's time goes (none by
        default); `sync_each_call`: wait for the device after every call (train.profile)."""
        self.executor, self.plan = executor, plan
        self.dataset, self.mesh, self.seed = dataset, executor.mesh, seed
        self.batch_size, self.on_device, self.points = plan.batch_size, plan.on_device, plan.points
        self.n_train, self.steps = plan.n_train, plan.steps_per_epoch
        # Every K (fixed or measured) divides step_multiple: checkpoints save between calls.
        self.step_multiple = plan.step_multiple
        self.k = plan.steps_per_call
        self.k_timings: dict[int, float] = {}   # auto: seconds per step for each K tried
        self.compiles = 0     # chunk lengths compiled (recompiles included)
        self.recompiles = 0
        self.timeline = timeline or Timeline()
        self.sync_each_call = sync_each_call
        self._wait_each_call = plan.calls_wait  # several CPU processes (plan.py says why)
        self._compiled: dict[int, Any] = {}
        self._shapes: tuple | None = None  # (state, args) of the last compiled call, abstract
        self._step_flops: float | None = None
        self._starts: dict[int, jax.Array] = {}
        self._copier: Callable | None = None
        # Streamed chunks: this process's rows of each batch, assembled into global arrays.
        self._put_chunk = executor.stream_placer()
        if self.on_device:
            self._runner = executor.device_runner(train_step)
            self._x = executor.put_dataset(dataset.train.x)
            self._y = executor.put_dataset(dataset.train.y)
        else:
            self._runner = executor.stream_runner(train_step)

    # ------------------------------------------------------------ compiling and calling

    def _compile(self, num: int, state: TrainState, args: tuple) -> Any:
        self.compiles += 1
        self._shapes, self._step_flops = abstract((state, args)), None  # a new program: count again
        if self.on_device:
            return self._runner.lower(state, *args, num_steps=num).compile()
        return self._runner.lower(state, *args).compile()

    def flops_per_step(self) -> float | None:
        """FLOPs of one training step on all devices, from XLA's cost analysis of a call of
        exactly one step (compilation.one_step_program: a K-step call's analysis counts its
        loop body, which holds as many steps as the loop is unrolled). The analysis describes
        one device's program, so it is multiplied by the devices of the mesh."""
        if self._step_flops is None and (1 in self._compiled or self._shapes is not None):
            compiled = self._compiled.get(1)
            if compiled is None:  # a compile, whoever asks for the count (the loop asks while reporting)
                with self.timeline.phase(Phase.COMPILE, "compiling one step to count its FLOPs"):
                    compiled = one_step_program(self._runner, *self._shapes, self.on_device)
            flops = (compiled.cost_analysis() or {}).get("flops")
            self._step_flops = float(flops) * self.mesh.size if flops and flops > 0 else None
        return self._step_flops

    def _call(self, state: TrainState, num: int, *args) -> tuple[TrainState, dict]:
        """Run `num` fused steps, compiling that chunk length once, ahead of time."""
        if num not in self._compiled:
            with self.timeline.phase(Phase.COMPILE):
                self._compiled[num] = self._compile(num, state, args)
        compiled = self._compiled[num]
        if self._wait_each_call:
            jax.block_until_ready((state, args))
        try:
            out = compiled(state, *args)
        except (TypeError, ValueError) as exc:
            if "differ" not in str(exc) and "sharding" not in str(exc).lower():
                raise
            cause = signature_mismatch(compiled, (state, *args))
            self.recompiles += 1
            warnings.warn(f"recompiling the {num}-step train call after its first use: {cause}. "
                          f"Keep shapes, dtypes and shardings of the state and batches fixed.",
                          RecompileWarning, stacklevel=2)
            with self.timeline.phase(Phase.COMPILE):
                self._compiled[num] = self._compile(num, state, args)
            out = self._compiled[num](state, *args)
        if self._wait_each_call:
            jax.block_until_ready(out)
        return out

    def _train_call(self, state: TrainState, num: int, step: int, *args) -> tuple[TrainState, dict]:
        """One call of the epoch, from global step `step`, charged to `dispatch`."""
        with self.timeline.phase(Phase.DISPATCH, f"the train call at step {step}"):
            with jax.profiler.StepTraceAnnotation("train", step_num=step):
                return self._call(state, num, *args)

    def _wait_for_device(self, pace: CallPacer, sums: dict, epoch_end: bool) -> None:
        """The device waits, charged to `device_compute`: keeping at most the pacer's calls in
        flight, and with profiling (the device's share of every call) or at the epoch's end (its
        one sync, before hooks that would wait for it) the call just dispatched."""
        sync = self.sync_each_call or epoch_end
        if pace.limit is None and not sync:
            return
        with self.timeline.phase(Phase.DEVICE_COMPUTE):
            pace(sums)
            if sync:
                jax.block_until_ready(sums)

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
        self._choose_k(state)

    def _choose_k(self, state: TrainState) -> None:
        ks = list(self.plan.k_candidates)
        measure = self._measure_on_device if self.on_device else self._stream_measurer(max(ks))
        multi = jax.process_count() > 1
        k, self.k_timings = autotune.choose(lambda k: measure(state, k), ks, early_stop=not multi)
        # Each process timed its own calls; all must run the same chunk lengths: process 0 decides.
        self.k = distributed.same_int_on_all(k)

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
        doing = f"measuring {k} steps per call (train.steps_per_call: auto)"
        self.timeline.enter(doing)
        scratch = self._copy(state)
        calls = max(1, min(8, 64 // k))
        best = math.inf
        scratch, _ = self._call(scratch, k, *make_args(0))  # warm-up: allocations, caches
        jax.block_until_ready(scratch)
        for _ in range(2 if calls * k <= 128 else 1):
            t0 = self.timeline.now()
            sums = None
            for i in range(calls):
                self.timeline.enter(doing)
                scratch, chunk = self._call(scratch, k, *make_args(i))
                sums = chunk if sums is None else accumulate_metrics(sums, chunk)
            jax.block_until_ready((scratch, sums))
            best = min(best, (self.timeline.now() - t0) / (calls * k))
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

    def run_epoch(self, state: TrainState, epoch: int, start_step: int = 0) -> Iterator[CallResult]:
        """Train one epoch from step `start_step` of it: a `CallResult` after every compiled call."""
        if self.k is None:
            with self.timeline.phase(Phase.COMPILE):
                self.prepare(state)
        pace = CallPacer(placement.calls_in_flight_limit(self.mesh))
        first_step = epoch * self.steps
        if self.on_device:
            with self.timeline.phase(Phase.H2D_TRANSFER):
                order = self.executor.put_order(padded_order(self.n_train, self.seed, epoch,
                                                             self.steps * self.batch_size))
            for start in range(start_step, self.steps, self.k):
                num = min(self.k, self.steps - start)
                state, sums = self._train_call(state, num, first_step + start, self._x, self._y, order,
                                               self._start(start))
                self._wait_for_device(pace, sums, epoch_end=start + num >= self.steps)
                yield CallResult(state, sums, start + num)
            return
        batches = self._local_batches(epoch, start_step)  # a resumed epoch seeks: nothing is re-read
        done = start_step
        chunks = prefetch_to_device(batches, self.k, self._put_chunk)
        try:
            while True:
                with self.timeline.phase(Phase.INPUT_WAIT):
                    num, chunk = next(chunks, (0, None))
                if not num:
                    return
                state, sums = self._train_call(state, num, first_step + done, *chunk)
                done += num
                self._wait_for_device(pace, sums, epoch_end=done >= self.steps)
                yield CallResult(state, sums, done)
        finally:
            chunks.close()  # stops the prefetch thread however the epoch ended
