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
from typing import Any

import jax

from jaxtrain.training.context import RunContext  # the run-wide context every StepInfo carries


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
    record: Any = None                # on_epoch_end: the epoch's EpochRecord (training/record.py)
    last_record: Any = None           # the latest EpochRecord (a resumed run's, before its first)
    profile: dict | None = None       # on_train_end of a profiled run: what the profile needs of the run
    progress: dict | None = None      # after_call, on_epoch_end: examples/s ('rate') and 'eta_s' so far
    lane: int | None = None           # the point of a vectorized run; None for a plain run
    hooks: tuple = ()                 # every hook of the lane (the checkpoint hook saves their state by name)
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


# The stages a hook acts in, in the order the loop calls them at each point of training
# (dispatch.py): whatever order the hooks were built or added in, a stage's hooks run before
# the next stage's. validate: check what the call produced before anything acts on it (the
# non-finite guard); decide: stop, or put back earlier parameters (early stopping, a search's
# pruning); persist: write what the deciders left (checkpoints: the final one holds the best
# parameters early stopping restored); observe: report (profiles, TensorBoard, trackers); exit:
# leave the process (preemption: only after the final checkpoint is written).
STAGES = ("validate", "decide", "persist", "observe", "exit")


class Hook:
    """Periodic work around the hot loop. Override what you need; each returns a Request or None.

    `stage`: where among the others it acts (STAGES). A hook with a `name`, `state_dict()` and
    `load_state_dict()` has its state carried in checkpoints, whatever its stage or place in
    the list. `trackers()`: the best-metric trackers it reads, which the loop updates after each
    evaluation (best.py). `close()` runs however training ended."""

    name: str | None = None
    stage: str = "observe"

    def trackers(self) -> tuple:
        """The BestMetric trackers this hook reads (hooks/best.py); the loop feeds them each epoch."""
        return ()

    def on_train_start(self, info: StepInfo) -> Request | None: ...

    def after_call(self, info: StepInfo) -> Request | None:
        """After each compiled call (K steps)."""

    def on_epoch_end(self, info: StepInfo) -> Request | None: ...

    def on_train_end(self, info: StepInfo) -> Request | None: ...

    def before_save(self, info: StepInfo) -> None:
        """Right before the checkpoint hook writes a checkpoint (called on every hook of the lane)."""

    def close(self) -> None: ...
