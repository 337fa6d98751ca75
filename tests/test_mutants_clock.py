"""util/clock.py: the cases mutmut's surviving mutants showed untested (docs/testing.md), each
against a value computed by hand."""

import io
import os

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
    assert c.get("startup") == 2.5 and c.get("data") == 1.0
    assert c.get("never_charged") == 0.0
    assert c.total_s() == pytest.approx(3.5)


def test_a_state_without_segments_or_epochs_loads_as_none_yet():
    c = RunClock(FakeTime())
    c.load_state_dict({})
    assert c.segments == [] and c.epochs == []
    c.record_epoch(train_s=1.0, steps=2, examples=4)
    again = RunClock(FakeTime())
    again.load_state_dict(c.state_dict())
    assert len(again.segments) == 1 and again.epochs == c.epochs == [
        {"train_s": 1.0, "steps": 2, "examples": 4, "segment": 0}]


def _fake_proc(monkeypatch, stat: str, uptime: str):
    files = {"/proc/self/stat": stat, "/proc/uptime": uptime}
    monkeypatch.setattr(clock_module, "open", lambda path, *a, **k: io.StringIO(files[path]), raising=False)


@pytest.mark.parametrize("name", ["python", "a) b", "x (y) z)"])
def test_process_age_reads_the_start_time_after_the_last_parenthesis(monkeypatch, name):
    """Field 22 of /proc/self/stat (start time in ticks) follows the ')' that closes the command
    name, which may itself hold ')' and spaces; 0.25 s after the start reads 0.25, not more."""
    tck = os.sysconf("SC_CLK_TCK")
    start_ticks = 1000 * tck
    fields = ["S"] + [str(i) for i in range(4, 22)] + [str(start_ticks)] + ["0"] * 20
    _fake_proc(monkeypatch, f"4242 ({name}) " + " ".join(fields) + "\n", f"{1000.25:.2f} 1.0\n")
    assert clock_module.process_age_s() == pytest.approx(0.25)


def test_a_clock_since_process_start_charges_the_age_to_startup(monkeypatch):
    monkeypatch.setattr(clock_module, "process_age_s", lambda: 2.5)
    assert clock_module.since_process_start().get("startup") == 2.5
    monkeypatch.setattr(clock_module, "process_age_s", lambda: None)   # unknown: nothing charged
    assert clock_module.since_process_start().totals().get("startup", 0.0) == 0.0
