"""Peak matmul TFLOP/s per device: a table for accelerators, a measurement for CPUs.

MFU (model FLOPs utilization) is achieved FLOP/s over this peak. Accelerator
figures are the vendors' dense numbers (without 2:4 sparsity) for the precision
JAX runs a training step's dots in: with `float32` inputs JAX's default matmul
precision uses TF32 tensor cores on NVIDIA GPUs since Ampere and one bf16 pass on
TPUs (docs.jax.dev, "Matmul precision"), so the fp32 peak is the TF32 figure on
GPUs and the bf16 figure on TPUs.

A CPU has no datasheet figure worth trusting (cores, clocks and vector units vary,
and the machine is often shared), so its peak is an n^3 matmul measured once per
machine and kept in `~/.cache/jaxtrain/peak_flops.json` (XDG_CACHE_HOME respected),
keyed by CPU model, core count, JAX version and precision. A peak measured while
other work loaded the machine is too low; when a run achieves more than the cached
figure, the matmul is measured again and the higher figure kept. Delete the file
to measure afresh.
"""

from __future__ import annotations

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


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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


def cpu_peak(precision: str, at_least: float = 0.0) -> tuple[float, str]:
    """The measured CPU matmul peak for the whole process (all cores), cached per machine;
    measured again (keeping the higher figure) when the cached one is below `at_least`."""
    key = f"{cpu_model()} | {os.cpu_count()} cpus | jax {jax.__version__} | {precision}"
    path = cache_file()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if cached.get(key, 0.0) <= at_least:
        cached[key] = max(cached.get(key, 0.0), measure_matmul_tflops(precision))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json(path, cached)
        except OSError:
            pass  # an unwritable cache only means measuring again next time
    return cached[key], f"measured: {CPU_MATMUL_N}^3 matmul, best of 10 (cached in {path})"


def peak_tflops(devices: list, precision: str, at_least: float = 0.0) -> tuple[float | None, str]:
    """Peak TFLOP/s of `devices` together and where the figure comes from (None: unknown).

    CPU devices share the host's cores, so the measured peak is the whole process's,
    however many CPU devices JAX simulates."""
    first = devices[0]
    if first.platform == "cpu":
        return cpu_peak(precision, at_least)
    found = table_peak(first.device_kind, precision)
    if found is None:
        return None, f"no peak listed for '{first.device_kind}'"
    per_chip, source = found
    return per_chip * len(devices), source
