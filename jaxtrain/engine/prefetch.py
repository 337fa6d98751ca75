"""Streaming input: a background thread prepares and transfers the next chunk.

While the device runs chunk i, the thread stacks the host batches of chunk i+1
(K batches -> (K, B, ...) arrays) and copies them to the devices, so host work
and transfer overlap with compute. The queue holds at most `depth` chunks
(2 = double buffering), which bounds host and device memory. Errors in the
thread (e.g. a data-stage failure) are re-raised in the consumer.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Iterator

import jax
import numpy as np

_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def stacked_chunks(batches: Iterator, k: int) -> Iterator[list]:
    """Group host batches into lists of up to k (the last may be shorter)."""
    while True:
        chunk = [b for _, b in zip(range(k), batches)]
        if not chunk:
            return
        yield chunk


def stack(chunk: list) -> tuple[np.ndarray, ...]:
    return tuple(np.stack(parts) for parts in zip(*chunk))


def prefetch_to_device(batches: Iterator, k: int, sharding, *, depth: int = 2) -> Iterator[tuple[int, Any]]:
    """Yield `(num_steps, device_chunk)` for chunks of k host batches, prepared ahead in a thread."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for chunk in stacked_chunks(batches, k):
                if stop.is_set():
                    return
                host = stack(chunk)
                # `sharding` may be a function that places the chunk (multi-process input).
                dev = sharding(host) if callable(sharding) else jax.device_put(host, sharding)
                _put(q, (len(chunk), dev), stop)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            _put(q, _Failure(exc), stop)
            return
        _put(q, _DONE, stop)

    thread = threading.Thread(target=produce, name="jaxtrain-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                pass
            thread.join(timeout=0.05)


def _put(q: queue.Queue, item, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            continue
