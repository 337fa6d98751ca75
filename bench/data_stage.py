"""Benchmark: the data stage beside its floor, side by side in one run.

    python bench/data_stage.py [--mnist DIR] [--csv-mb 30] [--text] [--stream-gb 1.0] [--repeats 3] [--json FILE]

Cases (each ratio = median case time / median floor time, repeats interleaved after a warm-up):
- MNIST from IDX: the data stage of the mnist_mlp config (data.source=idx) vs decoding the
  four gzip files (`gzip.open(...).read()`).
- A generated mixed CSV in memory (12 numeric columns with 1% missing markers in six
  spellings, a category column, a target; with --text also a short free-text column
  hashed to 32 dims), cleaned as house_prices_linear cleans (duplicates, median fill,
  IQR clipping), vs `pyarrow.csv.read_csv` of the same file.
- A generated numeric CSV (20 columns) streamed (data.streaming=true, NumPy backend):
  preprocessing vs iterating `pyarrow.csv.open_csv` over the file; then one epoch of a
  linear model fed from `train_batches`, and the peak RSS of that process (a fresh
  subprocess per repeat, so the peak is the streaming run's own).

MNIST and the in-memory CSV are timed three ways, each against its floor timed the same way:
- warm: in this process, after a warm-up (what the stage itself costs);
- fresh process: `load_dataset` + `write_artifacts` as the first call in a new process, the
  floor too (what a run pays: its arrays are the process's first touch of that memory);
- the run: `jaxtrain train ... train.epochs=1` in a new process, its own `time.breakdown.data`
  from summary.json, against the fresh-process floor.
The generated files go to a temp dir (--dir) and are deleted at the end.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
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


def write_mixed_csv(path: str, megabytes: float, seed: int = 0, text: bool = False) -> None:
    """Numeric columns with 1% missing markers, a category, (a 3-6 word text column,) a target."""
    rng = np.random.default_rng(seed)
    rows = int(megabytes * 1e6 / (120 if text else 95))
    cols = [np.char.mod("%.4f", rng.normal(50, 10, rows)).astype(object) for _ in range(12)]
    for col in cols:
        miss = rng.random(rows) < 0.01
        col[miss] = np.array(MARKERS, object)[rng.integers(0, len(MARKERS), int(miss.sum()))]
    cols.append(np.array(["north", "south", "east", "west", "centre"], object)[rng.integers(0, 5, rows)])
    note = WORDS[rng.integers(0, len(WORDS), rows)].astype(object)
    for k in range(1, 6):                   # 3 to 6 words
        more = WORDS[rng.integers(0, len(WORDS), rows)].astype(object)
        note = np.where(rng.random(rows) < (1.0 if k < 3 else 0.5), note + " " + more, note)
    cols += ([note] if text else []) + [rng.integers(0, 3, rows).astype(str).astype(object)]
    lines = cols[0]
    for col in cols[1:]:
        lines = lines + "," + col
    header = ",".join([f"x{j}" for j in range(12)] + ["city"] + (["note"] if text else []) + ["y"])
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


def cpu_timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process: every thread, user and system)."""
    t, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def side_by_side(case, floor, repeats: int) -> dict:
    """Warm up both, then `repeats` interleaved timings (alternating which goes first). The
    CPU-time ratio beside the wall-time one: on a shared machine the wall clock also counts
    the time other people's work held the cores."""
    case(), floor()
    cs, fs = [], []
    for r in range(repeats):
        for which in ((0, 1) if r % 2 == 0 else (1, 0)):
            (cs if which == 0 else fs).append(cpu_timed(case if which == 0 else floor))
    c, f = statistics.median(w for w, _ in cs), statistics.median(w for w, _ in fs)
    cc, fc = statistics.median(u for _, u in cs), statistics.median(u for _, u in fs)
    return {"case_s": c, "floor_s": f, "ratio": c / f, "case_cpu_s": cc, "floor_cpu_s": fc, "cpu_ratio": cc / fc,
            "case_samples": [w for w, _ in cs], "floor_samples": [w for w, _ in fs]}


MNIST_SETS = ["data.source=idx"]
CSV_SETS = ["data.source=csv", "data.target=y", "data.hash_dim=32"]


def data_config(kind: str, path: str):
    from jaxtrain.config.schema import load_config
    name, sets = ("mnist_mlp", MNIST_SETS) if kind == "mnist" else ("house_prices_linear", CSV_SETS)
    return load_config(name, sets + [f"data.path={path}"]).data


def floor_fn(kind: str, path: str):
    """The bare read the data stage cannot beat."""
    if kind == "csv":
        return lambda: pcsv.read_csv(path)
    files = [os.path.join(path, n) for n in sorted(os.listdir(path)) if n.endswith(".gz")]

    def decode():
        for f in files:
            with gzip.open(f, "rb") as fh:
                fh.read()
    return decode


def stage_fn(kind: str, path: str, workdir: str):
    """What a run does in its data phase: load, clean, encode; write stats.json and the report."""
    from jaxtrain.data import load_dataset, write_artifacts
    cfg = data_config(kind, path)

    def stage():
        write_artifacts(load_dataset(cfg), workdir)
    return stage


def warm_case(kind: str, path: str, repeats: int, workdir: str) -> dict:
    return side_by_side(stage_fn(kind, path, workdir), floor_fn(kind, path), repeats)


def fresh_child(which: str, kind: str, path: str, workdir: str) -> None:
    """One first call in this (new) process: the data stage or the floor; prints seconds."""
    fn = floor_fn(kind, path) if which == "floor" else stage_fn(kind, path, workdir)
    print(json.dumps({"s": timed(fn)}))


