"""The best value of an epoch-record metric so far: one tracker that early stopping and the
checkpoint hook share when they watch the same metric (build_hooks hands both the same one,
with one min_delta), so "best" means one thing in a run: the epoch early stopping restores is
the checkpoint kept as best. The loop feeds every tracker a lane's hooks read (`observe_best`)
after each epoch's evaluation, before the hooks' epoch-end turn; a hook asking `observe` for
the same step gets the answer already given."""

from __future__ import annotations

import math

from jaxtrain.config.metric_ref import MetricRef
from jaxtrain.training.record import EpochRecord


def improved(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


class BestMetric:
    """`metric` ('val.loss'), better when lower (`mode: min`) or higher (`max`) by more than
    `min_delta`. A non-finite value is never the best."""

    def __init__(self, metric: str, mode: str = "min", min_delta: float = 0.0):
        self.metric, self.mode, self.min_delta = metric, mode, min_delta
        self.ref = MetricRef.parse(metric)
        self.value: float | None = None
        self.epoch: int | None = None
        self.step: int | None = None
        self._answered: tuple[int, bool] | None = None  # (step, new best?) of the last record seen

    def observe(self, record: EpochRecord, step: int) -> bool:
        """Feed the epoch record that ends at `step`; True when its metric is a new best. The
        hooks sharing the tracker each observe the same record: they get the same answer."""
        if self._answered is not None and self._answered[0] == step:
            return self._answered[1]
        value = record.metric(self.ref)
        new = (value is not None and math.isfinite(value)
               and improved(value, self.value, self.mode, self.min_delta))
        if new:
            self.value, self.epoch, self.step = value, record.epoch, step
        self._answered = (step, new)
        return new

    def measured(self, record: EpochRecord) -> bool:
        return record.metric(self.ref) is not None

    def load(self, value: float | None, step: int | None, epoch: int | None = None) -> None:
        """The best of a resumed run, from its checkpoint (the hooks sharing the tracker each
        load it; one that did not record the epoch keeps the one already loaded for that step)."""
        if epoch is None and step == self.step:
            epoch = self.epoch
        self.value, self.epoch, self.step = value, epoch, step
        self._answered = None


def observe_best(hooks, record: EpochRecord, step: int) -> None:
    """Feed the epoch `record` ending at `step` to each tracker `hooks` read (Hook.trackers), once."""
    for tracker in {id(t): t for hook in hooks for t in hook.trackers()}.values():
        tracker.observe(record, step)
