"""jaxtrain.util.threads.map_ordered: the plain loop's results and errors, no thread left behind."""

import threading
import time

import numpy as np
import pytest

from jaxtrain.util import threads


@pytest.fixture(params=[1, 2, 4])
def workers(request, monkeypatch):
    monkeypatch.setattr(threads, "WORKERS", request.param)
    return request.param


def test_results_in_input_order(workers):
    # later items finish first: the order must come from the inputs, not from completion
    def slow_first(i):
        time.sleep(0.002 * (8 - i))
        return i * i
    assert threads.map_ordered(slow_first, range(8)) == [i * i for i in range(8)]


def test_numpy_work_equals_the_loop(workers):
    rng = np.random.default_rng(0)
    cols = [rng.normal(size=5000) for _ in range(6)]
    got = threads.map_ordered(lambda c: np.partition(c, [100, 2500]), cols)
    for g, c in zip(got, cols):
        assert g.tobytes() == np.partition(c, [100, 2500]).tobytes()


def test_first_error_in_input_order(workers):
    def fail_on_odd(i):
        if i % 2:
            time.sleep(0.01 if i == 1 else 0)     # item 3 fails before item 1 does
            raise ValueError(f"item {i}")
        return i
    with pytest.raises(ValueError, match="item 1"):
        threads.map_ordered(fail_on_odd, range(6))


def test_nested_calls_run_inline(workers):
    assert threads.map_ordered(lambda i: sum(threads.map_ordered(lambda j: i * j, range(3))), range(4)) == \
        [3 * i for i in range(4)]


def test_no_thread_outlives_the_call(workers):
    # the CLI joins every non-daemon thread before it exits: an idle pool thread would hang it
    threads.map_ordered(lambda i: i, range(5))
    assert [t.name for t in threading.enumerate() if t.name.startswith("jaxtrain-cols")] == []
