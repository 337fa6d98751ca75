"""Gradient accumulation: the compiled step's memory and speed against the number of microbatches.

    python bench/grad_accum.py [--batch 8192] [--hidden 1024,1024] [--microbatches 1,2,4,8]
                               [--steps 1] [--repeats 5]

One device, the MLP 784-hidden-10 with Adam and random MNIST-shaped data. For each N in
`--microbatches`, jaxtrain's train step with `grad_accum_steps=N` is compiled once (state
donated, as the engine does); the table gives XLA's own memory analysis of the compiled
step (`temp_size_in_bytes`: the buffers the step needs besides its arguments and outputs,
activations among them) and examples/s (median of interleaved repeats of `--steps` steps,
after a warm-up, each ended by `block_until_ready`), both relative to N=1.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(BENCH_DIR.parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from _harness import measure  # noqa: E402
from jaxtrain.engine.step import init_state, make_train_step, split_model  # noqa: E402
from jaxtrain.model.models import MLP  # noqa: E402


class AccumStep:
    """One peer: `steps` calls of the step compiled with `microbatches` microbatches."""

    def __init__(self, microbatches: int, batch: int, hidden: tuple[int, ...], steps: int):
        self.n, self.batch, self.hidden, self.steps = microbatches, batch, hidden, steps
        self.name = f"N={microbatches}"
        self.label = f"grad_accum_steps={microbatches}"
        self.items_per_run = batch * steps

    def setup(self) -> None:
        rng = np.random.default_rng(0)
        graphdef, _, params, rest = split_model(MLP(784, self.hidden, 10, rngs=nnx.Rngs(0)))
        tx = optax.adam(1e-3)
        step = make_train_step(graphdef, tx, "classification", grad_accum_steps=self.n)
        self.batch_data = jax.device_put((rng.normal(size=(self.batch, 784)).astype(np.float32),
                                          rng.integers(0, 10, self.batch).astype(np.int32),
                                          np.ones(self.batch, np.float32)))
        self.state = jax.device_put(init_state(params, rest, tx))
        self.fn = jax.jit(step, donate_argnums=0).lower(self.state, self.batch_data).compile()
        self.temp_bytes = self.fn.memory_analysis().temp_size_in_bytes

    def run_epoch(self) -> None:
        for _ in range(self.steps):
            self.state, _ = self.fn(self.state, self.batch_data)

    def sync(self) -> None:
        jax.block_until_ready(self.state)


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines()
                 if line.startswith("Model name")), platform.processor())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8192)
    ap.add_argument("--hidden", default="1024,1024")
    ap.add_argument("--microbatches", default="1,2,4,8")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    hidden = tuple(int(h) for h in args.hidden.split(","))
    peers = [AccumStep(int(n), args.batch, hidden, args.steps) for n in args.microbatches.split(",")]
    results = measure(peers, repeats=args.repeats, warmup=1)
    base = {"temp": peers[0].temp_bytes, "rate": results[0].median}
    print(f"CPU: {cpu_model()}; jax {jax.__version__}, {jax.devices()[0].device_kind}; "
          f"MLP 784-{'-'.join(map(str, hidden))}-10, Adam, batch {args.batch}, one device")
    print("| N | compiled step temp memory | examples/s (median) |")
    print("| --- | --- | --- |")
    for peer, r in zip(peers, results):
        print(f"| {peer.n} | {peer.temp_bytes / 2**20:.1f} MiB ({peer.temp_bytes / base['temp']:.2f}x) "
              f"| {r.median:,.0f} ({r.median / base['rate']:.2f}x) |")


if __name__ == "__main__":
    main()
