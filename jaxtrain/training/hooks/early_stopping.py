"""EarlyStopping: stop when a validation metric stops improving; restore the best parameters.

Each epoch with the metric measured counts: an improvement (beyond `min_delta`, in the
direction of `mode`) resets the wait and keeps a device copy of the parameters, their
moving average (train.ema_decay) and the model state; `patience` epochs without one ask
the loop to stop. At the end the loop puts the best copy in place of the last parameters, so the test metrics, the final checkpoint and
`jaxtrain eval` all describe the best epoch. A resumed run has no device copy of an
earlier best: it reloads it from the checkpoint of the best step, when that checkpoint
was saved as the best of the same metric.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp

from jaxtrain.ckpt.restore import restore_best
from jaxtrain.config.schema import EarlyStoppingConfig
from jaxtrain.training.hooks.best import BestMetric
from jaxtrain.training.hooks.protocol import Hook, Request, StepInfo


class EarlyStopping(Hook):
    name = "early_stopping"
    stage = "decide"

    def __init__(self, settings: EarlyStoppingConfig, checkpoint_dir: str | Path | None = None,
                 tracker: BestMetric | None = None):
        """`settings`: the config's train.early_stopping section. `tracker`: the run's
        best-metric tracker for its metric (shared with the checkpoint hook, build_hooks); a new
        one when None."""
        self.settings = settings
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.tracker = tracker or BestMetric(settings.metric, settings.mode, settings.min_delta)
        self.wait = 0
        self.stopped_epoch: int | None = None
        self._best_copy = None  # {params, rest, ema} on the device

    @property
    def best(self) -> float | None:
        return self.tracker.value

    @property
    def best_epoch(self) -> int | None:
        return self.tracker.epoch

    @property
    def best_step(self) -> int | None:
        return self.tracker.step

    def trackers(self) -> tuple[BestMetric, ...]:
        return (self.tracker,)

    def state_dict(self) -> dict:
        return {"metric": self.settings.metric, "best": self.best, "best_epoch": self.best_epoch,
                "best_step": self.best_step, "wait": self.wait}

    def load_state_dict(self, d: dict) -> None:
        if d.get("metric") == self.settings.metric:
            self.tracker.load(d["best"], d["best_step"], d["best_epoch"])
            self.wait = d["wait"]

    def on_epoch_end(self, info: StepInfo) -> Request | None:
        if not self.tracker.measured(info.record):
            return None
        if self.tracker.observe(info.record, info.step):
            self.wait = 0
            # A copy, not a reference: the next compiled call donates the state's buffers.
            state = info.state
            self._best_copy = jax.tree.map(jnp.copy, {"params": state.params, "rest": state.rest, "ema": state.ema})
            return None
        self.wait += 1
        if self.wait < self.settings.patience:
            return None
        reason = (f"early stopping: {self.settings.metric} did not improve for {self.settings.patience} epochs "
                  f"(best {self.best:.6g} at epoch {self.best_epoch})")
        self.stopped_epoch = info.record.epoch
        info.ctx.console.line(reason)
        return Request(stop=reason)

    def on_train_end(self, info: StepInfo) -> Request:
        best = self._best_copy if self._best_copy is not None else self._load_best(info)
        restore = best if best is not None and self.best_step != info.step else None
        summary = {"metric": self.settings.metric, "mode": self.settings.mode, "best": self.best,
                   "best_epoch": self.best_epoch, "stopped_epoch": self.stopped_epoch,
                   "restored_best": restore is not None}
        info.ctx.events.write("early_stopping", **summary)
        if restore is not None:
            info.ctx.console.line(f"early stopping: restored the parameters of epoch {self.best_epoch} "
                                  f"({self.settings.metric}={self.best:.6g})")
        return Request(restore=restore, summary={"early_stopping": summary})

    def _load_best(self, info: StepInfo):
        """After a resume: the best parameters from the best step's checkpoint, if they are ours."""
        if self.checkpoint_dir is None or self.best_step is None:
            return None
        found = restore_best(self.checkpoint_dir, info.state, self.best_step)
        if found is None:
            return None
        state, meta = found
        if meta.hook_state("checkpoint").get("best_metric") != self.settings.metric:
            return None
        return {"params": state.params, "rest": state.rest, "ema": state.ema}
