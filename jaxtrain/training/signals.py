"""Preemption: SIGTERM and SIGINT end training at the next call boundary, with a checkpoint.

Schedulers preempt with SIGTERM (then SIGKILL after a grace period); a person
presses Ctrl-C (SIGINT). `PreemptionHook` turns either into an orderly stop:

1. the handler only records the signal (nothing else is safe inside a handler);
2. after the compiled call in flight returns, the hook sets `run.stop_reason`, so
   the loop ends and the checkpoint hook saves the state at that step (its data
   position included, so `--resume` continues exactly there);
3. in `on_train_end` (it must be the last hook) it raises `Preempted`: no test
   evaluation, no `summary.json`; the CLI exits 128 + the signal number (143 for
   SIGTERM, 130 for SIGINT), the shell convention for "ended by a signal".

A second signal while stopping means "now": the previous handlers are back in
place, so it ends the process at once (the last complete checkpoint is intact).

Several processes must stop at the same step, or the save (a collective) hangs.
There JAX's preemption service takes SIGTERM instead of a Python handler: the
notice that reaches any one process goes to all, and
`multihost_utils.reached_preemption_sync_point(call)`, asked by every process
after each compiled call, turns True at the same call on all of them. Each then
saves once and exits 143. SIGINT is left to Python there (a Ctrl-C ends one process,
and the launcher ends the rest).
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import jax
from jax.experimental import multihost_utils

from jaxtrain.util.errors import Preempted
from jaxtrain.training.loop import Hook, Run

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class PreemptionHook(Hook):
    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        self._synced = False   # several processes: JAX's preemption sync point decides
        self._calls = 0        # compiled calls so far in this process (the same on every process)

    def _handler(self, signum: int, frame: Any) -> None:
        self.received = signum
        self._restore_handlers()  # a second signal acts at once

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def on_train_start(self, run: Run) -> None:
        self._synced = jax.process_count() > 1
        if self._synced or threading.current_thread() is not threading.main_thread():
            return  # JAX's service owns SIGTERM; Python delivers signals to the main thread only
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handler)

    def after_call(self, run: Run, sums: dict) -> None:
        if self._synced:
            self._calls += 1
            if multihost_utils.reached_preemption_sync_point(self._calls):
                self.received = signal.SIGTERM  # the notice came to this process or another
        self._stop_if_signalled(run)

    def _stop_if_signalled(self, run: Run) -> None:
        if self.received is not None and run.stop_reason is None:
            run.stop_reason = f"signal {signal.Signals(self.received).name}"
            run.ctx.console.line(f"{signal.Signals(self.received).name} received: saving a checkpoint "
                                 f"at step {run.global_step} and stopping")

    def on_epoch_end(self, run: Run, record: dict) -> None:
        self._stop_if_signalled(run)

    def on_train_end(self, run: Run) -> None:
        self.close()
        if self.received is not None:
            raise Preempted(self.received, run.global_step)

    def close(self) -> None:
        """Put the previous handlers back (also when training ended with an exception)."""
        if threading.current_thread() is threading.main_thread():
            self._restore_handlers()
