"""EpochRecord: an epoch's metrics built once from the sums, read by field, written as JSON."""

import pytest

from jaxtrain.config.metric_ref import MetricRef
from jaxtrain.training.record import EpochRecord


def test_from_sums_averages_over_the_examples_and_round_trips():
    sums = {"loss_sum": 12.0, "correct": 30.0, "count": 40.0, "nonfinite": 2.0}
    rates = {"examples_per_sec": 800.0, "step_time_ms": 20.0, "mfu": None}
    record = EpochRecord.from_sums(2, 45, sums, rates).with_val({"loss": 0.5, "accuracy": 0.7})
    assert (record.epoch, record.step, record.nonfinite_steps) == (3, 45, 2)
    assert record.loss == pytest.approx(12.0 / 40) and record.accuracy == pytest.approx(30.0 / 40)
    assert record.to_json() == {"epoch": 3, "step": 45, "loss": 0.3, "examples_per_sec": 800.0,
                                "step_time_ms": 20.0, "accuracy": 0.75, "nonfinite_steps": 2,
                                "val": {"loss": 0.5, "accuracy": 0.7}}  # metrics.jsonl's layout
    assert EpochRecord.from_json(record.to_json()) == record
    assert record.metric(MetricRef("val", "accuracy")) == 0.7 and record.metric(MetricRef("val", "mse")) is None


def test_a_regression_epoch_has_no_accuracy_and_no_val_until_evaluated():
    record = EpochRecord.from_sums(0, 5, {"loss_sum": 1.0, "count": 4.0, "nonfinite": 0.0}, {})
    assert record.accuracy is None and record.val == {} and record.train_metrics() == {"loss": 0.25}
    assert record.to_json() == {"epoch": 1, "step": 5, "loss": 0.25}
