"""One line instead of XLA's C++ stacks when a CPU collective's rendezvous times out.

With several CPU devices in one process, XLA ends a process whose collective waited past its
termination timeout (parallel/xla_flags.py) with LOG(FATAL): every thread's stack, then
SIGABRT. Nothing in Python can catch that, but the command line can read what the runtime
writes. While the guard is on, file descriptor 2 goes through a pipe that a thread forwards
line by line to the real stderr; the line announcing the timeout (or the stacks before it) is
not forwarded: the thread writes one line naming the cause and what to change, and ends the
process with EXIT_STUCK before the stacks reach the terminal. Python's own `sys.stderr` keeps
writing to the real stderr directly (a terminal stays a terminal for the progress display).
"""

from __future__ import annotations

import os
import sys
import threading

EXIT_STUCK = 4  # as parallel/watchdog.py: a run whose devices or processes stopped making progress
MARKERS = (b"Termination timeout for", b"All thread stack traces")
MESSAGE = ("jaxtrain: error: the devices of this process waited too long for each other in a collective "
           "(XLA's CPU rendezvous timed out), so the run was ended: the machine is overloaded or a device "
           "thread is stuck. Run on a quieter machine or with fewer simulated devices (JAX_NUM_CPU_DEVICES), "
           "or raise --xla_cpu_collective_call_terminate_timeout_seconds in XLA_FLAGS\n")


def wanted(environ=os.environ) -> bool:
    """On for several simulated CPU devices, the only setup with in-process CPU collectives."""
    try:
        return int(environ.get("JAX_NUM_CPU_DEVICES") or 1) > 1
    except ValueError:
        return False


class FatalGuard:
    def __init__(self):
        sys.stderr.flush()
        self.real = os.dup(2)
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        self._read = read
        self._saved_stderr = sys.stderr
        sys.stderr = open(os.dup(self.real), "w", buffering=1, encoding="utf-8", errors="backslashreplace")
        self._thread = threading.Thread(target=self._forward, name="jaxtrain-stderr", daemon=True)
        self._thread.start()

    def _forward(self) -> None:
        pending = b""
        while chunk := os.read(self._read, 65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if any(m in line for m in MARKERS):
                    os.write(self.real, MESSAGE.encode())
                    os._exit(EXIT_STUCK)
                os.write(self.real, line + b"\n")
        if pending:
            os.write(self.real, pending)

    def close(self) -> None:
        """Put file descriptor 2 back and forward what is left in the pipe."""
        sys.stderr.flush()
        os.dup2(self.real, 2)   # the pipe's last writer (in this process) is gone: the thread drains it
        self._thread.join(timeout=5.0)
        sys.stderr.close()
        sys.stderr = self._saved_stderr
