"""Threads for per-column NumPy and Arrow work.

NumPy (partition, astype, take, ufuncs) and Arrow (compute, conversion) release the GIL
while they work, so independent columns or row blocks can use every core. Results come
back in the order of the inputs, and an error is the first input's that raised one, as
if the loop had run alone: what a caller computes does not depend on the threads.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")
R = TypeVar("R")

WORKERS = max(1, min(os.cpu_count() or 1, 8))
_NAME = "jaxtrain-cols"


def map_ordered(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """[fn(item) for item in items], the items shared among up to WORKERS threads (in this
    thread when there is one core or one item; nested calls run inline). The threads live
    for this call only: none is left running to hold up the end of the process."""
    items = list(items)
    if WORKERS == 1 or len(items) <= 1 or threading.current_thread().name.startswith(_NAME):
        return [fn(item) for item in items]
    with concurrent.futures.ThreadPoolExecutor(min(WORKERS, len(items)), thread_name_prefix=_NAME) as pool:
        futures = [pool.submit(fn, item) for item in items]
        try:
            return [f.result() for f in futures]
        finally:
            for f in futures:
                f.cancel()
