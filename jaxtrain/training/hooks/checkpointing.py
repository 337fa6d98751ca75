"""CheckpointHook: periodic, best-by-metric and final checkpoints (the store is jaxtrain.ckpt).

What a checkpoint holds is everything a resumed run needs to continue bit for bit:
the TrainState (params, optimizer state, RNG streams in `rest`, step), the data
position (epoch, step in epoch: the epoch's order is a function of seed and epoch),
the metric sums of a part-done epoch, the last epoch record (for the summary),
the chosen steps per call (chunk boundaries), every named hook's own state (best value,
early-stopping patience, ...), the resolved config and the fitted preprocessing stats: one
`jaxtrain.ckpt.meta.CheckpointMeta` beside the arrays, which a resume reads back once
(`jaxtrain.ckpt.restore.ResumePoint`).

Saves happen at compiled-call boundaries when any cadence is due: `every_seconds`
since the last save (the default, 60: a kill loses at most that much training, plus
one call), `every_steps` (the engine picks K among the divisors of it, engine.py) or
`every_epochs`; and at the end. Several processes follow process 0's clock.
A new best is not a second copy: it is the epoch-end save, marked with its metric
value, and the store's preservation policy keeps it beside the latest ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import jax

from jaxtrain.ckpt.checkpoint import Best, Checkpointer, state_tree
from jaxtrain.ckpt.meta import CheckpointMeta
from jaxtrain.config.schema import Config, to_dict
from jaxtrain.parallel.distributed import lead_decides
from jaxtrain.training.hooks.best import BestMetric
from jaxtrain.training.hooks.protocol import Hook, StepInfo
from jaxtrain.util.phases import Phase


def _json_ready(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=float))


class CheckpointHook(Hook):
    """Saves to `directory`: the last `checkpoint.keep` steps are kept, and the best one.

    Every other hook of the lane with a `name` and `state_dict()` (whatever its stage or place
    in the list: the lane's hooks come with the StepInfo at the start) has its state saved in
    every checkpoint's metadata, by name, and given back on resume (runs/resume.py).
    `stats`, `hyperparams_in_state`: what every checkpoint records besides the position (the
    data stats, a vectorized point's optimizer hyperparameters kept in its state). `best`: the
    tracker of the metric whose best checkpoint is kept (early stopping's, shared, when both
    watch the same metric; build_hooks); by default one for checkpoint.best_metric, or none.
    """

    name = "checkpoint"
    stage = "persist"  # after the hooks that decide: the final checkpoint holds what they restored
    time_part = Phase.CHECKPOINTING  # its time in the run's breakdown (training/accounting.py)

    def __init__(self, cfg: Config, directory: str | Path, *, stats: dict | None = None,
                 hyperparams_in_state: Sequence[str] = (), best: BestMetric | None = None):
        self.settings, self.directory = cfg.checkpoint, Path(directory)  # the checkpoint section
        self.others: list[Hook] = []  # the lane's other hooks (on_train_start)
        self.config, self.stats = _json_ready(to_dict(cfg)), _json_ready(stats)
        self.hyperparams_in_state = tuple(hyperparams_in_state)
        if best is None and self.settings.best_metric:
            best = BestMetric(self.settings.best_metric, self.settings.best_mode)
        self.best = best
        self.saved_steps: list[int] = []   # what this run saved (tests and reports read it)
        self._manager: Checkpointer | None = None
        self._saved_state: Any = None      # the run's state object last written
        self._boundary = 0                 # every_steps intervals passed at the last step save
        self._last_save = 0.0              # the run's clock at the last save (or the start)

    def trackers(self) -> tuple[BestMetric, ...]:
        return (self.best,) if self.best is not None else ()

    @property
    def best_metric(self) -> str | None:
        return self.best.metric if self.best else None

    # ---- stateful protocol
    def state_dict(self) -> dict:
        if self.best is None:
            return {"best_metric": None, "best_value": None, "best_step": None}
        return {"best_metric": self.best.metric, "best_value": self.best.value, "best_step": self.best.step,
                "best_epoch": self.best.epoch}

    def load_state_dict(self, d: dict) -> None:
        if self.best is not None and d.get("best_metric") == self.best.metric:
            self.best.load(d.get("best_value"), d.get("best_step"), d.get("best_epoch"))

    # ---- hook
    def on_train_start(self, info: StepInfo) -> None:
        self.others = [h for h in info.hooks if h is not self]
        best = Best(self.best.metric, self.best.mode) if self.best else None
        self._manager = Checkpointer(self.directory, keep=self.settings.keep, async_save=self.settings.async_save,
                                     best=best)
        every = self.settings.every_steps
        self._boundary = info.step // every if every else 0
        self._last_save = info.ctx.clock()

    def after_call(self, info: StepInfo) -> None:
        if info.call_ends_epoch:  # epoch ends save in on_epoch_end
            return
        if self._steps_due(info) | self._time_due(info):  # both: each keeps its own count
            self.save(info, "periodic")

    def _steps_due(self, info: StepInfo) -> bool:
        every = self.settings.every_steps
        due = bool(every) and info.step // every > self._boundary
        if every:
            self._boundary = max(self._boundary, info.step // every)
        return due

    def _time_due(self, info: StepInfo) -> bool:
        every = self.settings.every_seconds
        return bool(every) and lead_decides(info.ctx.clock() - self._last_save >= every)

    def on_epoch_end(self, info: StepInfo) -> None:
        every = self.settings.every_epochs
        periodic = self._steps_due(info) | self._time_due(info)
        periodic = info.epoch_complete and (periodic or bool(every) and info.epoch % every == 0)
        new_best = self.best is not None and self.best.observe(info.record, info.step)
        best_value = self.best.value if new_best else None
        if periodic or best_value is not None:
            self.save(info, "epoch" if periodic else "best", best_value)

    def on_train_end(self, info: StepInfo) -> None:
        if self._saved_state is not info.run_state:  # not saved yet, or changed (best params restored)
            self.save(info, "final")
        self.close()

    def close(self) -> None:
        if self._manager is not None:
            self._manager.close()
        self._manager = None

    # ---- saving
    def meta(self, info: StepInfo, kind: str) -> CheckpointMeta:
        sums = None
        if info.epoch_sums is not None:
            sums = {k: float(v) for k, v in jax.device_get(info.epoch_sums).items()}
        return CheckpointMeta(
            kind=kind, step=info.step, epoch=info.epoch, step_in_epoch=info.step_in_epoch,
            steps_per_epoch=info.steps_per_epoch, steps_per_call=info.steps_per_call, epoch_sums=sums,
            devices=info.devices,
            last_record=_json_ready(info.last_record.to_json()) if info.last_record is not None else None,
            hooks=_json_ready({h.name: h.state_dict() for h in [self, *self.others]
                               if h.name and hasattr(h, "state_dict")}),
            # the run's clock so far: a resumed run's summary describes every segment
            timeline=_json_ready(info.ctx.clock.state_dict()), config=self.config, stats=self.stats,
            hyperparams_in_state=self.hyperparams_in_state)

    def save(self, info: StepInfo, kind: str, best_value: float | None = None) -> None:
        # Between calls the last ones may still be running on the device: that wait is training,
        # not checkpointing (charged here, step times of runs saving every few steps came out 8x
        # too short). At epoch ends the engine has already waited, and this returns at once.
        # The wait stays here, not in the engine: only this hook knows that a save is due.
        with info.ctx.clock.phase(Phase.DEVICE_COMPUTE):
            jax.block_until_ready(info.state)
        for hook in self.others:  # e.g. the non-finite guard: a bad state is never written
            hook.before_save(info)
        self._manager.save(info.step, state_tree(info.state), self.meta(info, kind).to_json(), best_value)
        self._last_save = info.ctx.clock()
        self._saved_state = info.run_state
        self.saved_steps.append(info.step)
