"""A run's accounts: step time, FLOPs and MFU (`perf`), and where its wall time went.

The loop charges its time to parts of a `TimeAccount` (util/time_account.py):
`train` around each epoch's compiled calls up to the epoch's one device sync,
`compile` inside it (the engine compiles and measures K there), `evaluation`,
`checkpointing` (the checkpoint hook), `hooks_and_logging` (every other hook, the
console, metrics.jsonl); `api.train` adds `data`, and the CLI `startup` (process
start to the run's start: the interpreter and imports). What no part claims is
`other` (building the model and the mesh, preflight checks, writing the summary).
Each moment is charged to one part, so the parts add up to `time.total_s`.

Step time is an epoch's `train` seconds over its steps, median over epochs: calls
are dispatched asynchronously, so a single call's time is only known at the
epoch's sync, and waiting after every call would slow training down. A hook that
reads the state (a checkpoint save) may wait for the device inside its own part.

FLOPs come from XLA's cost analysis of the compiled call (engine.flops_per_step);
MFU is the achieved FLOP/s over the peak of the run's devices (engine/peak.py).
"""

from __future__ import annotations

import statistics
from jaxtrain.engine.peak import peak_tflops
from jaxtrain.util.time_account import TimeAccount

PARTS = ("startup", "data", "compile", "train", "evaluation", "checkpointing", "hooks_and_logging", "other")
HOOK_PART = "hooks_and_logging"


def hook_part(hook) -> str:
    """The part a hook's time is charged to: its `time_part` ('checkpointing'), else hooks."""
    return getattr(hook, "time_part", HOOK_PART)


class PerfMeter:
    """Per-epoch step time and MFU of a run; the `perf` section of its summary."""

    def __init__(self, engine, devices: list, precision: str, batch_size: int, microbatches: int = 1):
        self.engine, self.devices, self.precision, self.batch_size = engine, devices, precision, batch_size
        self.microbatches = microbatches  # train.grad_accum_steps: a scan XLA counts once
        self.step_ms: list[float] = []
        self._flops: float | None = None
        self._peak: tuple[float | None, str] | None = None
        self._rechecked = False

    def flops_per_step(self) -> float | None:
        if self._flops is None:
            flops = self.engine.flops_per_step()
            # the microbatch scan's body counted once; its update counted as many times (small)
            self._flops = flops * self.microbatches if flops else None
        return self._flops

    def peak(self, achieved: float = 0.0) -> tuple[float | None, str]:
        """The devices' peak; a CPU's cached peak below `achieved` TFLOP/s is measured again."""
        stale = self._peak is not None and (self._peak[0] or 0.0) < achieved and not self._rechecked
        if self._peak is None or stale:
            self._rechecked = self._rechecked or achieved > 0  # measured again at most once a run
            self._peak = peak_tflops(self.devices, self.precision, at_least=achieved)
        return self._peak

    def rates(self, step_ms: float) -> dict:
        """TFLOP/s and MFU at `step_ms` milliseconds per step (None where unknown)."""
        flops = self.flops_per_step()
        if not flops or not step_ms or step_ms <= 0:
            return {"tflops_per_sec": None, "mfu": None}
        tflops = flops / (step_ms / 1e3) / 1e12
        peak, _ = self.peak(tflops)
        return {"tflops_per_sec": tflops, "mfu": tflops / peak if peak else None}

    def epoch(self, train_s: float, steps: int) -> dict:
        """Record an epoch's training seconds over `steps` steps; its step_time_ms and mfu."""
        if steps <= 0:
            return {}
        step_ms = 1e3 * train_s / steps
        self.step_ms.append(step_ms)
        return {"step_time_ms": step_ms, "mfu": self.rates(step_ms)["mfu"]}

    def section(self) -> dict:
        step_ms = statistics.median(self.step_ms) if self.step_ms else None
        flops = self.flops_per_step()
        rates = self.rates(step_ms)
        peak, source = self.peak()
        return {"step_time_ms": step_ms, "steps_per_call": self.engine.k,
                "flops_per_step": flops,
                "flops_per_example": flops / self.batch_size if flops else None,
                **rates, "peak_tflops": peak, "peak_source": source, "precision": self.precision,
                "device_kind": self.devices[0].device_kind, "devices": len(self.devices)}


def breakdown(account: TimeAccount) -> tuple[float, dict[str, float]]:
    """(total seconds, seconds per part, every part of PARTS listed) from the account."""
    total, parts = account.snapshot()
    return total, {name: parts.get(name, 0.0) for name in PARTS} | {
        name: s for name, s in parts.items() if name not in PARTS}


def closing_lines(perf: dict, total_s: float, parts: dict[str, float]) -> list[str]:
    """Step time and MFU, and the three largest parts of the wall time."""
    step = perf.get("step_time_ms")
    mfu = perf.get("mfu")
    line = f"perf: {step:.4g} ms/step" if step else "perf: no steps timed"
    if perf.get("tflops_per_sec"):
        line += f", {perf['tflops_per_sec']:.3g} TFLOP/s"
    line += f", MFU {100 * mfu:.1f}% of {perf['peak_tflops']:.3g} TFLOP/s" if mfu else ", MFU unknown"
    largest = sorted(parts.items(), key=lambda kv: -kv[1])[:3]
    share = ", ".join(f"{name} {s:.2f} s ({100 * s / total_s:.0f}%)" for name, s in largest) if total_s > 0 else ""
    return [line, f"time: {total_s:.2f} s in all; largest: {share}"]
