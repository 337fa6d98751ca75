"""Where the time of the hot loop goes: phases timed on a clock you can pass in.

The engine and the loop report their phases to a timer. The default timer is
inactive: `phase()` is a bare context manager, nothing is timed and nothing
waits on the device, so training is not slowed down. When profiling, the loop
`start`s the timer once K is chosen: from then on it makes the engine wait for the
device after each call (so the device's share of the time can be told apart from
the host's). With a `trace_dir`, the first `trace_calls` calls are recorded as a
`jax.profiler` trace, each call wrapped in a `StepTraceAnnotation`; the traced calls
run slower, so their measurements are kept apart (`traced`) and timing starts afresh
after them. `finish` ends timing and tracing however training ended.

Phases (seconds summed over calls):
    input_wait        the host waited for the next batch (not overlapped with compute)
    h2d_transfer      host-to-device copies on the main thread
    dispatch          from the call to the compiled step until it returned (Python, tracing-free dispatch)
    device_compute    from the return of the call until its results were ready
    metric_transfer   reading metric sums back from the device
    hooks             checkpoint saves and other periodic work blocking the loop
    evaluation        evaluating the validation split at epoch ends
    compile           compiling (taken out of the window's wall time)
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable

import jax

PHASES = ("input_wait", "h2d_transfer", "dispatch", "device_compute", "metric_transfer", "hooks", "evaluation",
          "compile")


class PhaseTimer:
    def __init__(self, clock: Callable[[], float] = time.perf_counter, active: bool = False, *,
                 trace_dir: Path | None = None, trace_calls: int = 0):
        self.clock = clock
        self.active = active
        self.trace_dir, self.trace_calls = trace_dir, trace_calls
        self.tracing = False          # True inside the jax.profiler trace window
        self.traced: dict | None = None  # the trace window's measurements, once it closed
        self.totals = {p: 0.0 for p in PHASES}
        self.background = {"prepare": 0.0, "transfer": 0.0}  # prefetch thread, overlapped
        self.steps = 0
        self.calls = 0
        self._t_start = self._t_end = None

    def start(self) -> None:
        """Time every call from now on, tracing the first `trace_calls` of them."""
        self.active = True
        if self.trace_dir is not None and self.trace_calls > 0:
            jax.profiler.start_trace(str(self.trace_dir))
            self.tracing = True
        self.reset()

    def finish(self) -> None:
        """Stop timing and tracing (never leave the process-wide profiler running)."""
        if self.tracing:
            self.tracing = False
            jax.profiler.stop_trace()
        if self.active:
            self._t_end = self.clock()
        self.active = False

    def window(self, end: float | None = None) -> dict:
        """What the current window measured: phase totals, steps, calls, and its wall seconds
        without compilation."""
        end = end if end is not None else self._t_end if self._t_end is not None else self.clock()
        return {"totals": dict(self.totals), "background": dict(self.background), "steps": self.steps,
                "calls": self.calls, "wall": end - self._t_start - self.totals["compile"]}

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
        """A trace annotation for the call starting at global step `step` (inside the window).
        The first call after the traced ones closes the trace window."""
        if self.tracing and self.calls >= self.trace_calls:
            self._close_trace_window(self.clock())
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

    def _close_trace_window(self, end: float) -> None:
        self.tracing = False
        jax.profiler.stop_trace()
        self.traced = self.window(end)
        self.reset()

    def reset(self) -> None:
        self.totals = {p: 0.0 for p in PHASES}
        self.background = {"prepare": 0.0, "transfer": 0.0}
        self.steps = self.calls = 0
        self._t_start, self._t_end = self.clock(), None

