"""A run's accounts, all read from its clock: where the wall time went, step time, FLOPs, MFU.

The loop charges every moment of a run to one `Phase` (util/phases.py) of the run's
`RunClock` (util/clock.py), itself or through the timeline it hands the engine
(engine/timeline.py): the CLI's `startup` (jaxtrain's import to the run's start), `data`
(runs/lanes.py), `compile` (the engine's compiling; measuring K for `steps_per_call:
auto` counts too), the training phases (TRAIN_PHASES: waiting for input, host-to-device
copies, dispatching the compiled calls with the loop's own bookkeeping between them, the
engine's waits for the device (pacing, profiling's sync after each call, the epoch's
end), and reading the epoch's metrics back), `evaluation`, `checkpointing` (the
checkpoint hook) and `hooks_and_logging` (every other hook, the console,
metrics.jsonl). What no phase claims is `other` (building the model and the mesh,
preflight checks, writing the summary). The summary's `time.breakdown` lists the
PARTS, the training phases added up as `train`; they add up to `time.total_s`.

Throughput comes from one measurement: an epoch's `train` seconds (compilation,
hooks and evaluation excluded), its steps and its examples. `step_time_ms` is
seconds over steps and `examples_per_sec` examples over seconds, so their product
is the examples per step. Calls are dispatched asynchronously, so a single call's
time is only known at the epoch's one device sync; the summary adds up the epochs
after each segment's first (caches warm), or all of them when that leaves none.

FLOPs come from XLA's cost analysis of the compiled call (engine.flops_per_step);
MFU is the achieved FLOP/s over the peak of the run's devices (parallel/device_peak.py),
never above 1.
"""

from __future__ import annotations

from typing import Callable, Iterable

from jaxtrain.parallel.device_peak import Peak, peak_tflops
from jaxtrain.util.clock import RunClock
from jaxtrain.util.phases import Phase

TRAIN_PHASES = (Phase.INPUT_WAIT, Phase.H2D_TRANSFER, Phase.DISPATCH, Phase.DEVICE_COMPUTE,
                Phase.METRIC_TRANSFER)
TRAIN_PART = "train"  # not a phase: the training phases added up in time.breakdown
PARTS = (Phase.STARTUP, Phase.DATA, Phase.COMPILE, TRAIN_PART, Phase.EVALUATION, Phase.CHECKPOINTING,
         Phase.HOOKS, Phase.OTHER)


def hook_part(hook) -> Phase:
    """The phase a hook's time is charged to: its `time_part` (Phase.CHECKPOINTING), else hooks."""
    return getattr(hook, "time_part", Phase.HOOKS)


def train_seconds(phases: dict[str, float]) -> float:
    return sum(phases.get(p, 0.0) for p in TRAIN_PHASES)


def parts(phases: dict[str, float]) -> dict[str, float]:
    """Seconds per part of PARTS (all listed; the training phases as `train`), then any other phase."""
    folded = {name: 0.0 for name in PARTS}
    for name, seconds in phases.items():
        key = TRAIN_PART if name in TRAIN_PHASES else name
        folded[key] = folded.get(key, 0.0) + seconds
    return folded


def time_section(clock: RunClock) -> dict:
    """summary.json's `time`: the whole run's seconds in all and by part (every segment added
    up), and each segment's own figures."""
    segments = [{"total_s": s["total_s"], "breakdown": parts(s["phases"])}
                for s in clock.state_dict()["segments"]]
    breakdown = {name: sum(s["breakdown"].get(name, 0.0) for s in segments)
                 for name in dict.fromkeys(k for s in segments for k in s["breakdown"])}
    return {"total_s": sum(s["total_s"] for s in segments), "breakdown": breakdown, "segments": segments}


def steady_epochs(epochs: list[dict]) -> list[dict]:
    """The epochs after each segment's first (caches warm), or all of them when that is none."""
    firsts = {e["segment"]: i for i, e in reversed(list(enumerate(epochs)))}
    steady = [e for i, e in enumerate(epochs) if firsts[e["segment"]] != i]
    return steady or epochs


