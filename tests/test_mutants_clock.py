"""util/clock.py: the cases mutmut's surviving mutants showed untested (docs/testing.md), each
against a value computed by hand."""

import pytest

from jaxtrain.util import clock as clock_module
from jaxtrain.util.clock import RunClock


class FakeTime:
    def __init__(self):
        self.now = 10.0

    def __call__(self):
        return self.now


def test_switch_in_nested_phases_renames_only_the_innermost():
    t = FakeTime()
    c = RunClock(t)
    with c.phase("evaluation"):
        t.now += 1.0
        with c.phase("dispatch"):
            t.now += 2.0
            c.switch("device_compute")
            t.now += 4.0
        t.now += 8.0
    assert c.totals() == {"other": 0.0, "evaluation": 9.0, "dispatch": 2.0, "device_compute": 4.0}


def test_time_added_before_start_adds_up_per_phase_and_unknown_phases_read_zero():
    t = FakeTime()
    c = RunClock(t)
    c.add_before_start("startup", 2.0)
    c.add_before_start("startup", 0.5)
    c.add_before_start("data", 1.0)
    totals = c.totals()
    assert totals["startup"] == 2.5 and totals["data"] == 1.0
    assert "never_charged" not in totals
    assert sum(totals.values()) == pytest.approx(3.5)


def test_a_state_without_segments_or_epochs_loads_as_none_yet():
    c = RunClock(FakeTime())
    c.load_state_dict({})
    assert c.segments == [] and c.epoch_throughput == []
    c.record_epoch(train_s=1.0, steps=2, examples=4)
    again = RunClock(FakeTime())
    again.load_state_dict(c.state_dict())
    assert len(again.segments) == 1 and again.epoch_throughput == c.epoch_throughput == [
        {"train_s": 1.0, "steps": 2, "examples": 4, "segment": 0}]


def test_a_clock_since_jaxtrain_import_charges_the_time_since_the_import_to_startup():
    """Startup is the time from jaxtrain's import (not the process's birth) to the clock's start;
    an import 'after' the start (clocks that disagree) charges nothing, never a negative time."""
    t = FakeTime()
    clock = clock_module.since_jaxtrain_import(t, imported_at=t.now - 2.5)
    assert clock.totals()["startup"] == 2.5
    later = clock_module.since_jaxtrain_import(t, imported_at=t.now + 1.0)
    assert later.totals().get("startup", 0.0) == 0.0
