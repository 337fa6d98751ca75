"""What a hook sees and what it may ask for. Hooks see, the loop acts.

At every compiled-call boundary, epoch end and both ends of training, the loop hands
each hook a `StepInfo`: an immutable view of where training stands (the position a
resumed run would continue from, the metric sums, the state to save or copy). A hook
answers with `None` or a `Request` (stop, put back earlier parameters, entries for the
summary), which the loop applies before the next hook looks. No hook writes into the
run, its state or the engine. A hook that raises (the non-finite guard, preemption)
ends training with that error.

A vectorized sweep trains several points as one run; each point (a *lane*) has its
own hooks, and its view holds that point's slice of the stacked state and sums.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path
from typing import Any, Callable

import jax

from jaxtrain.parallel.watchdog import ProgressWatchdog
from jaxtrain.util.events import Console, JsonlWriter
from jaxtrain.util.clock import RunClock


@dataclasses.dataclass
class RunContext:
    """What a run needs besides the config: where to write, and the run's clock (a RunClock, or a
    time source for one: tests pass a fake)."""
    console: Console
    events: JsonlWriter
    workdir: Path | None = None
    clock: RunClock | Callable[[], float] = time.perf_counter  # where the run's time goes (accounting.py)
    # Multi-process: marks each phase's start and ends a run stuck in a collective (dist/watchdog.py).
    watchdog: ProgressWatchdog = dataclasses.field(default_factory=lambda: ProgressWatchdog(None, 0, 1))

    def __post_init__(self):
        if not isinstance(self.clock, RunClock):
            self.clock = RunClock(self.clock)


def _lane_slice(tree: Any, lane: int | None) -> Any:
    return tree if lane is None or tree is None else jax.tree.map(lambda a: a[lane], tree)


@dataclasses.dataclass(frozen=True)
class StepInfo:
    """Where training stands. `epoch` and `step_in_epoch` are the position training continues
    from (after a finished epoch: the next one, step 0); `step` counts steps done."""
    epoch: int
    step_in_epoch: int
    step: int
    steps_per_epoch: int
    steps_per_call: int
    devices: int                      # in the run's mesh
    ctx: RunContext
    record: dict | None = None        # on_epoch_end: the epoch's record (loss, accuracy, val, ...)
    last_record: dict | None = None   # the latest epoch record (a resumed run's, before its first)
    profile: dict | None = None       # on_train_end of a profiled run: what the profile needs of the run
    progress: dict | None = None      # after_call, on_epoch_end: examples/s ('rate') and 'eta_s' so far
    lane: int | None = None           # the point of a vectorized run; None for a plain run
    # The run's state and device sums (stacked for a vectorized run); read through the properties.
    run_state: Any = dataclasses.field(default=None, repr=False)
    run_epoch_sums: dict | None = dataclasses.field(default=None, repr=False)
    run_call_sums: dict | None = dataclasses.field(default=None, repr=False)

    @functools.cached_property
    def state(self) -> Any:
        """The TrainState after this step. Save or copy it: the next call donates its buffers."""
        return _lane_slice(self.run_state, self.lane)

    @functools.cached_property
    def epoch_sums(self) -> dict | None:
        """The metric sums of the epoch so far (device arrays; reading them waits)."""
        return _lane_slice(self.run_epoch_sums, self.lane)

    @functools.cached_property
    def call_sums(self) -> dict | None:
        """after_call: the sums of the call just made (device arrays; reading them waits)."""
        return _lane_slice(self.run_call_sums, self.lane)

    @property
    def epoch_complete(self) -> bool:
        return self.step_in_epoch == 0

    @property
    def call_ends_epoch(self) -> bool:
        """after_call: this call finished the epoch (the epoch's metrics are read now anyway)."""
        return self.step_in_epoch >= self.steps_per_epoch


@dataclasses.dataclass(frozen=True)
class Request:
    """What a hook asks the loop to do."""
    stop: str | None = None            # end training after this call, for this reason
    restore: dict | None = None        # state fields (params, rest, ema) to put back
    summary: dict = dataclasses.field(default_factory=dict)  # entries for the run's summary.json


class Hook:
    """Periodic work around the hot loop. Override what you need; each returns a Request or None.

    A hook with a `name`, `state_dict()` and `load_state_dict()` has its state carried in
    checkpoints. `close()` runs however training ended."""

    name: str | None = None

    def on_train_start(self, info: StepInfo) -> Request | None: ...

    def after_call(self, info: StepInfo) -> Request | None:
        """After each compiled call (K steps)."""

    def on_epoch_end(self, info: StepInfo) -> Request | None: ...

    def on_train_end(self, info: StepInfo) -> Request | None: ...

    def before_save(self, info: StepInfo) -> None:
        """Right before the checkpoint hook writes a checkpoint (called on its `stateful` hooks)."""

    def close(self) -> None: ...
