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

    python bench/scaling.py --memory [--wide 1024 1024]

measures memory instead, on 8 devices with a wide MLP and Adam: the training state one
device holds (summary.json's `memory.state_bytes_per_device`) for each strategy, fresh and
after a save and a restore into the strategy's layout; and the host's peak RSS during an
fsdp save, as jaxtrain saves (each device's shards) beside gathering the state first (the
old way), each in a fresh process. Writes bench/results/scaling_memory.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
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
    p.add_argument("--memory", action="store_true", help="measure state bytes and save RSS instead")
    p.add_argument("--wide", type=int, nargs="+", default=[1024, 1024], help="hidden sizes (--memory)")
    p.add_argument("--save-peak", choices=("direct", "gather"), help=argparse.SUPPRESS)  # one child
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
        from jaxtrain.engine.plan import make_plan
        from jaxtrain.training.setup import setup
        from jaxtrain.training.context import RunContext
        from jaxtrain.model.models import MLP
        a = self.args
        cfg = load_config({"model": {"hidden_sizes": a.hidden}, "data": {"batch_size": a.batch},
                           "optimizer": {"name": "sgd", "learning_rate": 0.01},
                           "train": {"epochs": 1000, "steps_per_call": "epoch", "on_device_fraction": 1.0},
                           "parallel": {"strategy": self.strategy, "data_axis_size": self.devices}})
        model = MLP(a.features, tuple(a.hidden), 10, rngs=nnx.Rngs(0))
        ctx = RunContext(console=Console("none"), events=JsonlWriter(None))
        self.run = setup(cfg, model, self.dataset, ctx, plan=make_plan(cfg, self.dataset))
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


# ---------------------------------------------------------------- memory (--memory)


def wide_run(strategy: str, hidden: list[int], features: int = 784, batch: int = 256):
    """A run set up (state placed by the strategy) on 8 devices: wide MLP, Adam, random data."""
    import numpy as np
    from flax import nnx

    from jaxtrain import load_config
    from jaxtrain.data import Dataset, Split
    from jaxtrain.model.models import MLP
    from jaxtrain.engine.plan import make_plan
    from jaxtrain.training.setup import setup
    from jaxtrain.training.context import RunContext
    from jaxtrain.util.events import Console, JsonlWriter
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch * 2, features)).astype(np.float32)
    y = rng.integers(0, 10, len(x)).astype(np.int32)
    dataset = Dataset(task="classification", num_classes=10, feature_shape=(features,),
                      train=Split(x, y), val=None, test=Split(x[:batch], y[:batch]), name="synthetic")
    cfg = load_config({"model": {"hidden_sizes": hidden}, "data": {"batch_size": batch},
                       "optimizer": {"name": "adam", "learning_rate": 1e-3},
                       "train": {"epochs": 1, "steps_per_call": 1},
                       "parallel": {"strategy": strategy, "data_axis_size": 8}})
    ctx = RunContext(console=Console("none"), events=JsonlWriter(None))
    return setup(cfg, MLP(features, tuple(hidden), 10, rngs=nnx.Rngs(0)), dataset, ctx, plan=make_plan(cfg, dataset))


