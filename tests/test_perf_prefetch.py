"""The streaming prefetcher: same chunks in the same order, errors surface, early exit stops the thread."""

import threading

import jax
import numpy as np
import pytest

from jaxtrain.engine.prefetch import prefetch_to_device


def _batches(n, fail_at=None):
    for i in range(n):
        if i == fail_at:
            raise RuntimeError("bad record 3")
        yield np.full((4, 2), i, np.float32), np.full((4,), i, np.int32), np.ones(4, np.float32)


def test_chunks_arrive_stacked_in_order_with_a_short_last_one():
    device = jax.devices()[0]
    chunks = list(prefetch_to_device(_batches(7), 3, device))
    assert [n for n, _ in chunks] == [3, 3, 1]
    xs = np.concatenate([np.asarray(c[0]) for _, c in chunks])
    assert xs.shape == (7, 4, 2) and list(xs[:, 0, 0]) == list(range(7))


def test_a_failure_in_the_input_pipeline_is_raised_in_the_training_loop():
    with pytest.raises(RuntimeError, match="bad record 3"):
        for _ in prefetch_to_device(_batches(10, fail_at=3), 2, jax.devices()[0]):
            pass


def test_leaving_early_stops_the_background_thread():
    gen = prefetch_to_device(_batches(1000), 1, jax.devices()[0])
    next(gen)
    gen.close()
    assert not any(t.name == "jaxtrain-prefetch" and t.is_alive() for t in threading.enumerate())
