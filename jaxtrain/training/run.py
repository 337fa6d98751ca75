"""The live state of a fit: the engine, the training state, the position, and its lanes.

A plain run has one lane; a vectorized sweep trains several points as one run, one
lane each (its config, work directory, hooks and records), their states stacked on a
leading axis. Only the loop changes a Run: it hands hooks a `StepInfo` (`view`) and
applies what they ask for (`apply`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from jaxtrain.ckpt.meta import CheckpointMeta
from jaxtrain.config.schema import Config
from jaxtrain.data import Dataset
from jaxtrain.parallel import placement
from jaxtrain.engine.engine import Engine
from jaxtrain.engine.plan import RunPlan
from jaxtrain.engine.timeline import Timeline
from jaxtrain.engine.step import TrainState
from jaxtrain.training.evaluator import Evaluator
from jaxtrain.training.record import EpochRecord
from jaxtrain.training.context import RunContext
from jaxtrain.training.hooks.protocol import Hook, Request, StepInfo


@dataclasses.dataclass
class Lane:
    """One run's share of a fit: what it writes, its hooks, its epoch records, its summary entries."""
    cfg: Config
    ctx: RunContext
    index: int | None = None        # its slice of a stacked (vectorized) state; None: not stacked
    name: str = ""                  # prefixes its console lines in a vectorized run
    hooks: list[Hook] = dataclasses.field(default_factory=list)
    history: list[EpochRecord] = dataclasses.field(default_factory=list)
    extra: dict = dataclasses.field(default_factory=dict)  # hooks' entries for the summary
    # Optimizer hyperparameters kept in the optimizer state (a vectorized point's): its
    # checkpoints say so, and a resume builds the same optimizer.
    hyperparams_in_state: tuple[str, ...] = ()


@dataclasses.dataclass
class Run:
    cfg: Config
    plan: RunPlan                   # what the run derives from the config and the devices, once
    dataset: Dataset
    mesh: Any
    engine: Engine
    evaluator: Evaluator
    state: TrainState               # stacked along a leading axis in a vectorized run
    lanes: list[Lane]
    epoch: int = 0                  # epoch in progress (0-based)
    step_in_epoch: int = 0          # steps of it done
    global_step: int = 0            # known on the host without a device sync
    stop_reason: str | None = None
    epoch_sums: dict | None = None  # the epoch's metric sums so far (device); a resumed run's start
    progress_from: tuple[float, int] | None = None  # (clock time, step) the progress rate counts from

    @property
    def timeline(self) -> Timeline:
        """The run's clock and watchdog, as the engine charges them (engine/timeline.py)."""
        return self.engine.timeline

    # The single lane's, for a plain run.
    @property
    def ctx(self) -> RunContext:
        return self.lanes[0].ctx

    def lane_state(self, lane: Lane) -> TrainState:
        return self.state if lane.index is None else jax.tree.map(lambda a: a[lane.index], self.state)

    def view(self, lane: Lane, **fields: Any) -> StepInfo:
        return StepInfo(epoch=self.epoch, step_in_epoch=self.step_in_epoch, step=self.global_step,
                        steps_per_epoch=self.plan.steps_per_epoch, steps_per_call=self.engine.k,
                        devices=self.mesh.size, ctx=lane.ctx,
                        last_record=lane.history[-1] if lane.history else None, lane=lane.index,
                        hooks=tuple(lane.hooks),
                        run_state=self.state, run_epoch_sums=self.epoch_sums, **fields)

    def apply(self, lane: Lane, request: Request) -> None:
        """Do what a lane's hook asked for."""
        if request.stop is not None and self.stop_reason is None:
            self.stop_reason = request.stop
        if request.restore is not None:
            fields = request.restore
            if lane.index is not None:  # into the lane's slice of the stacked state
                fields = {name: jax.tree.map(lambda stacked, one: stacked.at[lane.index].set(one),
                                             getattr(self.state, name), value)
                          for name, value in fields.items()}
            self.state = self.state.replace(**fields)
        lane.extra.update(request.summary)

    def continue_from(self, state: TrainState, position: CheckpointMeta) -> None:
        """Take a restored state and position: training goes on exactly where it stopped."""
        repl = placement.replicated(self.mesh)
        self.state = state
        self.epoch, self.step_in_epoch, self.global_step = (position.epoch, position.step_in_epoch,
                                                            position.step)
        if position.epoch_sums:
            self.epoch_sums = {k: placement.put_global(np.float32(v), repl) for k, v in position.epoch_sums.items()}
        if position.last_record:
            self.lanes[0].history[:] = [EpochRecord.from_json(position.last_record)]
        if self.cfg.train.steps_per_call == "auto" and position.steps_per_call:
            self.engine.k = int(position.steps_per_call)  # the same chunk boundaries as before
