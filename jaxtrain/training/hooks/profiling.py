"""Step-time profiling: where the time goes, a verdict, and a jax.profiler trace.

Switched on by `train.profile: true` (or `jaxtrain profile CONFIG --steps N`). The
profile reads the run's clock (util/clock.py), the one every other time figure comes
from, with the same phase names; profiling only adds a device sync after each
compiled call (training/loop.py), so the device's share of a call (`device_compute`)
shows apart from the host's (`dispatch`, with the loop's own work between calls).
That removes the overlap of host and device work, so the profiled steps run a little
slower than unprofiled ones; what it buys is a table whose rows add up to the wall
time. Compilation is a phase of its own and left out.

The profile runs the K the run itself uses: the same run plan, and for
`steps_per_call: auto` the same measurement over the same candidates (the whole epoch
among them, however short the profile), made before the profiled window opens; the
candidates' timings are in profile.json (`steps_per_call_measured_ms`).

The first `train.profile_trace_calls` calls are also recorded as a `jax.profiler`
trace (TensorBoard / Perfetto) under WORKDIR/trace; the engine annotates each call
with `StepTraceAnnotation("train", step_num=<first step of the call>)`. They run
slower, so the table describes the calls after them (or the traced calls, saying so,
when none ran after them). `ProfileHook` stops training after `train.profile_steps`.

Every row of the table belongs to one verdict (SHARES), and the verdict is the one
whose rows take the largest share of the time, with the change that helps:
    input-bound       input wait, host-to-device transfer: the step waits for data
    dispatch-bound    dispatch + Python overhead, metric transfer: the device idles
                      while the host dispatches calls and reads their results back
    hooks-bound       other hooks and logging (the console, metrics.jsonl, trackers,
                      the first epoch's MFU, which may measure this CPU's peak)
    host-bound        other host work, outside every phase
    checkpoint-bound  saving checkpoints blocks the loop
    eval-bound        evaluating the validation split takes the time
    compute-bound     the device is busy: make each step cheaper; bf16 is advised only
                      where it is known to pay (GPU, TPU) or its matmuls were measured
                      faster than fp32 on this CPU
A run is never called compute-bound with IDLE_LIMIT or more of the time device-idle,
or DISPATCH_LIMIT or more in dispatch: then the largest other share decides.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import jax

from jaxtrain.parallel import device_peak as peak
from jaxtrain.training.hooks.protocol import Hook, Request, StepInfo
from jaxtrain.util.clock import Mark
from jaxtrain.util.phases import Phase

# The clock's phases (training/accounting.py), in the table's order, with their labels.
ROWS = [(Phase.INPUT_WAIT, "input wait"), (Phase.H2D_TRANSFER, "host-to-device transfer"),
        (Phase.DISPATCH, "dispatch + Python overhead"), (Phase.DEVICE_COMPUTE, "device compute"),
        (Phase.METRIC_TRANSFER, "metric transfer"), (Phase.CHECKPOINTING, "checkpointing"),
        (Phase.HOOKS, "other hooks and logging"), (Phase.EVALUATION, "validation evaluation"),
        (Phase.OTHER, "other host work")]
IDLE_LIMIT = 0.30
DISPATCH_LIMIT = 0.25
# Each row of the table (ROWS) in exactly one verdict; ties go to the earlier verdict.
SHARES = {"input-bound": (Phase.INPUT_WAIT, Phase.H2D_TRANSFER),
          "dispatch-bound": (Phase.DISPATCH, Phase.METRIC_TRANSFER),
          "compute-bound": (Phase.DEVICE_COMPUTE,), "checkpoint-bound": (Phase.CHECKPOINTING,),
          "eval-bound": (Phase.EVALUATION,), "hooks-bound": (Phase.HOOKS,), "host-bound": (Phase.OTHER,)}


def profile_table(phases: dict[str, float], wall: float, steps: int, k: int, steps_per_epoch: int = 0,
                  bf16: "Bf16Advice | None" = None) -> dict:
    """Per-step seconds and share of each phase (clock seconds over `wall`, compilation left
    out), the device's idle fraction and the verdict."""
    wall = wall - phases.get(Phase.COMPILE, 0.0)
    rows = {name: phases.get(name, 0.0) for name, _ in ROWS}
    rows[Phase.OTHER] += sum(s for name, s in phases.items() if name not in rows and name != Phase.COMPILE)
    steps = max(steps, 1)
    fraction = {name: (s / wall if wall > 0 else 0.0) for name, s in rows.items()}
    idle = max(0.0, min(1.0, 1.0 - fraction[Phase.DEVICE_COMPUTE])) if wall > 0 else 0.0
    verdict, advice = judge(fraction, idle, k, steps_per_epoch, bf16)
    return {
        "steps": steps, "wall_s": wall, "steps_per_call": k,
        "ms_per_step": {name: 1e3 * s / steps for name, s in rows.items()},
        "fraction": fraction, "device_idle_fraction": idle, "verdict": verdict, "advice": advice,
    }


