"""Vectorized sweep vs the same points run one after another.

Both sides train the same P learning rates of one config and write the same outputs
(a full run directory per point, results.csv/.md/.png); the vectorized side trains
all P in one compiled program (`jaxtrain sweep --vectorized`). Wall time includes
everything a user waits for (data, compilation, training, evaluation, checkpoints).
Repeats are interleaved (sequential, vectorized, sequential, ...); the figure is the
median per side.

    python bench/sweep_vectorized.py [--config digits_mlp] [--points 8] [--epochs 5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from jaxtrain.util.events import Console
from jaxtrain.runs.sweep import run_sweep


def one(config: str, grid: list[str], overrides: list[str], vectorized: bool, root: Path) -> float:
    t0 = time.perf_counter()
    run_sweep(config, grid, workdir=root, overrides=overrides, vectorized=vectorized, console=Console("none"))
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="digits_mlp")
    p.add_argument("--points", type=int, default=8, help="learning rates in the grid")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args(argv)
    lrs = [f"{0.03 / 2 ** i:.6g}" for i in range(args.points)]
    grid = [f"optimizer.learning_rate={','.join(lrs)}"]
    overrides = [f"train.epochs={args.epochs}", *args.overrides]
    times: dict[str, list[float]] = {"sequential": [], "vectorized": []}
    with tempfile.TemporaryDirectory() as tmp:
        one(args.config, grid, overrides, True, Path(tmp) / "warmup")  # imports, data caches
        for r in range(args.repeats):
            order = ["sequential", "vectorized"] if r % 2 == 0 else ["vectorized", "sequential"]
            for side in order:
                times[side].append(one(args.config, grid, overrides, side == "vectorized",
                                       Path(tmp) / f"{side}-{r}"))
                print(f"repeat {r + 1}: {side} {times[side][-1]:.2f} s", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"config": args.config, "points": args.points, "epochs": args.epochs, "repeats": args.repeats,
              "sequential_s": med["sequential"], "vectorized_s": med["vectorized"],
              "speedup": med["sequential"] / med["vectorized"], "samples": times}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
