"""Step-time profiling: where the time goes, a verdict, and a jax.profiler trace.

Switched on by `train.profile: true` (or `jaxtrain profile CONFIG --steps N`):
the loop starts the engine's phase timer once K is chosen (phase_timer.py). Each
compiled call is timed as dispatch (until the call returns) and device compute
(until its results are ready), next to the input wait, host-to-device transfers,
metric read-back and blocking hooks (checkpoints). Waiting for the device after
each call removes the overlap of host and device work, so the profiled steps run
a little slower than unprofiled ones; what it buys is a breakdown whose parts add
up to the wall time. Compilation is timed apart and left out, so no warm-up call
has to be thrown away.

The first `train.profile_trace_calls` calls are also recorded as a
`jax.profiler` trace (TensorBoard / Perfetto) under WORKDIR/trace, each call
annotated with `StepTraceAnnotation("train", step_num=<first step of the call>)`.
`ProfileHook` stops training after `train.profile_steps` and reports at the end.

The verdict names the largest share of the time and the change that helps:
    input-bound       the step waits for data
    dispatch-bound    the device idles while Python and dispatch run
    checkpoint-bound  saving checkpoints (and other hooks) blocks the loop
    eval-bound        evaluating the validation split takes the time
    compute-bound     the device is busy: make each step cheaper; bf16 is advised only
                      where it is known to pay (GPU, TPU) or its matmuls were measured
                      faster than fp32 on this CPU
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from jaxtrain.engine import peak
from jaxtrain.training.hooks.protocol import Hook, Request, StepInfo

ROWS = [("input_wait", "input wait"), ("h2d_transfer", "host-to-device transfer"),
        ("dispatch_python", "dispatch + Python overhead"), ("device_compute", "device compute"),
        ("metric_transfer", "metric transfer"), ("checkpoint_blocking", "checkpoint/hook blocking"),
        ("evaluation", "validation evaluation")]


def breakdown(totals: dict[str, float], wall: float, steps: int, k: int, steps_per_epoch: int = 0,
              bf16: "Bf16Advice | None" = None) -> dict:
    """Per-step seconds of each phase, the device's idle fraction and the verdict."""
    accounted = sum(totals.get(p, 0.0) for p in ("input_wait", "h2d_transfer", "dispatch", "device_compute",
                                                 "metric_transfer", "hooks", "evaluation"))
    phases = {
        "input_wait": totals["input_wait"],
        "h2d_transfer": totals["h2d_transfer"],
        # Whatever the timed phases leave of the wall time is host work of the loop itself.
        "dispatch_python": totals["dispatch"] + max(0.0, wall - accounted),
        "device_compute": totals["device_compute"],
        "metric_transfer": totals["metric_transfer"],
        "checkpoint_blocking": totals["hooks"],
        "evaluation": totals.get("evaluation", 0.0),
    }
    steps = max(steps, 1)
    idle = 1.0 - totals["device_compute"] / wall if wall > 0 else 0.0
    verdict, advice = judge(phases, k, steps_per_epoch, bf16)
    return {
        "steps": steps, "wall_s": wall, "steps_per_call": k,
        "ms_per_step": {name: 1e3 * s / steps for name, s in phases.items()},
        "fraction": {name: (s / wall if wall > 0 else 0.0) for name, s in phases.items()},
        "device_idle_fraction": max(0.0, min(1.0, idle)),
        "verdict": verdict, "advice": advice,
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


def judge(phases: dict[str, float], k: int, steps_per_epoch: int = 0,
          bf16: Bf16Advice | None = None) -> tuple[str, str]:
    """The largest share of the time, and the change that would help."""
    shares = {"input-bound": phases["input_wait"] + phases["h2d_transfer"],
              "dispatch-bound": phases["dispatch_python"], "compute-bound": phases["device_compute"],
              "checkpoint-bound": phases["checkpoint_blocking"], "eval-bound": phases.get("evaluation", 0.0)}
    verdict = max(shares, key=shares.get)  # ties: the order above
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
    if verdict == "eval-bound":
        return verdict, ("evaluating the validation split takes the time: evaluate less often "
                         "(train.eval_every_epochs), keep a smaller split (data.val_fraction), or raise "
                         "data.eval_batch_size")
    advice = bf16.text() if bf16 is not None else None
    return verdict, "the device is busy: " + (f"{advice}, a smaller model, or more/faster devices" if advice
                                             else "a smaller model, or more/faster devices")


def format_report(report: dict) -> list[str]:
    lines = [f"profile: {report['steps']} steps, {report['steps_per_call']} steps per call, "
             f"{report['wall_s'] * 1e3 / report['steps']:.3f} ms/step"
             + (f" ({report['window']})" if report.get("window") else "")]
    for key, label in ROWS:
        lines.append(f"  {label:<28} {report['ms_per_step'][key]:9.4f} ms/step  "
                     f"{100 * report['fraction'][key]:5.1f}%")
    bg = report.get("prefetch_background_ms_per_step")
    if bg:
        lines.append(f"  (prefetch thread, overlapped: prepare {bg['prepare']:.4f} ms/step, "
                     f"transfer {bg['transfer']:.4f} ms/step)")
    lines.append(f"  device idle: {100 * report['device_idle_fraction']:.1f}%")
    if report.get("mfu") is not None:
        lines.append(f"  MFU: {100 * report['mfu']:.1f}% ({report['tflops_per_sec']:.3g} TFLOP/s)")
    lines.append(f"verdict: {report['verdict']}: {report['advice']}")
    if report.get("trace_dir"):
        lines.append(f"trace: {report['trace_dir']} (tensorboard --logdir, or Perfetto)")
    return lines


def window_report(window: dict, k: int, steps_per_epoch: int, bf16: Bf16Advice | None = None) -> dict:
    """The breakdown of one timer window (PhaseTimer.window)."""
    report = breakdown(window["totals"], window["wall"], window["steps"], k, steps_per_epoch, bf16)
    if any(window["background"].values()):
        report["prefetch_background_ms_per_step"] = {
            k: 1e3 * v / max(window["steps"], 1) for k, v in window["background"].items()}
    return report


class ProfileHook(Hook):
    """Stops training after `max_steps`; at the end, reports the timer's windows: the calls
    after the trace, or the traced calls when nothing ran after them."""

    def __init__(self, workdir: Path | None, *, max_steps: int = 0):
        self.workdir = Path(workdir) if workdir is not None else None
        self.max_steps = max_steps
        self.bf16: Bf16Advice | None = None  # tests may set one with a fake measurement

    def after_call(self, info: StepInfo) -> Request | None:
        if self.max_steps and info.step >= self.max_steps:
            return Request(stop=f"profile window of {info.step} steps")
        return None

    def on_train_end(self, info: StepInfo) -> None:
        profile = info.profile
        window, traced = profile["window"], profile["traced"]
        bf16 = self.bf16 or Bf16Advice(profile["precision"], profile["platform"])
        if window["steps"] > 0 or traced is None:
            report = window_report(window, info.steps_per_call, info.steps_per_epoch, bf16)
            report["window"] = ("traced calls (profiler overhead included)"
                                if traced is None and profile["trace_dir"] else "calls after the trace")
        else:
            report = window_report(traced, info.steps_per_call, info.steps_per_epoch, bf16)
            report["window"] = "traced calls (profiler overhead included)"
        if report["window"].startswith("traced"):  # the tracer's own cost lands in dispatch
            report["advice"] += ("; but only traced calls were measured, and tracing inflates dispatch: "
                                 "profile more steps (--steps, train.profile_steps) for a sound verdict")
        report["trace_dir"] = profile["trace_dir"]
        report["compile_s"] = profile["compile_s"]
        report.update(profile["perf"].rates(report["wall_s"] * 1e3 / report["steps"]))
        for line in format_report(report):
            info.ctx.console.line(line)
        if self.workdir is not None:
            (self.workdir / "profile.json").write_text(json.dumps(report, indent=2) + "\n")


def trace_step_annotations(trace_dir: str | Path) -> list[int]:
    """The step numbers of the `train` StepTraceAnnotations in a written trace."""
    from jax.profiler import ProfileData
    steps = []
    for path in sorted(Path(trace_dir).rglob("*.xplane.pb")):
        data = ProfileData.from_file(str(path))
        for plane in data.planes:
            for line in plane.lines:
                for event in line.events:
                    if event.name == "train":
                        stats = dict(event.stats)
                        if "step_num" in stats:
                            steps.append(int(stats["step_num"]))
    return sorted(set(steps))
