"""Benchmark: the host-fed input pipeline, every backend side by side, and a resume's seek.

One epoch of (x, y, mask) batches is read through each backend, with nothing trained, from
MNIST-sized rows (float32, 60000 x 784, batch 128): held in memory, and in a memory-mapped
row file like the streaming cache. Repeats are interleaved (bench/_harness.py), medians in
rows/s. Each run reads the next epoch, so grain's worker processes start once, as in a run.
Then a resumed epoch's remaining batches (from three quarters in), read by seeking to
their batch (what jaxtrain does) and by replaying from batch 0 (what it did before).
Prints a table and writes JSON.

    python bench/input_pipeline.py [--rows 60000] [--batch 128] [--repeats 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
from _harness import measure  # noqa: E402

from jaxtrain.config.data import DataConfig  # noqa: E402
from jaxtrain.data import pipeline_grain, pipeline_tf, rowcache  # noqa: E402
from jaxtrain.data.dataset import Dataset, Split  # noqa: E402
from jaxtrain.data.streaming import CacheGather  # noqa: E402


def dataset(x: np.ndarray, y: np.ndarray) -> Dataset:
    return Dataset(task="classification", num_classes=10, feature_shape=x.shape[1:], train=Split(x, y),
                   val=None, test=Split(x[:10], y[:10]), name="rows")


@dataclasses.dataclass
class Epoch:
    """Read one epoch of `make()`'s dataset. Each run reads the next epoch, so grain's run-long
    pipeline (and its worker processes) carries on as in training. A resume (`start` > 0)
    starts a new pipeline at batch `start` (a seek); with `replay`, at batch 0, dropping the
    first `start` batches (what a resume did before)."""
    name: str
    label: str
    make: Callable[[], Dataset]
    batch: int
    start: int = 0
    replay: bool = False
    items_per_run: int = 0

    def setup(self) -> None:
        self.ds, self.epoch = self.make(), 0
        self.items_per_run = self.ds.num_train - self.batch * self.start

    def run_epoch(self) -> None:
        self.epoch += 1
        if self.start and hasattr(self.ds.batcher, "close"):
            self.ds.batcher.close()             # a resumed run's pipeline is a new one
        first = 0 if self.replay else self.start
        for _ in self.ds.train_batches(self.batch, 0, self.epoch, first):
            pass

    def sync(self) -> None:
        pass


def peers(x: np.ndarray, y: np.ndarray, rows_path: str, batch: int, workers: int, seek_at: int) -> list[Epoch]:
    n, width = x.shape
    cached = CacheGather(rowcache.MappedRows(rows_path, n, width), np.arange(n, dtype=np.int32), y)
    grain_cfg = DataConfig(backend="grain")
    worker_cfg = DataConfig(backend="grain", workers=workers)
    tf_cfg = DataConfig(backend="tfdata")
    cases = [
        ("numpy", "NumPy, in memory", lambda: dataset(x, y)),
        ("tfdata", "tf.data, in memory", lambda: pipeline_tf.attach_rows(dataset(x, y), tf_cfg,
                                                                          lambda i: (x[i], y[i]), (x.dtype, y.dtype))),
        ("grain", "grain threads, in memory", lambda: pipeline_grain.attach(dataset(x, y), grain_cfg)),
        ("grain_w", f"grain {workers} workers, in memory", lambda: pipeline_grain.attach(dataset(x, y), worker_cfg)),
        ("tfdata_mmap", "tf.data, row file", lambda: pipeline_tf.attach_rows(dataset(x, y), tf_cfg, cached,
                                                                               (x.dtype, y.dtype))),
        ("grain_mmap", "grain threads, row file", lambda: pipeline_grain.attach(dataset(x, y), grain_cfg, cached)),
        ("grain_w_mmap", f"grain {workers} workers, row file",
         lambda: pipeline_grain.attach(dataset(x, y), worker_cfg, cached)),
    ]
    out = [Epoch(name, label, make, batch) for name, label, make in cases]
    for name, label, make in (cases[0], cases[5]):
        out.append(Epoch(f"{name}_seek", f"{label}: resume, seek", make, batch, start=seek_at))
        out.append(Epoch(f"{name}_replay", f"{label}: resume, replay", make, batch, start=seek_at, replay=True))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=60000)
    ap.add_argument("--width", type=int, default=784)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "input_pipeline.json")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.rows, args.width)).astype(np.float32)
    y = rng.integers(0, 10, args.rows).astype(np.int32)
    steps = -(-args.rows // args.batch)
    seek_at = steps * 3 // 4          # a resume three quarters into the epoch
    with tempfile.TemporaryDirectory() as tmp:
        rows_path = os.path.join(tmp, "rows.f32")
        x.tofile(rows_path)
        ps = peers(x, y, rows_path, args.batch, args.workers, seek_at)
        results = measure(ps, repeats=args.repeats, warmup=1)
    table = [{"case": p.name, "label": p.label, "rows_per_s": r.median, "median_s": _median(r.seconds),
              "status": r.status, "reason": r.reason, "seconds": r.seconds} for p, r in zip(ps, results)]
    base = {row["case"]: row for row in table}
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    env = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "platform": platform.platform(),
           "cpu": next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")), ""),
           "cpus": os.cpu_count(), "loadavg": list(os.getloadavg()), "command": " ".join(sys.argv),
           "rows": args.rows, "width": args.width, "batch": args.batch, "seek_at": seek_at, "steps": steps}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": env, "cases": table}, indent=2) + "\n")
    print(f"\n{env['cpu']}, {env['cpus']} CPUs, load {env['loadavg'][0]:.1f}; {args.rows} x {args.width} "
          f"float32, batch {args.batch}; median of {args.repeats}, interleaved\n")
    print("| case | epoch s | rows/s | vs NumPy in memory |\n| --- | --- | --- | --- |")
    ref = base["numpy"]["median_s"]
    for row in table[:7]:
        s = row["median_s"]
        print(f"| {row['label']} | {s:.3f} | {row['rows_per_s']:,.0f} | {s / ref:.2f}x |" if s else
              f"| {row['label']} | {row['status']} | | |")
    print(f"\n| resume at batch {seek_at} of {steps} | seek s | replay s | replay / seek |\n| --- | --- | --- | --- |")
    for name, label in (("numpy", "NumPy, in memory"), ("grain_mmap", "grain threads, row file")):
        seek, replay = base[f"{name}_seek"]["median_s"], base[f"{name}_replay"]["median_s"]
        print(f"| {label} | {seek:.3f} | {replay:.3f} | {replay / seek:.1f}x |")
    return 0


def _median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


if __name__ == "__main__":
    raise SystemExit(main())