class Bf16Advice:
    """Whether to advise train.precision: bfloat16 for a compute-bound run, from what is known
    of this device: GPUs and TPUs have fast bf16 matmuls; a CPU may not (AVX2 has no bf16 dot
    instructions), so there a bf16 x bf16 -> fp32 matmul is timed against an fp32 one."""

    def __init__(self, precision: str, platform: str, measure: "Callable[[], float] | None" = None):
        self.precision, self.platform = precision, platform
        self._measure = measure or bf16_matmul_speedup
        self.speedup: float | None = None  # bf16 / fp32 matmul throughput, when measured

    def text(self) -> str | None:
        """The bf16 advice, or None where bf16 would not help (or is on already)."""
        if self.precision != "float32":
            return None
        if self.platform in ("gpu", "tpu"):
            return "use train.precision: bfloat16 (bf16 matmuls with fp32 accumulation)"
        self.speedup = self._measure()
        if self.speedup > 1.1:
            return (f"use train.precision: bfloat16 (its matmuls measured {self.speedup:.2f}x the fp32 "
                    f"ones on this {self.platform})")
        return None


def bf16_matmul_speedup(n: int = 512, repeats: int = 5) -> float:
    """fp32 time / bf16 time of an n x n matmul with fp32 accumulation on the default device
    (best of `repeats` after a warm-up call, as the peak table measures a CPU)."""
    return peak.measure_matmul_tflops("bfloat16", n, repeats) / peak.measure_matmul_tflops("float32", n, repeats)


def judge(fraction: dict[str, float], idle: float, k: int, steps_per_epoch: int = 0,
          bf16: Bf16Advice | None = None) -> tuple[str, str]:
    """The largest share of the time, and the change that would help. Not compute-bound while
    the device idles IDLE_LIMIT of the time or dispatch takes DISPATCH_LIMIT of it."""
    shares = {verdict: sum(fraction.get(p, 0.0) for p in phases) for verdict, phases in SHARES.items()}
    verdict = max(shares, key=shares.get)  # ties: the order of SHARES
    if verdict == "compute-bound" and (idle >= IDLE_LIMIT or fraction.get(Phase.DISPATCH, 0.0) >= DISPATCH_LIMIT):
        verdict = max((v for v in shares if v != "compute-bound"), key=shares.get)
    if verdict == "input-bound":
        return verdict, ("the step waits for data: keep the training set on the device "
                         "(raise train.on_device_fraction), or make batch preparation cheaper "
                         "(data.backend: tfdata for parallel preprocessing, preprocess once and cache)")
    if verdict == "dispatch-bound":
        if steps_per_epoch and k >= steps_per_epoch:
            return verdict, ("the device idles while the host works, with one call per epoch "
                             "already: use a larger batch (data.batch_size) so each step does more")
        return verdict, (f"the device idles while Python dispatches: raise train.steps_per_call "
                         f"above {k} (or 'epoch') to fuse more steps per call, or use a larger batch")
    if verdict == "checkpoint-bound":
        return verdict, ("saving checkpoints blocks the loop: save less often (checkpoint.every_epochs, "
                         "checkpoint.every_steps) or in the background (checkpoint.async_save: true)")
    if verdict in ("hooks-bound", "host-bound"):
        return verdict, _host_advice(verdict)
    if verdict == "eval-bound":
        return verdict, ("evaluating the validation split takes the time: evaluate less often "
                         "(train.eval_every_epochs), keep a smaller split (data.val_fraction), or raise "
                         "data.eval_batch_size")
    advice = bf16.text() if bf16 is not None else None
    return verdict, "the device is busy: " + (f"{advice}, a smaller model, or more/faster devices" if advice
                                             else "a smaller model, or more/faster devices")


def _host_advice(verdict: str) -> str:
    if verdict == "hooks-bound":
        return ("hooks and logging take the time, not the steps: in a short run that is mostly the "
                "first epoch's MFU measuring this CPU's peak (once per machine); otherwise log less "
                "often (logging.log_every_steps: 0 logs once per epoch; trackers, TensorBoard), and "
                "profile more steps (train.profile_steps) to see the steps' own share")
    return ("host work outside the steps, hooks and evaluation takes the time: profile more steps "
            "(train.profile_steps), and look at the trace (train.profile_trace_calls) for what runs "
            "between the calls")


