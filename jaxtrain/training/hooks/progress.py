"""The console's progress: where the epoch stands, examples/s and the ETA.

The loop measures the rate on the run's clock and hands it over (`StepInfo.progress`); this
hook shows it: at the start of training and of every next epoch (so that the heartbeat has
a line to repeat within a long first call), and after every compiled call. A vectorized
run shows it once, from its first lane (whichever that is after a search's pruning).
"""

from __future__ import annotations

from jaxtrain.training.hooks.protocol import Hook, Request, StepInfo


class ProgressHook(Hook):
    """`epochs`: the run's, so that the last epoch's end announces no next one."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_train_start(self, info: StepInfo) -> Request | None:
        return self._show(info)

    def after_call(self, info: StepInfo) -> Request | None:
        return self._show(info)

    def on_epoch_end(self, info: StepInfo) -> Request | None:
        if info.epoch_complete and info.epoch < self.epochs:  # the next epoch's start
            return self._show(info)
        return None

    def _show(self, info: StepInfo) -> None:
        if info.lane not in (None, 0):
            return
        info.ctx.console.progress(f"epoch {info.epoch + 1}", info.step_in_epoch, info.steps_per_epoch,
                                  **(info.progress or {}))
