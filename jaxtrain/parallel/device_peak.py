"""Peak matmul TFLOP/s per device: a table for accelerators, a measurement for CPUs.

MFU (model FLOPs utilization) is achieved FLOP/s over this peak. Accelerator
figures are the vendors' dense numbers (without 2:4 sparsity) for the precision
JAX runs a training step's dots in: with `float32` inputs JAX's default matmul
precision uses TF32 tensor cores on NVIDIA GPUs since Ampere and one bf16 pass on
TPUs (docs.jax.dev, "Matmul precision"), so the fp32 peak is the TF32 figure on
GPUs and the bf16 figure on TPUs.

A CPU has no datasheet figure worth trusting (clocks, vector units and other load
vary), so its peak is an n^3 matmul, best of several rounds, measured once per
machine and kept in `~/.cache/jaxtrain/peak_flops.json` (XDG_CACHE_HOME respected)
with the time it was measured. The key holds what decides the figure: CPU model,
the vector instruction sets (AVX2, AVX-512, AVX-512 BF16, AMX), the cores this
process may use, the JAX version and the precision. A peak measured while other
work loaded the machine is too low: when a run achieves more than the cached
figure, the matmul is measured again and replaces it, and MFU is capped at 100%
(the run's own rate is then the best known peak). Beside it, where /proc and /sys
tell the clock, a nominal peak: cores x clock x FLOPs per cycle of the widest
vector unit (an upper bound the measured figure stays under). Delete the file to
measure afresh.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxtrain.util.files import user_cache_dir, write_json

# (device_kind pattern, bf16 TFLOP/s, fp32 TFLOP/s, source), per chip, dense.
# Patterns are matched case-insensitively against `jax.Device.device_kind`, first match wins.
PEAK_TABLE: list[tuple[str, float, float, str]] = [
    ("h100 pcie", 756.0, 378.0, "NVIDIA H100 datasheet (PCIe): BF16 1,513 / TF32 756 TFLOPS with sparsity, "
                                "halved for dense"),
    ("h100", 989.4, 494.7, "NVIDIA H100 datasheet (SXM): BF16 1,979 / TF32 989 TFLOPS with sparsity, "
                           "halved for dense"),
    ("h200 nvl", 835.5, 417.5, "NVIDIA H200 datasheet (NVL): BF16 1,671 / TF32 835 TFLOPS with sparsity, "
                               "halved for dense"),
    ("h200", 989.4, 494.7, "NVIDIA H200 datasheet (SXM): BF16 1,979 / TF32 989 TFLOPS with sparsity, "
                           "halved for dense"),
    ("a100", 312.0, 156.0, "NVIDIA A100 datasheet: BF16 312 / TF32 156 TFLOPS dense (624 / 312 with sparsity)"),
    ("l4", 121.0, 60.0, "NVIDIA L4 datasheet: BF16 242 / TF32 120 TFLOPS with sparsity, halved for dense"),
    ("tpu v4", 275.0, 275.0, "cloud.google.com/tpu/docs/v4: 275 TFLOPS bf16 per chip"),
    ("tpu v5 lite", 197.0, 197.0, "cloud.google.com/tpu/docs/v5e: 197 TFLOPS bf16 per chip"),
    ("tpu v5e", 197.0, 197.0, "cloud.google.com/tpu/docs/v5e: 197 TFLOPS bf16 per chip"),
    ("tpu v5p", 459.0, 459.0, "cloud.google.com/tpu/docs/v5p: 459 TFLOPS bf16 per chip"),
    ("tpu v5", 459.0, 459.0, "cloud.google.com/tpu/docs/v5p: 459 TFLOPS bf16 per chip"),
    ("tpu v6 lite", 918.0, 918.0, "cloud.google.com/tpu/docs/v6e: 918 TFLOPS bf16 per chip"),
    ("tpu v6e", 918.0, 918.0, "cloud.google.com/tpu/docs/v6e: 918 TFLOPS bf16 per chip"),
]

CPU_MATMUL_N = 1024


def table_peak(device_kind: str, precision: str) -> tuple[float, str] | None:
    """(TFLOP/s per chip, source) from the table, or None for a device it does not list."""
    kind = device_kind.lower()
    for pattern, bf16, fp32, source in PEAK_TABLE:
        if pattern in kind:
            return (bf16 if precision == "bfloat16" else fp32), source
    return None


def cache_file() -> Path:
    return user_cache_dir() / "peak_flops.json"


@dataclasses.dataclass(frozen=True)
class Peak:
    """Peak TFLOP/s of a run's devices together, where the figure comes from, and (CPU) when it was
    measured and the nominal figure beside it."""
    tflops: float | None
    source: str
    measured_at: str | None = None
    nominal_tflops: float | None = None
    nominal_source: str | None = None

    def as_dict(self) -> dict:
        return {"peak_tflops": self.tflops, "peak_source": self.source, "peak_measured_at": self.measured_at,
                "nominal_peak_tflops": self.nominal_tflops, "nominal_peak_source": self.nominal_source}


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


# The vector instruction sets that decide a CPU's matmul peak, by their /proc/cpuinfo flag.
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")


def cpu_features(flags: str | None = None) -> tuple[str, ...]:
    """The ISA_FLAGS this CPU has (from /proc/cpuinfo's flags, or `flags` given)."""
    present = set((flags if flags is not None else _cpuinfo().get("flags", "")).split())
    return tuple(f for f in ISA_FLAGS if f in present)


def usable_cores() -> int:
    """The cores this process may run on (its affinity), which is what a matmul can use."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_key(precision: str) -> str:
    features = "+".join(cpu_features()) or "no avx2"
    return f"{cpu_model()} | {features} | {usable_cores()} cores | jax {jax.__version__} | {precision}"


def flops_per_cycle(features: tuple[str, ...], precision: str) -> tuple[int, str] | None:
    """Peak FLOPs per cycle per core of the widest unit for `precision`: two FMA pipes of its
    width (2 FLOPs each), as the vendors' peak figures count; None without AVX2."""
    if precision == "bfloat16" and "amx_tile" in features:
        return 1024, "AMX: 1024 bf16 FLOPs"
    if precision == "bfloat16" and "avx512_bf16" in features:
        return 128, "AVX-512 BF16: 2 x 32-wide bf16 dot"
    if "avx512f" in features:
        return 64, "AVX-512: 2 x 16-wide fp32 FMA"
    if "avx2" in features:
        return 32, "AVX2: 2 x 8-wide fp32 FMA"
    return None


def cpu_clock_ghz() -> float | None:
    """The highest clock the kernel reports (cpufreq's maximum, else cpuinfo's current MHz)."""
    try:
        return int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1e6
    except (OSError, ValueError):
        mhz = _cpuinfo().get("cpu MHz")
        try:
            return float(mhz) / 1e3 if mhz else None
        except ValueError:
            return None


def nominal_cpu_peak(precision: str) -> tuple[float, str] | None:
    """(TFLOP/s, how) from cores x clock x FLOPs per cycle, where all three can be read."""
    per_cycle, ghz, cores = flops_per_cycle(cpu_features(), precision), cpu_clock_ghz(), usable_cores()
    if per_cycle is None or not ghz:
        return None
    flops, unit = per_cycle
    return cores * ghz * flops / 1e3, f"nominal: {cores} cores x {ghz:.2f} GHz x {flops} FLOPs/cycle ({unit})"


def measure_matmul_tflops(precision: str, n: int = CPU_MATMUL_N, repeats: int = 10) -> float:
    """Best-of-`repeats` TFLOP/s of one n x n x n matmul on the default device, as the step's
    dots run: bf16 inputs with an fp32 result for bfloat16, plain fp32 otherwise."""
    dtype = jnp.bfloat16 if precision == "bfloat16" else jnp.float32
    a = jnp.ones((n, n), dtype)
    matmul = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32)).lower(a, a).compile()
    matmul(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        matmul(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e12


CPU_ROUNDS = 3  # rounds of CPU_REPEATS matmuls, a pause between them: the best is the peak
CPU_REPEATS = 10


def measure_cpu_peak(precision: str) -> float:
    """The best of CPU_ROUNDS rounds (a burst of other work on a shared machine spoils one round)."""
    best = 0.0
    for round_ in range(CPU_ROUNDS):
        if round_:
            time.sleep(0.05)
        best = max(best, measure_matmul_tflops(precision, CPU_MATMUL_N, CPU_REPEATS))
    return best


def _read_cache(path: Path) -> dict:
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in cached.items() if isinstance(v, dict) and v.get("tflops")}


def _write_cache(path: Path, cached: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, cached)
    except OSError:
        pass  # an unwritable cache only means measuring again next time


def cpu_peak(precision: str, at_least: float = 0.0) -> Peak:
    """The measured CPU matmul peak for the whole process (all its cores), cached per machine;
    measured again, replacing the cached figure, when that is not above `at_least` (TFLOP/s a
    run achieved). Never below `at_least`: a run cannot beat its devices' peak."""
    key, path = cpu_key(precision), cache_file()
    cached = _read_cache(path)
    entry = cached.get(key)
    how = f"measured: {CPU_MATMUL_N}^3 matmul, best of {CPU_ROUNDS} x {CPU_REPEATS}, cached in {path}"
    if entry is None or entry["tflops"] <= at_least:
        why = "" if entry is None else f"; measured again: a run achieved {at_least:.3g} > {entry['tflops']:.3g}"
        entry = {"tflops": measure_cpu_peak(precision),
                 "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "note": how + why}
        cached[key] = entry
        _write_cache(path, cached)
    nominal = nominal_cpu_peak(precision)
    tflops, source = entry["tflops"], entry.get("note", how)
    if tflops < at_least:
        tflops, source = at_least, f"this run's own rate ({at_least:.3g} TFLOP/s beat the measured {source})"
    return Peak(tflops, source, entry.get("measured_at"), *(nominal or (None, None)))


def peak_tflops(devices: list, precision: str, at_least: float = 0.0) -> Peak:
    """Peak TFLOP/s of `devices` together and where the figure comes from (None: unknown).

    CPU devices share the host's cores, so the measured peak is the whole process's,
    however many CPU devices JAX simulates."""
    first = devices[0]
    if first.platform == "cpu":
        return cpu_peak(precision, at_least)
    found = table_peak(first.device_kind, precision)
    if found is None:
        return Peak(None, f"no peak listed for '{first.device_kind}'")
    per_chip, source = found
    return Peak(per_chip * len(devices), source)
