"""The run clock: one timeline of a run, every moment charged to exactly one phase.

The training loop owns the run's `RunClock` and moves it, directly or through the
timeline it hands the engine (engine/timeline.py), which charges the engine's own work
(compiling, waiting for input, dispatching, waiting for the device). The phases are the
members of `Phase` (phases.py). The clock keeps a stack of open phases and charges the
time between two changes to the innermost one, so nested phases never count twice and
the phases always add up to the wall time since the clock started:

    clock = RunClock()
    with clock.phase(Phase.DISPATCH):
        ...                              # charged to dispatch
        with clock.phase(Phase.CHECKPOINTING):
            ...                          # charged to checkpointing, not dispatch
        clock.switch(Phase.COMPILE)      # from here on the open phase is compile

Time outside every phase is charged to the base phase (Phase.OTHER). Every time figure
a run reports (summary.json, metrics.jsonl, the console, `jaxtrain profile`) is a
difference of two readings of this clock (`mark` and `since` for a window), so no
two figures about the same time can disagree. Reading the clock never waits for the
device: where a figure needs the device's share, the caller syncs first (profiling).
The time source can be passed in, so tests drive it by hand.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Callable

from jaxtrain.util.phases import Phase

# jaxtrain's first moment: jaxtrain/__init__.py imports this module before anything else, so a
# run's `startup` is the time from here (Python and jaxtrain's imports), not from the process's
# birth, which may be long before (`sleep 5; jaxtrain train` under one bash, a pip install
# before it in one shell line).
IMPORTED_AT = time.perf_counter()


@dataclasses.dataclass(frozen=True)
class Mark:
    """The clock at one moment: its time and the seconds of every phase so far."""
    at: float
    totals: dict


class RunClock:
    def __init__(self, now: Callable[[], float] = time.perf_counter, base: Phase = Phase.OTHER):
        self.now = now
        self.start = now()
        self._totals: dict[str, float] = {}
        self._stack = [base]
        self._since = self.start
        # The run's earlier segments (a resumed run's: each {"total_s", "phases", ...}) and the
        # training record of every epoch trained, in all segments ({"train_s", "steps", ...}).
        self.segments: list[dict] = []
        self.epoch_throughput: list[dict] = []

    def __call__(self) -> float:
        """The current time of the clock's source (seconds)."""
        return self.now()

    def _charge_open_phase(self) -> float:
        now = self.now()
        top = self._stack[-1]
        self._totals[top] = self._totals.get(top, 0.0) + now - self._since
        self._since = now
        return now

    @contextlib.contextmanager
    def phase(self, name: Phase):
        """Charge the time inside the block to `name` (nested phases take their own time)."""
        self._charge_open_phase()
        self._stack.append(name)
        try:
            yield
        finally:
            self._charge_open_phase()
            self._stack.pop()

    def switch(self, name: Phase) -> None:
        """From now on the innermost open phase is `name` (until the next switch or its end)."""
        self._charge_open_phase()
        self._stack[-1] = name

    def add_before_start(self, name: Phase, seconds: float) -> None:
        """Time spent before the clock existed (say, process start-up): it moves the start back."""
        self._totals[name] = self._totals.get(name, 0.0) + seconds
        self.start -= seconds

    def totals(self) -> dict[str, float]:
        """Seconds per phase so far, the running phase included."""
        self._charge_open_phase()
        return dict(self._totals)

    def mark(self) -> Mark:
        now = self._charge_open_phase()
        return Mark(now, dict(self._totals))

    def since(self, mark: Mark) -> tuple[float, dict[str, float]]:
        """(wall seconds, seconds per phase) from `mark` to now."""
        now = self._charge_open_phase()
        return now - mark.at, {k: v - mark.totals.get(k, 0.0) for k, v in self._totals.items()
                               if v - mark.totals.get(k, 0.0) > 0.0}


    def record_epoch(self, **record) -> None:
        """Keep an epoch's training record (its seconds, steps, examples), tagged with the segment."""
        self.epoch_throughput.append({**record, "segment": len(self.segments)})

    def this_segment(self) -> dict:
        """The current segment's figures: its seconds in all and per phase, read at one moment
        (so the phases add up to the total)."""
        now = self._charge_open_phase()
        return {"total_s": now - self.start, "phases": dict(self._totals)}

    def state_dict(self) -> dict:
        """What a resumed run needs to describe the whole run: every segment so far (this one
        up to now) and every epoch's training record. Saved with each checkpoint."""
        return {"segments": [*self.segments, self.this_segment()], "epochs": list(self.epoch_throughput)}

    def load_state_dict(self, state: dict) -> None:
        """Continue a run: its earlier segments and epoch records come before this segment's."""
        self.segments = list(state.get("segments", []))
        self.epoch_throughput = list(state.get("epochs", []))


def since_jaxtrain_import(now: Callable[[], float] = time.perf_counter,
                          imported_at: float | None = None) -> RunClock:
    """A clock whose first phase, 'startup', is the time from jaxtrain's import until now."""
    clock = RunClock(now)
    clock.add_before_start(Phase.STARTUP, max(0.0, clock.start - (IMPORTED_AT if imported_at is None else imported_at)))
    return clock
