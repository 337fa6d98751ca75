"""Preemption: SIGTERM and SIGINT end training at the next call boundary, with a checkpoint.

Schedulers preempt with SIGTERM (then SIGKILL after a grace period); a person
presses Ctrl-C (SIGINT). `PreemptionHook` turns either into an orderly stop:

1. the handler only records the signal (nothing else is safe inside a handler);
2. after the compiled call in flight returns, the hook asks the loop to stop, so
   the loop ends and the checkpoint hook saves the state at that step (its data
   position included, so `--resume` continues exactly there);
3. in `on_train_end` (it must be the last hook) it raises `Preempted`: no test
   evaluation, no `summary.json`; the CLI exits 128 + the signal number (143 for
   SIGTERM, 130 for SIGINT), the shell convention for "ended by a signal".

A process started with SIGINT ignored (a background job of a non-interactive shell)
keeps ignoring it, as Python itself does: only SIGTERM stops such a run. SIGTERM is
always handled: it is the scheduler's notice, and the checkpoint is the point of it.

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

from jaxtrain.training.hooks.protocol import Hook, Request, StepInfo
from jaxtrain.util.errors import Preempted

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class PreemptionHook(Hook):
    stage = "exit"  # it raises only after the final checkpoint is written
    def __init__(self):
        self.received: int | None = None
        self._announced = False
        self._synced = False   # several processes: JAX's preemption sync point decides
        self._calls = 0        # compiled calls so far in this process (the same on every process)
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        self.received = signum
        self._restore_handlers()  # a second signal acts at once

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def on_train_start(self, info: StepInfo) -> None:
        self._synced = jax.process_count() > 1
        if self._synced or threading.current_thread() is not threading.main_thread():
            return  # JAX's service owns SIGTERM; Python delivers signals to the main thread only
        for signum in SIGNALS:
            if signum == signal.SIGINT and signal.getsignal(signum) is signal.SIG_IGN:
                continue  # started with Ctrl-C ignored (a background job): keep it so
            self._previous[signum] = signal.signal(signum, self._handler)

    def after_call(self, info: StepInfo) -> Request | None:
        if self._synced:
            self._calls += 1
            if multihost_utils.reached_preemption_sync_point(self._calls):
                self.received = signal.SIGTERM  # the notice came to this process or another
        return self._stop_if_signalled(info)

    def _stop_if_signalled(self, info: StepInfo) -> Request | None:
        if self.received is None or self._announced:
            return None
        self._announced = True
        name = signal.Signals(self.received).name
        info.ctx.console.line(f"{name} received: saving a checkpoint at step {info.step} and stopping")
        return Request(stop=f"signal {name}")

    def on_epoch_end(self, info: StepInfo) -> Request | None:
        return self._stop_if_signalled(info)

    def on_train_end(self, info: StepInfo) -> None:
        self.close()
        if self.received is not None:
            raise Preempted(self.received, info.step)

    def close(self) -> None:
        """Put the previous handlers back (also when training ended with an exception)."""
        if threading.current_thread() is threading.main_thread():
            self._restore_handlers()
