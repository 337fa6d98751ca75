"""XLA flags jaxtrain sets before the backend starts, each only where the user has not set it.

Several CPU devices in one process (`JAX_NUM_CPU_DEVICES=8`) meet at every collective in a
rendezvous, one thread per device. XLA logs "may be stuck" when a participant is 20 s late
and aborts the whole process (SIGABRT and a C++ stack) 40 s after that. On a loaded machine
(2 cores, other processes busy) a device thread can wait that long for a core: a slow run,
not a stuck one. jaxtrain raises both timeouts (the deadlock that made such runs really stuck is avoided
by bounding the calls in flight: placement.calls_in_flight_limit). Collectives across
processes are watched by parallel/watchdog.py with its own bound; if the abort still comes,
the command line turns it into one line (cli/fatal_guard.py). XLA_FLAGS is read once,
when the backend starts, so this runs at `import jaxtrain`. jaxlib releases before these
flags existed abort on an unknown flag: they are set only from jaxlib 0.9 on.
"""

from __future__ import annotations

import os
from importlib import metadata

# Seconds: XLA's "may be stuck" log line, and the abort that many seconds after it (a real
# stall still ends, 12 minutes after the last participant should have arrived).
CPU_RENDEZVOUS_TIMEOUTS = {"xla_cpu_collective_call_warn_stuck_timeout_seconds": 120,
                           "xla_cpu_collective_call_terminate_timeout_seconds": 600}
FIRST_JAXLIB = (0, 9)


def with_defaults(flags: str, defaults: dict[str, int]) -> str:
    """`flags` (XLA_FLAGS) with `--name=value` added for each default it does not set itself."""
    present = {token.lstrip("-").split("=", 1)[0] for token in flags.split()}
    added = [f"--{name}={value}" for name, value in defaults.items() if name not in present]
    return " ".join([*added, *flags.split()])


def jaxlib_version() -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in metadata.version("jaxlib").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return ()


def set_cpu_rendezvous_timeouts(environ=os.environ) -> None:
    if jaxlib_version() >= FIRST_JAXLIB:
        environ["XLA_FLAGS"] = with_defaults(environ.get("XLA_FLAGS", ""), CPU_RENDEZVOUS_TIMEOUTS)