def throughput(epochs: list[dict]) -> dict:
    """`step_time_ms` and `examples_per_sec` of `epochs` together (None when none was timed)."""
    seconds = sum(e["train_s"] for e in epochs)
    steps, examples = sum(e["steps"] for e in epochs), sum(e["examples"] for e in epochs)
    if seconds <= 0 or steps <= 0:
        return {"step_time_ms": None, "examples_per_sec": None}
    return {"step_time_ms": 1e3 * seconds / steps, "examples_per_sec": examples / seconds}


class Perf:
    """FLOPs, peak and MFU of a run; its CPU peak is measured again at most once, when the run
    beats the cached figure."""

    def __init__(self, flops_per_step: Callable[[], float | None], devices: list, precision: str):
        """`flops_per_step`: asked once, when first needed (the engine knows it once it compiled)."""
        self._flops_per_step, self.devices, self.precision = flops_per_step, devices, precision
        self._flops: float | None = None
        self._peak: Peak | None = None
        self._rechecked = False

    @property
    def flops(self) -> float | None:
        if self._flops is None:
            self._flops = self._flops_per_step()
        return self._flops

    def peak(self, achieved: float = 0.0) -> Peak:
        stale = self._peak is not None and (self._peak.tflops or 0.0) < achieved and not self._rechecked
        if self._peak is None or stale:
            self._rechecked = self._rechecked or achieved > 0
            self._peak = peak_tflops(self.devices, self.precision, at_least=achieved)
        return self._peak

    def rates(self, step_ms: float | None, flops: float | None = None) -> dict:
        """TFLOP/s and MFU at `step_ms` milliseconds per step of `flops` (this program's by
        default); None where unknown."""
        flops = flops or self.flops
        if not flops or not step_ms or step_ms <= 0:
            return {"tflops_per_sec": None, "mfu": None}
        tflops = flops / (step_ms / 1e3) / 1e12
        peak = self.peak(tflops).tflops
        return {"tflops_per_sec": tflops, "mfu": min(1.0, tflops / peak) if peak else None}

    def section(self, epochs: list[dict], examples_per_step: int, steps_per_call: int | None) -> dict:
        """summary.json's `perf` over `epochs` (the steady ones of every segment). FLOPs and
        TFLOP/s are the compiled programs' (all vectorized points together: what the devices
        did), per step averaged over the epochs, each with its own program's count;
        `examples_per_step` is what one step of this program trains, every point's batch."""
        step_ms = throughput(epochs)["step_time_ms"]
        counted, steps = [e.get("flops") for e in epochs], sum(e["steps"] for e in epochs)
        flops = sum(counted) / steps if steps > 0 and all(counted) else self.flops
        return {"step_time_ms": step_ms, "steps_per_call": steps_per_call, "flops_per_step": flops,
                "flops_per_example": self.flops / examples_per_step if self.flops else None,
                **self.rates(step_ms, flops), **self.peak().as_dict(), "precision": self.precision,
                "device_kind": self.devices[0].device_kind, "devices": len(self.devices)}


def closing_lines(perf: dict, total_s: float, parts_s: dict[str, float]) -> list[str]:
    """Step time and MFU, and the three largest parts of the wall time."""
    step = perf.get("step_time_ms")
    mfu = perf.get("mfu")
    line = f"perf: {step:.4g} ms/step" if step else "perf: no steps timed"
    if perf.get("tflops_per_sec"):
        line += f", {perf['tflops_per_sec']:.3g} TFLOP/s"
    line += f", MFU {100 * mfu:.1f}% of {perf['peak_tflops']:.3g} TFLOP/s" if mfu else ", MFU unknown"
    largest = sorted(parts_s.items(), key=lambda kv: -kv[1])[:3]
    share = ", ".join(f"{name} {s:.2f} s ({100 * s / total_s:.0f}%)" for name, s in largest) if total_s > 0 else ""
    return [line, f"time: {total_s:.2f} s in all; largest: {share}"]
