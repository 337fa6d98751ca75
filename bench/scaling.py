"""Throughput against device count for each data-parallel strategy (sharded, pmap, fsdp).

Strong scaling: the global batch stays fixed and is split over 1, 2, 4, 8 devices
(the per-device batch shrinks). On a machine without accelerators the devices are
simulated CPU devices (`JAX_NUM_CPU_DEVICES`, set here before JAX starts) that
share the same cores: the figures then show the *overhead* of splitting the step
(partitioning, collectives, smaller matmuls), never a speed-up. On GPUs/TPUs the
same script measures real scaling.

Each cell trains whole epochs with the real engine (training set on the device,
K steps per compiled call); compilation is excluded (one warm-up epoch per cell),
repeats are interleaved round-robin over all cells and the median is reported
(bench/_harness.py).

    python bench/scaling.py [--devices 1 2 4 8] [--rows 8192] [--batch 256] [--repeats 3]
                            [--out bench/results/scaling.json]

Writes JSON, Markdown (the table) and PNG (examples/s against devices) side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
STRATEGIES = ("sharded", "pmap", "fsdp")
NOTE = ("Simulated CPU devices share the same cores: these figures show the overhead of "
        "splitting a step over devices, not a speed-up.")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    p.add_argument("--rows", type=int, default=8192, help="training examples (MNIST-shaped, synthetic)")
    p.add_argument("--features", type=int, default=784)
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 128])
    p.add_argument("--batch", type=int, default=256, help="global batch, split over the devices")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "scaling.json")
    return p.parse_args(argv)


class Cell:
    """One (strategy, device count) point: a harness peer that trains one epoch per run."""

    def __init__(self, strategy: str, devices: int, args, dataset):
        self.strategy, self.devices, self.args, self.dataset = strategy, devices, args, dataset
        self.name = f"{strategy}-{devices}"
        self.label = f"{strategy} on {devices} device(s)"
        self.items_per_run = len(dataset.train)

    def setup(self) -> None:
        from flax import nnx

        from jaxtrain import load_config
        from jaxtrain.util.events import Console, JsonlWriter
        from jaxtrain.training.loop import RunContext, setup
        from jaxtrain.model.models import MLP
        a = self.args
        cfg = load_config({"model": {"hidden_sizes": a.hidden}, "data": {"batch_size": a.batch},
                           "optimizer": {"name": "sgd", "learning_rate": 0.01},
                           "train": {"epochs": 1000, "steps_per_call": "epoch", "on_device_fraction": 1.0},
                           "parallel": {"strategy": self.strategy, "data_axis_size": self.devices}})
        model = MLP(a.features, tuple(a.hidden), 10, rngs=nnx.Rngs(0))
        ctx = RunContext(console=Console("none"), events=JsonlWriter(None))
        self.run = setup(cfg, model, self.dataset, ctx)
        self.epoch = 0  # the harness's warm-up epoch compiles; timed epochs exclude it

    def run_epoch(self) -> None:
        for self.run.state, self._sums, _ in self.run.engine.run_epoch(self.run.state, self.epoch):
            pass
        self.epoch += 1

    def sync(self) -> None:
        import jax
        jax.block_until_ready((self.run.state, self._sums))


def write_outputs(args, env: dict, rows: list[dict]) -> str:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": env, "note": NOTE if env["platform"] == "cpu" else None,
                                    "cells": rows}, indent=2) + "\n")
    by = {(r["strategy"], r["devices"]): r for r in rows}
    head = "| strategy | " + " | ".join(f"{n} device{'s' * (n > 1)}" for n in args.devices) + " |"
    lines = [head, "|" + " --- |" * (len(args.devices) + 1)]
    for s in args.strategies:
        cells = []
        for n in args.devices:
            r = by.get((s, n))
            if r is None or r["examples_per_sec"] is None:
                cells.append("n/a")
                continue
            base = by.get((s, args.devices[0]), {}).get("examples_per_sec")
            rel = f" ({r['examples_per_sec'] / base:.2f}x)" if base else ""
            cells.append(f"{r['examples_per_sec']:,.0f}{rel}")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    md = (f"Examples/s (median of {args.repeats} interleaved epochs; in brackets: relative to "
          f"{args.devices[0]} device), MLP {args.features}-{'-'.join(map(str, args.hidden))}-10, "
          f"{args.rows} rows, global batch {args.batch}, {env['device_kind']} ({env['platform']}).\n\n"
          + "\n".join(lines) + "\n")
    if env["platform"] == "cpu":
        md += f"\n{NOTE}\n"
    args.out.with_suffix(".md").write_text(md)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 4))
        for s in args.strategies:
            pts = [(n, by[(s, n)]["examples_per_sec"]) for n in args.devices
                   if (s, n) in by and by[(s, n)]["examples_per_sec"]]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=s)
        ax.set_xscale("log", base=2)
        ax.set_xticks(args.devices, [str(n) for n in args.devices])
        ax.set_xlabel("devices")
        ax.set_ylabel("examples / s")
        title = f"Throughput vs devices ({env['device_kind']})"
        ax.set_title(title + ("\nsimulated CPU devices: overhead, not speed-up" if env["platform"] == "cpu" else ""),
                     fontsize=10)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.out.with_suffix(".png"), dpi=120)
        plt.close(fig)
    except ImportError:
        pass
    return md


def main(argv=None) -> int:
    args = parse_args(argv)
    # Simulated devices must be configured before JAX starts; real accelerators are used as they are.
    os.environ.setdefault("JAX_NUM_CPU_DEVICES", str(max(args.devices)))
    import jax
    import numpy as np

    from _harness import measure
    from jaxtrain.data import Dataset, Split
    available = jax.device_count()
    args.devices = [n for n in args.devices if n <= available]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.rows, args.features)).astype(np.float32)
    y = rng.integers(0, 10, args.rows).astype(np.int32)
    dataset = Dataset(task="classification", num_classes=10, feature_shape=(args.features,),
                      train=Split(x, y), val=None, test=Split(x[:256], y[:256]), name="synthetic")
    cells = [Cell(s, n, args, dataset) for s in args.strategies for n in args.devices]
    results = measure(cells, repeats=args.repeats, warmup=1)
    dev = jax.devices()[0]
    env = {"platform": dev.platform, "device_kind": dev.device_kind, "devices_available": available,
           "cpu_count": os.cpu_count(), "python": platform.python_version(), "jax": jax.__version__}
    rows = []
    for cell, res in zip(cells, results):
        d = res.as_dict()
        rows.append({"strategy": cell.strategy, "devices": cell.devices,
                     "examples_per_sec": d.get("median"), "samples": d.get("samples"),
                     "status": d["status"], "reason": d["reason"] or None})
    md = write_outputs(args, env, rows)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
