"""training/accounting.py: the console's closing lines, word for word (mutmut's survivors)."""

from jaxtrain.training import accounting


def test_closing_lines_say_step_time_tflops_mfu_and_the_three_largest_parts():
    perf = {"step_time_ms": 1.25, "tflops_per_sec": 0.5, "mfu": 0.125, "peak_tflops": 4.0}
    parts = {"train": 6.0, "compile": 3.0, "data": 0.5, "other": 0.5, "evaluation": 2.0}
    assert accounting.closing_lines(perf, 12.0, parts) == [
        "perf: 1.25 ms/step, 0.5 TFLOP/s, MFU 12.5% of 4 TFLOP/s",
        "time: 12.00 s in all; largest: train 6.00 s (50%), compile 3.00 s (25%), evaluation 2.00 s (17%)"]


def test_closing_lines_without_steps_or_peak_say_so():
    perf = {"step_time_ms": None, "tflops_per_sec": None, "mfu": None, "peak_tflops": None}
    assert accounting.closing_lines(perf, 0.0, {"other": 0.0}) == [
        "perf: no steps timed, MFU unknown", "time: 0.00 s in all; largest: "]
