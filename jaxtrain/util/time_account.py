"""Where a run's wall time goes: every moment charged to exactly one named part.

A `TimeAccount` keeps a stack of open parts and charges the time between two
switches to the innermost one, so nested parts never count twice and the parts
always add up to the wall time since the account started:

    account = TimeAccount(clock)
    with account.part("train"):
        ...                               # charged to "train"
        with account.part("checkpointing"):
            ...                           # charged to "checkpointing", not "train"

Time outside every part is charged to the base part ("other"). The clock can be
passed in, so tests drive it by hand.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Callable


class TimeAccount:
    def __init__(self, clock: Callable[[], float] = time.perf_counter, base: str = "other"):
        self.clock = clock
        self.start = clock()
        self.totals: dict[str, float] = {}
        self._stack = [base]
        self._since = self.start

    def _charge_open_part(self) -> None:
        now = self.clock()
        top = self._stack[-1]
        self.totals[top] = self.totals.get(top, 0.0) + now - self._since
        self._since = now

    @contextlib.contextmanager
    def part(self, name: str):
        self._charge_open_part()
        self._stack.append(name)
        try:
            yield
        finally:
            self._charge_open_part()
            self._stack.pop()

    def add_before_start(self, name: str, seconds: float) -> None:
        """Time spent before the account existed (say, process start-up): it moves the start back."""
        self.totals[name] = self.totals.get(name, 0.0) + seconds
        self.start -= seconds

    def get(self, name: str) -> float:
        """Seconds charged to `name` so far, the running part included."""
        running = self.clock() - self._since if self._stack[-1] == name else 0.0
        return self.totals.get(name, 0.0) + running

    def snapshot(self) -> tuple[float, dict[str, float]]:
        """(total seconds since the start, seconds per part); the parts add up to the total."""
        self._charge_open_part()
        return self._since - self.start, dict(self.totals)


def process_age_s() -> float | None:
    """Seconds since this process started (Linux: /proc), or None where that is unknown."""
    try:
        with open("/proc/self/stat") as f:
            # Field 22 (starttime, clock ticks after boot) follows the ')' closing the command name.
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))


def since_process_start() -> TimeAccount:
    """An account whose first part, 'startup', is the time from process start until now."""
    account = TimeAccount()
    account.add_before_start("startup", process_age_s() or 0.0)
    return account