def format_report(report: dict) -> list[str]:
    lines = [f"profile: {report['steps']} steps, {report['steps_per_call']} steps per call, "
             f"{report['wall_s'] * 1e3 / report['steps']:.3f} ms/step"
             + (f" ({report['window']})" if report.get("window") else "")]
    for key, label in ROWS:
        lines.append(f"  {label:<28} {report['ms_per_step'][key]:9.4f} ms/step  "
                     f"{100 * report['fraction'][key]:5.1f}%")
    lines.append(f"  device idle: {100 * report['device_idle_fraction']:.1f}%")
    if report.get("mfu") is not None:
        lines.append(f"  MFU: {100 * report['mfu']:.1f}% ({report['tflops_per_sec']:.3g} TFLOP/s)")
    lines.append(f"verdict: {report['verdict']}: {report['advice']}")
    if report.get("trace_dir"):
        lines.append(f"trace: {report['trace_dir']} (tensorboard --logdir, or Perfetto)")
    return lines


class ProfileHook(Hook):
    """Records the first `trace_calls` calls as a trace (under `trace_dir`), stops training after
    `max_steps`, and at the end reports the run's clock over the calls after the trace, or over
    the traced calls when nothing ran after them."""

    def __init__(self, workdir: Path | None, *, max_steps: int = 0, trace_calls: int = 0):
        self.workdir = Path(workdir) if workdir is not None else None
        self.max_steps = max_steps
        self.trace_dir = self.workdir / "trace" if self.workdir is not None and trace_calls > 0 else None
        self.trace_calls = trace_calls if self.trace_dir is not None else 0
        self.bf16: Bf16Advice | None = None  # tests may set one with a fake measurement
        self.tracing = False
        self.calls = 0
        self._mark: tuple[Mark, int] | None = None   # the window's start: clock, step
        self.traced: dict | None = None              # the traced calls' window, once closed

    def on_train_start(self, info: StepInfo) -> None:
        if self.trace_calls:
            jax.profiler.start_trace(str(self.trace_dir))
            self.tracing = True
        self._mark = (info.ctx.clock.mark(), info.step)

    def _window(self, info: StepInfo) -> dict:
        mark, step = self._mark
        wall, phases = info.ctx.clock.since(mark)
        return {"wall": wall, "phases": phases, "steps": info.step - step}

    def after_call(self, info: StepInfo) -> Request | None:
        self.calls += 1
        if self.tracing and self.calls >= self.trace_calls:  # the traced calls run slower: apart
            self.close()
            self.traced = self._window(info)
            self._mark = (info.ctx.clock.mark(), info.step)
        if self.max_steps and info.step >= self.max_steps:
            return Request(stop=f"profile window of {info.step} steps")
        return None

    def close(self) -> None:
        """Stop the trace however the run ended (never leave the process-wide profiler running)."""
        if self.tracing:
            self.tracing = False
            jax.profiler.stop_trace()

    def on_train_end(self, info: StepInfo) -> None:
        self.close()
        window, traced = self._window(info), self.traced
        if window["steps"] <= 0 and traced is not None:
            window, label = traced, "traced calls (profiler overhead included)"
        else:
            label = "traced calls (profiler overhead included)" if self.trace_dir and traced is None \
                else "calls after the trace"
        profile = info.profile
        bf16 = self.bf16 or Bf16Advice(profile["precision"], profile["platform"])
        report = profile_table(window["phases"], window["wall"], window["steps"], info.steps_per_call,
                               info.steps_per_epoch, bf16)
        report["window"] = label
        if label.startswith("traced"):  # the tracer's own cost lands in dispatch
            report["advice"] += ("; but only traced calls were measured, and tracing inflates dispatch: "
                                 "profile more steps (--steps, train.profile_steps) for a sound verdict")
        report["trace_dir"] = str(self.trace_dir) if self.trace_dir else None
        report["compile_s"] = window["phases"].get(Phase.COMPILE, 0.0)
        report["steps_per_call_measured_ms"] = profile.get("steps_per_call_measured_ms", {})
        report.update(profile["perf"].rates(report["wall_s"] * 1e3 / report["steps"]))
        for line in format_report(report):
            info.ctx.console.line(line)
        if self.workdir is not None:
            (self.workdir / "profile.json").write_text(json.dumps(report, indent=2) + "\n")
