"""The run-wide context: where a run writes (console, metrics.jsonl, its work directory), its clock
and its watchdog. The run directory makes it (runs/rundir.py), setup and the loop carry it, and
every hook sees it through its StepInfo."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

from jaxtrain.parallel.watchdog import ProgressWatchdog
from jaxtrain.util.clock import RunClock
from jaxtrain.util.events import Console, JsonlWriter


@dataclasses.dataclass
class RunContext:
    """What a run needs besides the config: where to write, and the run's clock (a RunClock, or a
    time source for one: tests pass a fake)."""
    console: Console
    events: JsonlWriter
    workdir: Path | None = None
    clock: RunClock | Callable[[], float] = time.perf_counter  # where the run's time goes (accounting.py)
    # Multi-process: marks each phase's start and ends a run stuck in a collective (parallel/watchdog.py).
    watchdog: ProgressWatchdog = dataclasses.field(default_factory=lambda: ProgressWatchdog(None, 0, 1))

    def __post_init__(self):
        if not isinstance(self.clock, RunClock):
            self.clock = RunClock(self.clock)
