"""Benchmark: the data stage beside its floor, side by side in one run.

    python bench/data_stage.py [--mnist DIR] [--csv-mb 100] [--stream-gb 1.0] [--repeats 3] [--json FILE]

Cases (each ratio = median case time / median floor time, repeats interleaved after a warm-up):
- MNIST from IDX: `load_dataset` of the mnist_mlp config (data.source=idx) vs decoding the
  four gzip files (`gzip.open(...).read()`).
- A generated mixed CSV in memory (12 numeric columns with 1% missing markers in six
  spellings, a category column, a short free-text column hashed to 32 dims, a target)
  vs `pyarrow.csv.read_csv` of the same file.
- A generated numeric CSV (20 columns) streamed (data.streaming=true, NumPy backend):
  preprocessing vs iterating `pyarrow.csv.open_csv` over the file; then one epoch of a
  linear model fed from `train_batches`, and the peak RSS of that process (a fresh
  subprocess per repeat, so the peak is the streaming run's own).
The generated files go to a temp dir (--dir) and are deleted at the end.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

MARKERS = ["", "NA", "nan", "NULL", "None", "n/a"]
WORDS = np.array("red green blue fast slow big small old new good bad fine great poor".split())


def write_mixed_csv(path: str, megabytes: float, seed: int = 0) -> None:
    """Numeric columns with 1% missing markers, a category, a 3-6 word text column, a target."""
    rng = np.random.default_rng(seed)
    rows = int(megabytes * 1e6 / 120)
    cols = [np.char.mod("%.4f", rng.normal(50, 10, rows)).astype(object) for _ in range(12)]
    for col in cols:
        miss = rng.random(rows) < 0.01
        col[miss] = np.array(MARKERS, object)[rng.integers(0, len(MARKERS), int(miss.sum()))]
    cols.append(np.array(["north", "south", "east", "west", "centre"], object)[rng.integers(0, 5, rows)])
    note = WORDS[rng.integers(0, len(WORDS), rows)].astype(object)
    for k in range(1, 6):                   # 3 to 6 words
        more = WORDS[rng.integers(0, len(WORDS), rows)].astype(object)
        note = np.where(rng.random(rows) < (1.0 if k < 3 else 0.5), note + " " + more, note)
    cols += [note, rng.integers(0, 3, rows).astype(str).astype(object)]
    lines = cols[0]
    for col in cols[1:]:
        lines = lines + "," + col
    header = ",".join([f"x{j}" for j in range(12)] + ["city", "note", "y"])
    with open(path, "w") as f:
        f.write(header + "\n" + "\n".join(lines) + "\n")


def write_numeric_csv(path: str, gigabytes: float, cols: int = 20, seed: int = 0) -> None:
    """`cols - 1` numeric features (6 decimals) and a linear target, written by Arrow in blocks."""
    rng = np.random.default_rng(seed)
    coef = rng.normal(size=cols - 1)
    rows = int(gigabytes * 1e9 / (cols * 8.0))
    with pcsv.CSVWriter(path, pa.schema([(f"f{j}", pa.float64()) for j in range(cols - 1)] + [("y", pa.float64())])) as w:
        for start in range(0, rows, 500_000):
            n = min(500_000, rows - start)
            x = np.round(rng.normal(size=(n, cols - 1)) * 10 + 50, 4)
            y = np.round(x @ coef + rng.normal(size=n), 4)
            w.write_table(pa.table({**{f"f{j}": x[:, j] for j in range(cols - 1)}, "y": y}))


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def side_by_side(case, floor, repeats: int) -> dict:
    """Warm up both, then `repeats` interleaved timings (alternating which goes first)."""
    case(), floor()
    cs, fs = [], []
    for r in range(repeats):
        for which in ((0, 1) if r % 2 == 0 else (1, 0)):
            (cs if which == 0 else fs).append(timed(case if which == 0 else floor))
    c, f = statistics.median(cs), statistics.median(fs)
    return {"case_s": c, "floor_s": f, "ratio": c / f, "case_samples": cs, "floor_samples": fs}


def mnist_case(directory: str, repeats: int) -> dict:
    from jaxtrain.config.schema import load_config
    from jaxtrain.data import load_dataset
    cfg = load_config("mnist_mlp", ["data.source=idx", f"data.path={directory}"]).data
    files = [os.path.join(directory, n) for n in sorted(os.listdir(directory)) if n.endswith(".gz")]

    def decode():
        for f in files:
            with gzip.open(f, "rb") as fh:
                fh.read()
    return side_by_side(lambda: load_dataset(cfg), decode, repeats)


def csv_case(path: str, repeats: int) -> dict:
    from jaxtrain.config.data import DataConfig
    from jaxtrain.data import load_dataset
    cfg = DataConfig(source="csv", path=path, target="y", hash_dim=32)
    out = side_by_side(lambda: load_dataset(cfg), lambda: pcsv.read_csv(path), repeats)
    out["rows"] = sum(load_dataset(cfg).report["rows_in"].values())
    return out


def stream_child(path: str, cache: str) -> None:
    """One streaming run in this (fresh) process: preprocessing time, one epoch, peak RSS."""
    import resource

    import jax
    import jax.numpy as jnp

    from jaxtrain.config.data import DataConfig
    from jaxtrain.data import load_dataset
    cfg = DataConfig(source="csv", path=path, target="y", streaming=True, val_fraction=0.01,
                     test_fraction=0.01, cache_dir=cache)
    t = time.perf_counter()
    ds = load_dataset(cfg)
    prep = time.perf_counter() - t

    @jax.jit
    def step(w, x, y, m):
        def loss(w):
            return jnp.sum(m * (x @ w[:-1] + w[-1] - y) ** 2) / jnp.maximum(m.sum(), 1)
        lv, g = jax.value_and_grad(loss)(w)
        return w - 0.1 * g, lv

    w, seen = jnp.zeros(ds.feature_shape[0] + 1), 0
    t = time.perf_counter()
    for x, y, m in ds.train_batches(4096, 0, 0):
        w, lv = step(w, x, y, m)
        seen += len(x)
    float(lv)
    epoch = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"prep_s": prep, "epoch_s": epoch, "peak_rss_mib": rss, "train_rows": ds.num_train}))


def stream_case(path: str, cache: str, repeats: int) -> dict:
    runs = []

    def case():
        out = subprocess.run([sys.executable, __file__, "--stream-child", path, "--dir", cache],
                             capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))

    def floor():
        for _ in pcsv.open_csv(path):
            pass
    floors = [timed(floor)]
    for r in range(repeats):                      # interleaved: child run, then a floor read
        case()
        floors.append(timed(floor))
    prep = statistics.median(r["prep_s"] for r in runs)
    f = statistics.median(floors[1:])
    return {"case_s": prep, "floor_s": f, "ratio": prep / f, "epoch_s": statistics.median(r["epoch_s"] for r in runs),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in runs), "runs": runs, "floor_samples": floors[1:],
            "train_rows": runs[0]["train_rows"]}


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "")
    except OSError:
        return platform.processor()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mnist", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                                                   "data", "mnist"), help="the four MNIST IDX files")
    ap.add_argument("--csv-mb", type=float, default=100)
    ap.add_argument("--stream-gb", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--stream-repeats", type=int, default=2)
    ap.add_argument("--dir", default=None, help="where generated files go (default: a temp dir)")
    ap.add_argument("--json", default="data_stage.json")
    ap.add_argument("--stream-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stream_child:
        return stream_child(args.stream_child, args.dir)
    results = {"cpu": cpu_model(), "command": " ".join([os.path.basename(sys.executable)] + sys.argv)}
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        if os.path.isdir(args.mnist):
            results["mnist_idx"] = mnist_case(args.mnist, args.repeats)
        if args.csv_mb > 0:
            path = os.path.join(d, "mixed.csv")
            write_mixed_csv(path, args.csv_mb)
            results["csv_in_memory"] = dict(csv_case(path, args.repeats), mb=os.path.getsize(path) / 1e6)
            os.unlink(path)
        if args.stream_gb > 0:
            path = os.path.join(d, "numeric.csv")
            write_numeric_csv(path, args.stream_gb)
            results["csv_streamed"] = dict(stream_case(path, d, args.stream_repeats), mb=os.path.getsize(path) / 1e6)
    print_table(results)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)


def print_table(results: dict) -> None:
    print(f"CPU: {results['cpu']}\n{'case':<34}{'floor':<30}{'case s':>8}{'floor s':>9}{'ratio':>7}")
    names = {"mnist_idx": ("MNIST IDX load+preprocess", "gzip decode of the 4 files"),
             "csv_in_memory": ("mixed CSV in memory", "pyarrow.csv.read_csv"),
             "csv_streamed": ("CSV streamed: preprocessing", "pyarrow.csv.open_csv read")}
    for key, (case, floor) in names.items():
        r = results.get(key)
        if r:
            print(f"{case:<34}{floor:<30}{r['case_s']:>8.2f}{r['floor_s']:>9.2f}{r['ratio']:>6.1f}x")
    s = results.get("csv_streamed")
    if s:
        print(f"streamed {s['mb']:.0f} MB, {s['train_rows']} train rows: one epoch {s['epoch_s']:.1f} s, "
              f"peak RSS {s['peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
