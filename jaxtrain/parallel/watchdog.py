"""Ending a multi-process run whose processes stop making progress together.

Every computation over a global array is a collective: each process must issue it,
in the same order, or the ones that did wait forever for the ones that did not.
The coordinator's heartbeat only catches a process that died; a live process
stuck in a collective that its peers never join beats on. So each process marks
its progress (`enter(phase)`: the train call at step N, the epoch's metrics, an
evaluation, the hooks), and a background thread ends the process with one line
naming the process and the phase when no progress was marked for `timeout_s`
(`parallel.distributed.collective_timeout_s`). `jaxtrain launch` then stops the others.

A stuck collective and a long one look alike from the host: with asynchronous dispatch the
host waits for a whole epoch's calls at its metric read. So the timeout must exceed the
longest compiled call, or epoch, that the run legitimately waits for; the line says so.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Callable

EXIT_STUCK = 4  # the CLI's exit status for a run whose processes stopped making progress


def _exit_now(status: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # the main thread is blocked in the runtime: nothing else can end it


class ProgressWatchdog:
    """`enter(phase)` marks progress; `timeout_s` without any ends the process (see module doc).

    Inactive (enter is a bare assignment, no thread) unless `timeout_s` is set and the run
    has several processes. `clock`, `poll_s` and `on_stuck` are for tests."""

    def __init__(self, timeout_s: float | None, process: int, num_processes: int, phase: str = "start-up",
                 clock: Callable[[], float] = time.monotonic, poll_s: float | None = None,
                 on_stuck: Callable[[str], None] | None = None):
        self.timeout_s, self.process, self.num_processes = timeout_s, process, num_processes
        self.clock = clock
        self.mark = (phase, clock())  # (phase, when it began): one tuple, read whole by the thread
        self._on_stuck = on_stuck or self._end_process
        self._stop = threading.Event()
        self._thread = None
        if timeout_s and num_processes > 1:
            self._poll_s = poll_s if poll_s is not None else min(5.0, timeout_s / 10)
            self._thread = threading.Thread(target=self._watch, name="jaxtrain-watchdog", daemon=True)
            self._thread.start()

    def enter(self, phase: str) -> None:
        self.mark = (phase, self.clock())

    def message(self, phase: str, waited: float) -> str:
        return (f"process {self.process} of {self.num_processes} made no progress for {waited:.0f} s in "
                f"{phase}: most likely the processes wait on each other in a collective that not all "
                f"of them joined; ending the run. If one compiled call or epoch really takes longer, "
                f"raise it from parallel.distributed.collective_timeout_s={self.timeout_s:g}")

    def check(self) -> bool:
        """End the run if the current phase has lasted longer than the timeout; True if it did."""
        phase, since = self.mark
        waited = self.clock() - since
        if waited <= self.timeout_s:
            return False
        self._on_stuck(self.message(phase, waited))
        return True

    def _watch(self) -> None:
        while not self._stop.wait(self._poll_s):
            if self.check():
                return

    def _end_process(self, line: str) -> None:
        print(f"jaxtrain: error: {line}", file=sys.stderr)
        _exit_now(EXIT_STUCK)

    def close(self) -> None:
        self._stop.set()