def to_host(tree):
    """NumPy copies of every leaf. A leaf split over several processes (fsdp) is gathered
    from all of them: a collective, so every process must call this together."""
    import jax
    import numpy as np

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            from jax.experimental import multihost_utils
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return jax.device_get(x)

    return jax.tree.map(one, tree)


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def save_peak(how: str, hidden: list[int]) -> dict:
    """Peak host RSS above the baseline while one fsdp state is saved (run in a fresh process)."""
    import tempfile
    import threading

    import jax

    from jaxtrain.ckpt.checkpoint import Checkpointer, state_tree
    from jaxtrain.engine.memory import state_bytes_per_device
    run = wide_run("fsdp", hidden)
    tree = state_tree(run.state)
    total = sum(leaf.nbytes for leaf in jax.tree.leaves(tree) if leaf.dtype != jax.numpy.uint32)
    jax.block_until_ready(tree)
    peak, done = [_rss_bytes()], threading.Event()
    base = peak[0]

    def sample():
        while not done.is_set():
            peak.append(_rss_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    with tempfile.TemporaryDirectory() as tmp:
        sampler.start()
        ckpt = Checkpointer(tmp)
        ckpt.save(1, to_host(tree) if how == "gather" else tree, {})
        ckpt.close()
        done.set()
        sampler.join()
    return {"how": how, "state_bytes": int(total), "state_bytes_per_device": state_bytes_per_device(tree),
            "rss_base": base, "rss_peak_increase": max(peak) - base}


def memory_report(args) -> dict:
    """State bytes per device, fresh and after a save + restore, for each strategy."""
    import subprocess
    import tempfile

    from jaxtrain.ckpt.checkpoint import Checkpointer, state_tree
    from jaxtrain.engine.memory import state_bytes_per_device
    rows = []
    for strategy in args.strategies:
        run = wide_run(strategy, args.wide)
        fresh = state_bytes_per_device(run.state)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = Checkpointer(tmp)
            ckpt.save(1, state_tree(run.state), {})
            ckpt.wait()
            target = wide_run(strategy, args.wide).state  # a fresh run's layout, as a resume has
            tree, _ = ckpt.restore(state_tree(target), 1)
            ckpt.close()
        rows.append({"strategy": strategy, "fresh": fresh, "resumed": state_bytes_per_device(tree)})
    saves = []
    for how in ("direct", "gather"):
        done = subprocess.run([sys.executable, __file__, "--save-peak", how, "--wide", *map(str, args.wide)],
                              capture_output=True, text=True, check=True)
        saves.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {"hidden": args.wide, "states": rows, "saves": saves}


def write_memory(out: Path, env: dict, result: dict) -> str:
    sharded = next((r for r in result["states"] if r["strategy"] == "sharded"), None)
    lines = ["| strategy | state bytes per device, fresh | after a restore | fsdp bound (1/8 of sharded + 5%) |",
             "| --- | ---: | ---: | --- |"]
    for r in result["states"]:
        bound = ""
        if r["strategy"] == "fsdp" and sharded:
            limit = sharded["fresh"] * (1 / 8) * 1.05
            ok = r["fresh"] <= limit and r["resumed"] <= limit
            bound = f"{r['fresh'] / sharded['fresh']:.4f} of sharded: {'met' if ok else 'NOT met'}"
        lines.append(f"| {r['strategy']} | {r['fresh']:,} | {r['resumed']:,} | {bound} |")
    lines += ["", "| fsdp save | state (all devices) | host peak RSS increase | ratio |", "| --- | ---: | ---: | ---: |"]
    for s in result["saves"]:
        lines.append(f"| {s['how']} | {s['state_bytes']:,} | {s['rss_peak_increase']:,} | "
                     f"{s['rss_peak_increase'] / s['state_bytes']:.2f} |")
    md = (f"MLP 784-{'-'.join(map(str, result['hidden']))}-10, Adam, 8 {env['device_kind']} devices "
          f"({env['platform']}).\n\n" + "\n".join(lines) + "\n")
    out.write_text(json.dumps({"environment": env, **result}, indent=2) + "\n")
    out.with_suffix(".md").write_text(md)
    return md


def main(argv=None) -> int:
    args = parse_args(argv)
    # Simulated devices must be configured before JAX starts; real accelerators are used as they are.
    os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8" if args.memory or args.save_peak else str(max(args.devices)))
    if args.save_peak:
        print(json.dumps(save_peak(args.save_peak, args.wide)))
        return 0
    import jax
    import numpy as np

    from _harness import measure
    from jaxtrain.data import Dataset, Split
    available = jax.device_count()
    dev = jax.devices()[0]
    env = {"platform": dev.platform, "device_kind": dev.device_kind, "devices_available": available,
           "cpu_count": os.cpu_count(), "python": platform.python_version(), "jax": jax.__version__}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.memory:
        print(write_memory(args.out.with_name("scaling_memory.json"), env, memory_report(args)))
        return 0
    args.devices = [n for n in args.devices if n <= available]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.rows, args.features)).astype(np.float32)
    y = rng.integers(0, 10, args.rows).astype(np.int32)
    dataset = Dataset(task="classification", num_classes=10, feature_shape=(args.features,),
                      train=Split(x, y), val=None, test=Split(x[:256], y[:256]), name="synthetic")
    cells = [Cell(s, n, args, dataset) for s in args.strategies for n in args.devices]
    results = measure(cells, repeats=args.repeats, warmup=1)
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
