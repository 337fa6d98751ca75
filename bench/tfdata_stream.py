"""Benchmark: stream a ~1 GB CSV (5M rows x 20 columns) through the tf.data backend.

Generates the CSV in a temp dir, loads it with data.streaming=true (statistics in
streaming passes, preprocessed rows in a disk cache), trains one epoch of a linear
model with a jitted SGD step fed from `train_batches`, and reports peak RSS
(resource.getrusage). Target: under 2 GiB. Not a test: run by hand.

    python bench/tfdata_stream.py [--rows 5000000] [--cols 20] [--batch 4096] [--csv FILE]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

import numpy as np


def write_csv(path: str, rows: int, cols: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    coef = rng.normal(size=cols - 1)
    with open(path, "w") as f:
        f.write(",".join([f"f{j}" for j in range(cols - 1)] + ["target"]) + "\n")
        for start in range(0, rows, 200_000):
            n = min(200_000, rows - start)
            x = rng.normal(size=(n, cols - 1)) * 10 + 50
            y = x @ coef + rng.normal(size=n)
            np.savetxt(f, np.concatenate([x, y[:, None]], 1), fmt="%.6f", delimiter=",")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--cols", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--dir", default=None, help="where the CSV and the cache go (default: a temp dir)")
    ap.add_argument("--csv", default=None, help="reuse this CSV (written there first if missing)")
    args = ap.parse_args()
    import jax
    import jax.numpy as jnp

    from jaxtrain.data import load_dataset
    from jaxtrain.config.data import CleanConfig, DataConfig

    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        path = args.csv or os.path.join(d, "big.csv")
        if not os.path.exists(path):
            t = time.perf_counter()
            write_csv(path, args.rows, args.cols)
            print(f"wrote {path} in {time.perf_counter() - t:.0f} s")
        size = os.path.getsize(path)
        print(f"CSV: {size / 1e9:.2f} GB ({size / 2**30:.2f} GiB); peak RSS so far {peak_rss_mib():.0f} MiB")
        cfg = DataConfig(source="csv", path=path, target="target", backend="tfdata", streaming=True,
                         val_fraction=0.01, test_fraction=0.01, cache_dir=d, clean=CleanConfig(missing="mean"))
        t = time.perf_counter()
        ds = load_dataset(cfg)
        t_load = time.perf_counter() - t
        rows = sum(ds.report["rows_in"].values())
        print(f"preprocessed {rows} rows ({ds.num_train} train) in {t_load:.0f} s; "
              f"peak RSS {peak_rss_mib():.0f} MiB")

        @jax.jit
        def step(w, x, y, m):
            def loss(w):
                err = x @ w[:-1] + w[-1] - y
                return jnp.sum(m * err ** 2) / jnp.maximum(m.sum(), 1)
            lv, g = jax.value_and_grad(loss)(w)
            return w - 0.1 * g, lv

        w = jnp.zeros(ds.feature_shape[0] + 1)
        t, seen, lv = time.perf_counter(), 0, None
        for x, y, m in ds.train_batches(args.batch, 0, 0):
            w, lv = step(w, x, y, m)
            seen += int(m.sum())
        lv = float(lv)
        t_epoch = time.perf_counter() - t
        val_mse = float(np.mean((ds.val.x @ np.asarray(w[:-1]) + float(w[-1]) - ds.val.y) ** 2))
        print(f"one epoch: {seen} examples in {t_epoch:.0f} s ({seen / t_epoch:,.0f} ex/s), "
              f"last batch loss {lv:.4f}, val mse (standardized) {val_mse:.4f}")
        print(f"RESULT file {size / 1e9:.2f} GB, {rows} rows x {args.cols} cols, preprocessing {t_load:.0f} s, "
              f"epoch {t_epoch:.0f} s, PEAK RSS {peak_rss_mib():.0f} MiB (target < 2048 MiB)")


if __name__ == "__main__":
    main()
