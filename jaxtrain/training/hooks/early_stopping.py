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

from jaxtrain.ckpt.resume import restore_best
from jaxtrain.config.schema import EarlyStoppingConfig
from jaxtrain.training.hooks.checkpointing import improved, metric_value
from jaxtrain.training.hooks.protocol import Hook, Request, StepInfo


class EarlyStopping(Hook):
    name = "early_stopping"

    def __init__(self, cfg: EarlyStoppingConfig, checkpoint_dir: str | Path | None = None):
        self.cfg = cfg
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.best_step: int | None = None
        self.wait = 0
        self.stopped_epoch: int | None = None
        self._best_copy = None  # {params, rest, ema} on the device

    def state_dict(self) -> dict:
        return {"metric": self.cfg.metric, "best": self.best, "best_epoch": self.best_epoch,
                "best_step": self.best_step, "wait": self.wait}

    def load_state_dict(self, d: dict) -> None:
        if d.get("metric") == self.cfg.metric:
            self.best, self.best_epoch, self.best_step, self.wait = (
                d["best"], d["best_epoch"], d["best_step"], d["wait"])

    def update(self, value: float, epoch: int) -> bool:
        """Feed one epoch's metric; True when training should stop."""
        if improved(value, self.best, self.cfg.mode, self.cfg.min_delta):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            return False
        self.wait += 1
        return self.wait >= self.cfg.patience

    def on_epoch_end(self, info: StepInfo) -> Request | None:
        value = metric_value(info.record, self.cfg.metric)
        if value is None:
            return None
        best_before = self.best_epoch
        stop = self.update(value, info.record["epoch"])
        if self.best_epoch != best_before:
            self.best_step = info.step
            # A copy, not a reference: the next compiled call donates the state's buffers.
            state = info.state
            self._best_copy = jax.tree.map(jnp.copy, {"params": state.params, "rest": state.rest, "ema": state.ema})
        if not stop:
            return None
        reason = (f"early stopping: {self.cfg.metric} did not improve for {self.cfg.patience} epochs "
                  f"(best {self.best:.6g} at epoch {self.best_epoch})")
        self.stopped_epoch = info.record["epoch"]
        info.ctx.console.line(reason)
        return Request(stop=reason)

    def on_train_end(self, info: StepInfo) -> Request:
        best = self._best_copy if self._best_copy is not None else self._load_best(info)
        restore = best if best is not None and self.best_step != info.step else None
        summary = {"metric": self.cfg.metric, "mode": self.cfg.mode, "best": self.best,
                   "best_epoch": self.best_epoch, "stopped_epoch": self.stopped_epoch,
                   "restored_best": restore is not None}
        info.ctx.events.write("early_stopping", **summary)
        if restore is not None:
            info.ctx.console.line(f"early stopping: restored the parameters of epoch {self.best_epoch} "
                                  f"({self.cfg.metric}={self.best:.6g})")
        return Request(restore=restore, summary={"early_stopping": summary})

    def _load_best(self, info: StepInfo):
        """After a resume: the best parameters from the best step's checkpoint, if they are ours."""
        if self.checkpoint_dir is None or self.best_step is None:
            return None
        found = restore_best(self.checkpoint_dir, info.state, self.best_step)
        if found is None:
            return None
        state, meta = found
        if meta.get("hooks", {}).get("checkpoint", {}).get("best_metric") != self.cfg.metric:
            return None
        return {"params": state.params, "rest": state.rest, "ema": state.ema}
