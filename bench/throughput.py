"""jaxtrain's training throughput over a grid: model width, batch size, precision, execution mode.

    python bench/throughput.py [--widths 1,4] [--batches 100,1000] [--precisions float32,bfloat16]
                               [--modes device,device_k1,stream] [--train-size N] [--repeats 5]
                               [--out bench/results/throughput.json]

Model: the MNIST MLP 784-(256, 128, 64)*width-10, ReLU, SGD; synthetic MNIST-shaped data
(the rate does not depend on the values). Modes:

- `device`:    training set on the device, one compiled call per epoch (K = epoch);
- `device_k1`: training set on the device, one step per call (K = 1): the cost of dispatch;
- `stream`:    host batches streamed through the background prefetch thread, K = auto.

Per cell: examples/s (median of `--repeats` >= 5 timed epochs after a warm-up epoch, each
ended by `block_until_ready` on the state; cells are interleaved round-robin by
`bench/_harness.py`), ms per step, compiles (every chunk length the cell used),
FLOPs per step from the compiled single step's `cost_analysis()`, and MFU: achieved
FLOP/s over the peak FLOP/s of a large matmul in the same precision on the same
device (bf16: bf16 inputs with fp32 accumulation, as the bf16 step computes).

Outputs: JSON (`--out`) and Markdown next to it; the table also goes to stdout.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(BENCH_DIR.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from _harness import EngineEpochs, measure  # noqa: E402

BASE_HIDDEN = (256, 128, 64)
MODES = {"device": (1.0, "epoch"), "device_k1": (1.0, 1), "stream": (0.0, "auto")}


def matmul_peak(precision: str, n: int = 2048, repeats: int = 5) -> float:
    """Peak FLOP/s of an n x n x n matmul in `precision` (best of repeats)."""
    from jaxtrain.parallel.device_peak import measure_matmul_tflops
    return measure_matmul_tflops(precision, n, repeats) * 1e12


def synthetic(n: int, seed: int = 0):
    from jaxtrain.data import Dataset, Split
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n).astype(np.int32)
    x = rng.normal(size=(n, 784)).astype(np.float32)
    test = Split(x[:1000], y[:1000])
    return Dataset(task="classification", num_classes=10, feature_shape=(784,), train=Split(x, y),
                   val=None, test=test, name="synthetic_mnist")


class Cell(EngineEpochs):
    """One grid point as a harness peer: run_epoch() trains one epoch through the engine."""

    def __init__(self, width: int, batch: int, precision: str, mode: str, dataset):
        self.width, self.batch, self.precision, self.mode = width, batch, precision, mode
        self.dataset = dataset
        self.name = f"w{width}-b{batch}-{precision}-{mode}"
        self.label = self.name
        self.items_per_run = len(dataset.train)
        self.epoch = 0

    def setup(self) -> None:
        from flax import nnx

        from jaxtrain import load_config
        from jaxtrain.util.events import Console, JsonlWriter
        from jaxtrain.engine.plan import make_plan
        from jaxtrain.training.setup import COMPUTE_DTYPES, setup
        from jaxtrain.training.context import RunContext
        from jaxtrain.model.kernels import Kernels
        from jaxtrain.model.models import MLP
        fraction, k = MODES[self.mode]
        hidden = [h * self.width for h in BASE_HIDDEN]
        cfg = load_config({"model": {"hidden_sizes": hidden}, "data": {"batch_size": self.batch},
                           "optimizer": {"name": "sgd", "learning_rate": 0.01},
                           "train": {"epochs": 1000, "precision": self.precision, "steps_per_call": k,
                                     "on_device_fraction": fraction},
                           "parallel": {"data_axis_size": 1}, "logging": {"progress": "none"}})
        model = MLP(784, tuple(hidden), 10, rngs=nnx.Rngs(0), compute_dtype=COMPUTE_DTYPES[self.precision],
                    kernels=Kernels.for_platform(jax.devices()[0].platform))
        self._events = JsonlWriter(Path(os.devnull))
        self.run = setup(cfg, model, self.dataset, RunContext(console=Console("none"), events=self._events),
                         plan=make_plan(cfg, self.dataset))
        self.run.engine.prepare(self.run.state)
        self.flops_per_step = self._flops_per_step(cfg, model)

    def _flops_per_step(self, cfg, model) -> float | None:
        """FLOPs of one train step, from XLA's cost analysis of the step compiled alone
        (a scan's cost analysis counts its body once, not once per step)."""
        from jaxtrain.model.optim import build_optimizer
        from jaxtrain.engine.step import init_state, make_train_step, split_model
        train_def, _, params, rest = split_model(model)
        tx = build_optimizer(cfg.optimizer, 1, 1, params)
        step = make_train_step(train_def, tx, "classification")
        b = self.batch
        batch = (jnp.zeros((b, 784)), jnp.zeros((b,), jnp.int32), jnp.ones((b,)))
        cost = jax.jit(step).lower(init_state(params, rest, tx), batch).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        return float(cost.get("flops", 0.0)) or None



def markdown(env: dict, rows: list[dict]) -> str:
    lines = [f"jaxtrain throughput, {env['device']} x{env['device_count']}, {env['date']}; "
             f"peak matmul: fp32 {env['peak_flops']['float32'] / 1e9:.0f} GFLOP/s, "
             f"bf16 {env['peak_flops']['bfloat16'] / 1e9:.0f} GFLOP/s; "
             f"median of {env['repeats']} epochs of {env['train_size']} examples", "",
             "| width | batch | precision | mode | K | examples/s | ms/step | compiles | MFLOP/step | MFU |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        def f(v, spec):
            return "-" if v is None else format(v, spec)
        lines.append(f"| {r['width']} | {r['batch']} | {r['precision']} | {r['mode']} | {f(r['k'], 'd')} | "
                     f"{f(r['examples_per_sec'], ',.0f')} | {f(r['ms_per_step'], '.3f')} | "
                     f"{f(r['compiles'], 'd')} | {f(r['flops_per_step'] and r['flops_per_step'] / 1e6, '.1f')} | "
                     f"{f(r['mfu'] and 100 * r['mfu'], '.1f')}{'%' if r['mfu'] else ''} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda s: [int(v) for v in s.split(",")]  # noqa: E731
    p.add_argument("--widths", type=ints, default=[1, 4], help="hidden-size multipliers of 256-128-64")
    p.add_argument("--batches", type=ints, default=[100, 1000])
    p.add_argument("--precisions", default="float32,bfloat16")
    p.add_argument("--modes", default="device,device_k1,stream", help=f"of {', '.join(MODES)}")
    p.add_argument("--train-size", type=int, default=60000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "throughput.json")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    precisions, modes = args.precisions.split(","), args.modes.split(",")
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise SystemExit(f"unknown mode {bad[0]}; use {', '.join(MODES)}")
    dataset = synthetic(args.train_size)
    peak = {p: matmul_peak(p) for p in ("float32", "bfloat16")}
    cells = [Cell(w, b, p, m, dataset) for w in args.widths for b in args.batches
             for p in precisions for m in modes]
    results = measure(cells, repeats=args.repeats, warmup=args.warmup)
    rows = []
    for cell, res in zip(cells, results):
        ok = res.status == "ok"
        eps = res.median if ok else None
        engine = cell.run.engine if hasattr(cell, "run") else None
        steps_per_sec = eps / cell.batch if eps else None
        flops = getattr(cell, "flops_per_step", None)
        rows.append({"cell": cell.name, "width": cell.width, "batch": cell.batch, "precision": cell.precision,
                     "mode": cell.mode, "k": engine.k if engine else None,
                     "examples_per_sec": eps, "ms_per_step": 1e3 / steps_per_sec if steps_per_sec else None,
                     "compiles": engine.compiles if engine else None, "flops_per_step": flops,
                     "mfu": flops * steps_per_sec / peak[cell.precision] if flops and steps_per_sec else None,
                     "status": res.status, "reason": res.reason, "samples": res.samples})
    env = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
           "device": jax.devices()[0].device_kind, "device_count": jax.device_count(),
           "platform": platform.platform(), "cpus": os.cpu_count(), "jax": jax.__version__,
           "peak_flops": peak, "repeats": args.repeats, "train_size": args.train_size,
           "loadavg": list(os.getloadavg()), "command": " ".join(sys.argv)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": env, "cells": rows}, indent=2) + "\n")
    md = markdown(env, rows)
    args.out.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
