"""Where the time of the hot loop goes: phases timed on a clock you can pass in.

The engine and the loop report their phases to a timer. The default timer is
inactive: `phase()` is a bare context manager, nothing is timed and nothing
waits on the device, so training is not slowed down. When profiling, an active
timer makes the engine wait for the device after each call (so the device's
share of the time can be told apart from the host's) and, inside a trace
window, wraps each call in a `jax.profiler.StepTraceAnnotation`.

Phases (seconds summed over calls):
    input_wait        the host waited for the next batch (not overlapped with compute)
    h2d_transfer      host-to-device copies on the main thread
    dispatch          from the call to the compiled step until it returned (Python, tracing-free dispatch)
    device_compute    from the return of the call until its results were ready
    metric_transfer   reading metric sums back from the device
    hooks             checkpoint saves and other periodic work blocking the loop
    evaluation        evaluating the validation split at epoch ends
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable

import jax

PHASES = ("input_wait", "h2d_transfer", "dispatch", "device_compute", "metric_transfer", "hooks", "evaluation")


class PhaseTimer:
    def __init__(self, clock: Callable[[], float] = time.perf_counter, active: bool = False):
        self.clock = clock
        self.active = active
        self.tracing = False          # True inside the jax.profiler trace window
        self.totals = {p: 0.0 for p in PHASES}
        self.background = {"prepare": 0.0, "transfer": 0.0}  # prefetch thread, overlapped
        self.steps = 0
        self.calls = 0

    def add(self, phase: str, seconds: float) -> None:
        self.totals[phase] += seconds

    @contextlib.contextmanager
    def phase(self, name: str):
        if not self.active:
            yield
            return
        t0 = self.clock()
        try:
            yield
        finally:
            self.totals[name] += self.clock() - t0

    def annotate(self, step: int):
        """A trace annotation for the call starting at global step `step` (inside the window)."""
        if self.tracing:
            return jax.profiler.StepTraceAnnotation("train", step_num=step)
        return contextlib.nullcontext()

    def call(self, fn: Callable, steps: int, *args):
        """Run one compiled call; when active, split its time into dispatch and device compute."""
        if not self.active:
            return fn(*args)
        t0 = self.clock()
        out = fn(*args)
        t1 = self.clock()
        jax.block_until_ready(out)
        t2 = self.clock()
        self.totals["dispatch"] += t1 - t0
        self.totals["device_compute"] += t2 - t1
        self.steps += steps
        self.calls += 1
        return out

    def reset(self) -> None:
        self.totals = {p: 0.0 for p in PHASES}
        self.background = {"prepare": 0.0, "transfer": 0.0}
        self.steps = self.calls = 0

