"""An epoch's record: what the loop measured for one epoch, built once (`from_sums`) and read by
field (the loop's console line and overfitting warning, the hooks, the summary).

`to_json()` is metrics.jsonl's `train` line (with `val` when the epoch was evaluated) and what a
checkpoint keeps as the last record; `from_json` reads it back (a resumed run's last record).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxtrain.config.metric_ref import MetricRef

RATES = ("examples_per_sec", "step_time_ms", "mfu")  # from the epoch's training seconds (accounting.py)


@dataclasses.dataclass(frozen=True)
class EpochRecord:
    epoch: int                               # 1-based
    step: int = 0                            # global steps done at its end
    loss: float | None = None                # the training loss, averaged over its steps
    accuracy: float | None = None            # classification only
    rates: dict = dataclasses.field(default_factory=dict)  # RATES measured (None ones left out)
    nonfinite_steps: int = 0                 # steps skipped as non-finite (train.on_nonfinite: skip_step)
    val: dict = dataclasses.field(default_factory=dict)  # validation metrics; {} when not evaluated

    @classmethod
    def from_sums(cls, epoch: int, step: int, sums: dict, rates: dict) -> "EpochRecord":
        """The record of 0-based `epoch` from its metric sums (host floats) and `rates` (its
        step_time_ms, examples_per_sec and mfu on the run's clock: accounting.throughput)."""
        count = max(sums["count"], 1.0)
        return cls(epoch=epoch + 1, step=step, loss=sums["loss_sum"] / count,
                   accuracy=sums["correct"] / count if "correct" in sums else None,
                   rates={k: rates[k] for k in RATES if rates.get(k) is not None},
                   nonfinite_steps=int(sums["nonfinite"]))

    def with_val(self, val: dict) -> "EpochRecord":
        return dataclasses.replace(self, val=dict(val))

    def train_metrics(self) -> dict[str, float]:
        """The training metrics measured (loss, and accuracy for classification)."""
        return {k: v for k, v in (("loss", self.loss), ("accuracy", self.accuracy)) if v is not None}

    def metric(self, ref: MetricRef) -> float | None:
        """The value of `ref` ('val.loss', 'train.accuracy') this epoch; None when not measured."""
        return ref.of_record(self.to_json())

    def to_json(self, with_val: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"epoch": self.epoch, "step": self.step, "loss": self.loss, **self.rates}
        if self.accuracy is not None:
            out["accuracy"] = self.accuracy
        if self.nonfinite_steps:
            out["nonfinite_steps"] = self.nonfinite_steps
        if with_val and self.val:
            out["val"] = dict(self.val)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "EpochRecord":
        return cls(epoch=data["epoch"], step=data.get("step", 0), loss=data.get("loss"),
                   accuracy=data.get("accuracy"), rates={k: data[k] for k in RATES if k in data},
                   nonfinite_steps=int(data.get("nonfinite_steps", 0)), val=dict(data.get("val") or {}))