def fresh_and_run(kind: str, path: str, repeats: int, workdir: str) -> dict:
    """Interleaved: a fresh process timing the floor, one timing the stage, and a whole
    `jaxtrain train` run (one epoch) reporting its own time.breakdown.data."""
    def child(which):
        out = subprocess.run([sys.executable, __file__, "--fresh-child", which, kind, path, "--dir", workdir],
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])["s"]

    def run():
        name, sets = ("mnist_mlp", MNIST_SETS) if kind == "mnist" else ("house_prices_linear", CSV_SETS)
        rundir = tempfile.mkdtemp(prefix=f"run-{kind}-", dir=workdir)
        args = [sys.executable, "-m", "jaxtrain", "train", name, "--workdir", os.path.join(rundir, "run")]
        for s in sets + [f"data.path={path}", "train.epochs=1", "checkpoint.enabled=false"]:
            args += ["--set", s]
        out = subprocess.run(args, capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"{' '.join(args)} failed:\n{out.stderr[-2000:]}")
        with open(os.path.join(rundir, "run", "summary.json")) as f:
            data_s = json.load(f)["time"]["breakdown"]["data"]
        shutil.rmtree(rundir)
        return data_s
    floors, stages, runs = [], [], []
    for _ in range(repeats):
        floors.append(child("floor"))
        stages.append(child("stage"))
        runs.append(run())
    f = statistics.median(floors)
    return {"fresh_floor_s": f, "fresh_case_s": statistics.median(stages), "run_data_s": statistics.median(runs),
            "fresh_ratio": statistics.median(stages) / f, "run_ratio": statistics.median(runs) / f,
            "fresh_floor_samples": floors, "fresh_case_samples": stages, "run_data_samples": runs}


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


FLOORS = {"mnist_idx": 2.0, "csv_in_memory": 4.0, "csv_streamed": 5.0}   # the targets: ratio <= floor


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mnist", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                                                   "data", "mnist"), help="the four MNIST IDX files")
    ap.add_argument("--csv-mb", type=float, default=30)
    ap.add_argument("--text", action="store_true", help="add a free-text column to the mixed CSV")
    ap.add_argument("--stream-gb", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--stream-repeats", type=int, default=2)
    ap.add_argument("--no-run", action="store_true", help="skip the fresh-process and whole-run timings")
    ap.add_argument("--dir", default=None, help="where generated files go (default: a temp dir)")
    ap.add_argument("--json", default="data_stage.json")
    ap.add_argument("--stream-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--fresh-child", nargs=3, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stream_child:
        return stream_child(args.stream_child, args.dir)
    if args.fresh_child:
        return fresh_child(*args.fresh_child, args.dir)
    results = {"cpu": cpu_model(), "command": " ".join([os.path.basename(sys.executable)] + sys.argv)}
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        cases = []
        if os.path.isdir(args.mnist):
            cases.append(("mnist_idx", "mnist", os.path.abspath(args.mnist)))
        if args.csv_mb > 0:
            path = os.path.join(d, "mixed.csv")
            write_mixed_csv(path, args.csv_mb, text=args.text)
            cases.append(("csv_in_memory", "csv", path))
        for key, kind, path in cases:
            results[key] = warm_case(kind, path, args.repeats, d)
            if not args.no_run:
                results[key].update(fresh_and_run(kind, path, args.repeats, d))
            if kind == "csv":
                results[key].update(mb=os.path.getsize(path) / 1e6, rows=sum(1 for _ in open(path)) - 1)
        if args.stream_gb > 0:
            path = os.path.join(d, "numeric.csv")
            write_numeric_csv(path, args.stream_gb)
            results["csv_streamed"] = dict(stream_case(path, d, args.stream_repeats), mb=os.path.getsize(path) / 1e6)
    print_table(results)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)


def print_table(results: dict) -> None:
    print(f"CPU: {results['cpu']}\n{'case':<30}{'floor':<28}{'case s':>8}{'floor s':>9}{'ratio':>7}{'target':>8}"
          f"{'cpu':>6}{'fresh':>7}{'run data_s':>11}{'run':>6}")
    names = {"mnist_idx": ("MNIST IDX load+preprocess", "gzip decode of the 4 files"),
             "csv_in_memory": ("mixed CSV in memory", "pyarrow.csv.read_csv"),
             "csv_streamed": ("CSV streamed: preprocessing", "pyarrow.csv.open_csv read")}
    for key, (case, floor) in names.items():
        r = results.get(key)
        if r:
            line = f"{case:<30}{floor:<28}{r['case_s']:>8.2f}{r['floor_s']:>9.2f}{r['ratio']:>6.1f}x" \
                   f"{'<=' + format(FLOORS[key], 'g') + 'x':>8}" + \
                   (f"{r['cpu_ratio']:>5.1f}x" if "cpu_ratio" in r else f"{'':>6}")
            if "run_ratio" in r:
                line += f"{r['fresh_ratio']:>6.1f}x{r['run_data_s']:>10.2f}s{r['run_ratio']:>5.1f}x"
            print(line)
    s = results.get("csv_streamed")
    if s:
        print(f"streamed {s['mb']:.0f} MB, {s['train_rows']} train rows: one epoch {s['epoch_s']:.1f} s, "
              f"peak RSS {s['peak_rss_mib']:.0f} MiB")
    print("ratio: warm, in this process (wall; cpu: CPU seconds); fresh: first call in a new process; run: a "
          "whole `jaxtrain train`'s own time.breakdown.data; fresh and run against the floor timed in a new process")


if __name__ == "__main__":
    main()
