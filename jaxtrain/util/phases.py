"""The phases of a run's timeline: every moment of a run is charged to exactly one of them.

One enum, shared by the engine (what it does next), the loop (which moves the clock),
training/accounting.py (how phases fold into summary.json's `time.breakdown`) and the
profiling hook (its rows). A `StrEnum`: a phase is its own name wherever a string is
written (summary.json, checkpoint meta, metrics.jsonl), and a name read back finds its phase.
"""

from __future__ import annotations

import enum


class Phase(enum.StrEnum):
    STARTUP = "startup"                  # the process's start, before the run's clock existed (CLI)
    DATA = "data"                        # loading and preprocessing the data set
    COMPILE = "compile"                  # compiling a chunk length; measuring K (steps_per_call: auto)
    INPUT_WAIT = "input_wait"            # waiting for the next streamed chunk
    H2D_TRANSFER = "h2d_transfer"        # uploading an epoch's order
    DISPATCH = "dispatch"                # calling the compiled step, the loop's bookkeeping between calls
    DEVICE_COMPUTE = "device_compute"    # waiting for the device (pacing, profiling, the epoch's end)
    METRIC_TRANSFER = "metric_transfer"  # reading an epoch's metric sums back
    EVALUATION = "evaluation"            # validation and test evaluation
    CHECKPOINTING = "checkpointing"      # the checkpoint hook
    HOOKS = "hooks_and_logging"          # every other hook, the console, metrics.jsonl
    OTHER = "other"                      # what no phase claims: setup, preflight, the summary
