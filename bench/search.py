"""jaxtrain search: trials as vectorized populations against one trial at a time, side by side.

Every side searches the same space (AdamW learning rate and weight decay, log-uniform) of
one config for N trials, seeded TPE, into a fresh work directory and study, and writes
what `jaxtrain search` writes (a run directory per trial, results.csv, best.yaml, plots).
Wall time includes everything a user waits for (Optuna, data, compilation, training,
evaluation, checkpoints). Sides:

- `population`: P trials at a time, each batch one compiled program;
- `one_at_a_time`: `--population 1`;
- `population_prune`: P at a time with successive halving (`--prune`);
- `one_at_a_time_prune`: `--population 1 --prune` (not run unless named in `--sides`);
- `grid`: a vectorized grid sweep of N points over the same ranges (`sweep --vectorized`),
  for its best validation accuracy (and its time).

Repeats are interleaved, rotating the order; each figure is the median per side, and
the best validation accuracy is the one of the last repeat (the search is seeded, so
repeats find the same trials).

    python bench/search.py [--config digits_mlp] [--trials 32] [--population 16] [--epochs 10] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

from jaxtrain.runs.search import search
from jaxtrain.runs.sweep import run_sweep
from jaxtrain.util.events import Console

LR, WD = (1e-4, 1e-1), (1e-5, 1e-1)


def _search_side(args, root: Path, population: int, prune: bool) -> tuple[float, float]:
    t0 = time.perf_counter()
    out = search(args.config, {"optimizer.learning_rate": f"loguniform({LR[0]},{LR[1]})",
                               "optimizer.weight_decay": f"loguniform({WD[0]},{WD[1]})"},
                 trials=args.trials, population=population, prune=prune, workdir=root,
                 overrides=_overrides(args), console=Console("none"))
    return time.perf_counter() - t0, out["best_value"]


def _grid_side(args, root: Path) -> tuple[float, float]:
    """A log-spaced grid of about `trials` points: 2:1 more learning rates than weight decays."""
    n_wd = max(1, round(math.sqrt(args.trials / 2)))
    n_lr = max(1, args.trials // n_wd)
    grid = [f"optimizer.learning_rate={','.join(_logspace(*LR, n_lr))}",
            f"optimizer.weight_decay={','.join(_logspace(*WD, n_wd))}"]
    t0 = time.perf_counter()
    rows = run_sweep(args.config, grid, workdir=root, overrides=_overrides(args), vectorized=True,
                     console=Console("none"))
    return time.perf_counter() - t0, max(r["val.accuracy"] for r in rows)


def _logspace(low: float, high: float, n: int) -> list[str]:
    if n == 1:
        return [f"{math.sqrt(low * high):.6g}"]
    return [f"{low * (high / low) ** (i / (n - 1)):.6g}" for i in range(n)]


def _overrides(args) -> list[str]:
    return ["optimizer.name=adamw", f"train.epochs={args.epochs}", *args.overrides]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="digits_mlp")
    p.add_argument("--trials", type=int, default=32)
    p.add_argument("--population", type=int, default=16)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--sides", default="population,one_at_a_time,population_prune,grid")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args(argv)
    sides = {"population": lambda root: _search_side(args, root, args.population, False),
             "one_at_a_time": lambda root: _search_side(args, root, 1, False),
             "population_prune": lambda root: _search_side(args, root, args.population, True),
             "one_at_a_time_prune": lambda root: _search_side(args, root, 1, True),
             "grid": lambda root: _grid_side(args, root)}
    chosen = [s for s in args.sides.split(",") if s]
    times: dict[str, list[float]] = {s: [] for s in chosen}
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        _search_side(argparse.Namespace(**{**vars(args), "trials": 2, "epochs": 1}),
                     Path(tmp) / "warmup", 2, False)  # imports, data caches
        for r in range(args.repeats):
            for side in chosen[r % len(chosen):] + chosen[:r % len(chosen)]:
                seconds, best[side] = sides[side](Path(tmp) / f"{side}-{r}")
                times[side].append(seconds)
                print(f"repeat {r + 1}: {side} {seconds:.2f} s, best val accuracy {best[side]:.4f}",
                      file=sys.stderr)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"config": args.config, "trials": args.trials, "population": args.population,
              "epochs": args.epochs, "repeats": args.repeats, "wall_s": med, "best_val_accuracy": best,
              "samples": times}
    if "population" in med and "one_at_a_time" in med:
        result["speedup_population_vs_one_at_a_time"] = med["one_at_a_time"] / med["population"]
    if "population" in med and "population_prune" in med:
        result["speedup_prune_vs_no_prune"] = med["population"] / med["population_prune"]
    if "one_at_a_time" in med and "one_at_a_time_prune" in med:
        result["speedup_prune_vs_no_prune_one_at_a_time"] = med["one_at_a_time"] / med["one_at_a_time_prune"]
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
