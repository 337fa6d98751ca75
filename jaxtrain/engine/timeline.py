"""The run's timeline as the engine and the loop see it: the clock and the watchdog behind one
`with timeline.phase(Phase.X, "what it does"):`.

The clock (util/clock.py) charges the block's time to the phase; the watchdog
(parallel/watchdog.py) learns what the process does next, so that with several processes
a run stuck in a collective ends with a line that names it. `Timeline()` keeps neither:
an engine driven outside a run (a benchmark, a test) times nothing, and reads the time
from `time.perf_counter`.
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

from jaxtrain.parallel.watchdog import ProgressWatchdog
from jaxtrain.util.clock import RunClock
from jaxtrain.util.phases import Phase


class Timeline:
    def __init__(self, clock: RunClock | None = None, watchdog: ProgressWatchdog | None = None):
        self.clock, self.watchdog = clock, watchdog

    @contextlib.contextmanager
    def phase(self, phase: Phase, doing: str | None = None) -> Iterator[None]:
        """Charge the block to `phase` (a nested phase takes its own time); `doing`: what the
        watchdog names if the process gets stuck in it."""
        self.enter(doing)
        if self.clock is None:
            yield
            return
        with self.clock.phase(phase):
            yield

    def enter(self, doing: str | None) -> None:
        """Tell the watchdog what the process does next (the clock's phase stays)."""
        if doing is not None and self.watchdog is not None:
            self.watchdog.enter(doing)

    def now(self) -> float:
        """The time on the run's clock (seconds)."""
        return self.clock() if self.clock is not None else time.perf_counter()
