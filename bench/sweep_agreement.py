"""How closely vectorized sweep points match the same points trained one by one, per learning rate.

Trains one grid of learning rates twice (`jaxtrain sweep` and `jaxtrain sweep --vectorized`)
and prints, per point, the largest absolute difference of the final parameters and the
test accuracy and loss of both.

    python bench/sweep_agreement.py [--config digits_mlp] [--lrs 0.1,0.01,0.001] [--epochs 10] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from jaxtrain.ckpt.params import load_named_params
from jaxtrain.runs.sweep import run_sweep
from jaxtrain.util.events import Console


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="digits_mlp")
    p.add_argument("--lrs", default="0.1,0.01,0.001")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args(argv)
    grid = [f"optimizer.learning_rate={args.lrs}"]
    overrides = [f"train.epochs={args.epochs}", *args.overrides]
    with tempfile.TemporaryDirectory() as tmp:
        rows = {}
        for vectorized in (False, True):
            root = Path(tmp) / ("vectorized" if vectorized else "separate")
            rows[vectorized] = run_sweep(args.config, grid, workdir=root, overrides=overrides,
                                         vectorized=vectorized, console=Console("none"))
        print("| learning rate | max abs parameter difference | test accuracy separate / vectorized | "
              "test loss separate / vectorized |\n| --- | ---: | ---: | ---: |")
        for sep, vec in zip(rows[False], rows[True]):
            a, _ = load_named_params(Path(tmp) / "separate" / sep["point"] / "checkpoints")
            b, _ = load_named_params(Path(tmp) / "vectorized" / vec["point"] / "checkpoints")
            diff = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
            print(f"| {sep['optimizer.learning_rate']} | {diff:.2e} | {sep['test.accuracy']:.4f} / "
                  f"{vec['test.accuracy']:.4f} | {sep['test.loss']:.6f} / {vec['test.loss']:.6f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
