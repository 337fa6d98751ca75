"""MetricRef: the one parser of 'split.metric' names and the one ranking by them."""

import math

import numpy as np
import pytest

from jaxtrain.config.metric_ref import MetricRef, Ranking, summary_row
from jaxtrain.util.errors import ConfigError


def test_parse_reads_every_place_a_metric_lives():
    record = {"epoch": 2, "loss": 0.5, "accuracy": 0.75, "val": {"loss": 0.6, "accuracy": 0.7}}
    summary = {"train": {"loss": 0.4}, "val": {"accuracy": 0.8}, "test": {"accuracy": 0.9}}
    assert MetricRef.parse("val.accuracy").of_record(record) == 0.7
    assert MetricRef.parse("train.accuracy").of_record(record) == 0.75
    assert MetricRef.parse("val.mse").of_record(record) is None
    assert MetricRef.parse("val.accuracy").of_summary(summary) == 0.8
    row = summary_row(summary)
    for split, section in summary.items():  # the flat row reads back as the summary it came from
        for name, value in section.items():
            assert MetricRef(split, name).of_row(row) == value


@pytest.mark.parametrize("text", ["loss", "test.loss", "val.", "val.loss.x", ".loss"])
def test_parse_refuses_a_malformed_name_naming_the_key(text):
    with pytest.raises(ConfigError, match="config key 'checkpoint.best_metric'"):
        MetricRef.parse(text, "checkpoint.best_metric")


@pytest.mark.parametrize("mode", ["min", "max"])
def test_best_row_is_numpys_best_in_the_metrics_direction(mode):
    rng = np.random.default_rng(0)
    values = rng.normal(size=12)
    values[[3, 7]] = [math.nan, math.inf if mode == "max" else -math.inf]  # never the best
    rows = [{"val.mse": float(v), "val.loss": float(i)} for i, v in enumerate(values)]
    finite = np.where(np.isfinite(values), values, np.nan)
    expected = int(np.nanargmax(finite) if mode == "max" else np.nanargmin(finite))
    assert Ranking(MetricRef("val", "mse"), mode).best_row(rows) == expected


def test_ties_break_on_the_validation_loss_then_the_training_loss():
    ranking = Ranking(MetricRef("val", "accuracy"), "max")
    rows = [{"val.accuracy": 0.9, "val.loss": 0.3}, {"val.accuracy": 0.9, "val.loss": 0.2}]
    assert ranking.best_row(rows) == 1
    records = [{"loss": 0.2, "val": {"accuracy": 0.9}}, {"loss": 0.1, "val": {"accuracy": 0.9}}]
    assert min(range(2), key=lambda i: ranking.record_key(records[i])) == 1
    assert Ranking.for_task("classification", has_val=False).metric == MetricRef("train", "loss")
