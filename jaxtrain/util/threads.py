"""A small shared thread pool for per-column NumPy and Arrow work.

NumPy (partition, astype, take, ufuncs) and Arrow (compute, conversion) release the GIL
while they work, so independent columns or row blocks can use every core. Results come
back in the order of the inputs, and an error is the first input's that raised one, as
if the loop had run alone: what a caller computes does not depend on the threads.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import os
import threading
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")
R = TypeVar("R")

WORKERS = max(1, min(os.cpu_count() or 1, 8))
_pool: concurrent.futures.ThreadPoolExecutor | None = None


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = concurrent.futures.ThreadPoolExecutor(WORKERS, thread_name_prefix="jaxtrain-cols")
        atexit.register(_pool.shutdown, wait=False)
    return _pool


def map_ordered(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """[fn(item) for item in items], the items shared among the pool's threads (in this
    thread when there is one core or one item). Nested calls run inline: a task never
    waits on tasks queued behind it."""
    items = list(items)
    if WORKERS == 1 or len(items) <= 1 or _in_pool():
        return [fn(item) for item in items]
    futures = [_executor().submit(fn, item) for item in items]
    try:
        return [f.result() for f in futures]
    finally:
        for f in futures:
            f.cancel()


def _in_pool() -> bool:
    return threading.current_thread().name.startswith("jaxtrain-cols")
