"""A progress line while the host waits on a long compiled call.

The loop reports progress only between compiled calls; with `train.steps_per_call: epoch`
one call covers a whole epoch, and a log that is not a terminal would stay silent for
all of it. A `Heartbeat` thread fills such silences: when the console printed nothing
for `interval_s`, it prints the latest progress again with the elapsed time and the
run's ETA (`Console.beat`; on a terminal it redraws the bar). It only reads what the
loop last reported, so it never waits on the device nor delays a step; `close()` stops
it at once. `clock` and `wait` are injectable, so tests run it on fake time.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from jaxtrain.util.events import Console


class Heartbeat:
    """`with Heartbeat(console):` a beat whenever `console` was quiet for `interval_s`."""

    def __init__(self, console: Console, interval_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wait: Callable[[float], bool] | None = None):
        self.console, self.clock = console, clock
        self.interval_s = console.plain_every_s if interval_s is None else interval_s
        self._stop = threading.Event()
        self._wait = wait or self._stop.wait  # wait(seconds) -> True once stopped
        self._thread = threading.Thread(target=self._run, name="jaxtrain-heartbeat", daemon=True)
        self._start = clock()

    def __enter__(self) -> "Heartbeat":
        if self.console.show_progress:
            self._start = self.clock()
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            quiet = self.clock() - self.console.last_output
            if quiet >= self.interval_s:
                self.console.beat(self.clock() - self._start)
                quiet = 0.0
            if self._wait(self.interval_s - quiet):
                return
