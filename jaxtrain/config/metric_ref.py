"""A metric named as `split.metric` ('val.loss', 'train.accuracy', 'test.mse'): the one parser of
that name, where it is read from (an epoch record, a summary, a flat results row), and the one
ranking of runs or epochs by it, in its direction.

Everything that names a metric by text goes through `MetricRef.parse`: the config's
early-stopping and best-checkpoint keys, the best-metric tracker, a search's objective and a
sweep's choice of the best point.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from jaxtrain.util.errors import ConfigError

# The metrics a split reports, per task (model/metrics.py), for early stopping and best-checkpoint keys.
TASK_METRICS = {"classification": ("loss", "accuracy"), "regression": ("loss", "mse", "mae", "r2")}
SPLITS = ("train", "val", "test")  # the splits a summary reports; a training-time metric names train or val


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclasses.dataclass(frozen=True)
class MetricRef:
    split: str   # 'train', 'val' or 'test'
    name: str    # 'loss', 'accuracy', 'mse', ...

    @classmethod
    def parse(cls, text: str, key: str | None = None, splits: tuple[str, ...] = ("val", "train")) -> "MetricRef":
        """'val.loss' -> MetricRef('val', 'loss'); a ConfigError naming config key `key` (or
        the text itself) unless it is one of `splits` and a metric name."""
        split, _, name = str(text).partition(".")
        if split not in splits or not name or "." in name:
            where = f"config key '{key}': " if key else ""
            forms = " or ".join(f"{s}.<metric>" for s in splits)
            raise ConfigError(f"{where}'{text}' must look like {forms} (e.g. val.loss)")
        return cls(split, name)

    def __str__(self) -> str:
        return f"{self.split}.{self.name}"

    def of_record(self, record: dict | None) -> float | None:
        """Its value in an epoch record (train metrics at the top, validation under 'val'); None
        when that epoch did not measure it."""
        record = record or {}
        source = record if self.split == "train" else (record.get(self.split) or {})
        return _number(source.get(self.name))

    def of_summary(self, summary: dict) -> float | None:
        """Its value in a run's summary (one section per split)."""
        return _number((summary.get(self.split) or {}).get(self.name))

    def of_row(self, row: dict) -> float | None:
        """Its value in a flat results row ('val.accuracy' columns, summary_row)."""
        return _number(row.get(str(self)))


def summary_row(summary: dict) -> dict[str, Any]:
    """The final metrics of a run's summary as flat 'test.accuracy'-style columns (MetricRef.of_row
    reads them back), and its total time."""
    row: dict[str, Any] = {}
    for split in SPLITS:
        for name, value in (summary.get(split) or {}).items():
            if isinstance(value, (int, float)) or value is None:
                row[str(MetricRef(split, name))] = value
    row["time.total_s"] = (summary.get("time") or {}).get("total_s")
    return row


@dataclasses.dataclass(frozen=True)
class Ranking:
    """Runs (or epochs) ranked by `metric`, better when higher (`mode: max`) or lower (`min`), ties
    broken by the validation loss (the training loss without a validation split)."""
    metric: MetricRef
    mode: str  # 'min' or 'max'

    @classmethod
    def for_task(cls, task: str, has_val: bool) -> "Ranking":
        """How the best of several runs is chosen: a validation metric, never a test one (choosing
        on the test split would leak it into the choice); without a validation split, the final
        training loss."""
        if not has_val:
            return cls(MetricRef("train", "loss"), "min")
        if task == "classification":
            return cls(MetricRef("val", "accuracy"), "max")
        return cls(MetricRef("val", "mse"), "min")

    def key(self, value: float | None, tie_loss: float | None) -> tuple[float, float]:
        """Smaller ranks first; a missing or non-finite value ranks last."""
        value = value if value is not None and math.isfinite(value) else None
        ranked = math.inf if value is None else (-value if self.mode == "max" else value)
        loss = tie_loss if tie_loss is not None and math.isfinite(tie_loss) else math.inf
        return ranked, loss

    def record_key(self, record: dict) -> tuple[float, float]:
        """The rank of an epoch record."""
        tie = MetricRef("val", "loss").of_record(record)
        return self.key(self.metric.of_record(record), tie if tie is not None else _number(record.get("loss")))

    def row_key(self, row: dict) -> tuple[float, float]:
        """The rank of a flat results row (summary_row)."""
        tie = MetricRef("val", "loss").of_row(row)
        return self.key(self.metric.of_row(row), tie if tie is not None else MetricRef("train", "loss").of_row(row))

    def best_row(self, rows: list[dict]) -> int | None:
        """The index of the best row with a finite value of the metric, or None."""
        finite = [i for i, row in enumerate(rows) if self.key(self.metric.of_row(row), None)[0] != math.inf]
        return min(finite, key=lambda i: self.row_key(rows[i])) if finite else None
