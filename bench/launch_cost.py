"""Where a simulated multi-process CPU run (`jaxtrain launch -n 2`) spends its time, beside
one process on the same simulated devices.

    python bench/launch_cost.py [--epochs 3] [--repeats 1]

Each variant trains the digits MLP (batch 32) for `--epochs` epochs and reports the wall
time of the whole command and the run's own breakdown (summary.json: compile, train and
the step time). Variants run round-robin, so a busy machine slows them alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {  # name: (launcher arguments, or None for one plain process; extra --set items)
    "1 process, 4 devices, K auto": (None, 4, []),
    "2 processes x 4 devices, K auto": (2, 4, []),
    "2 processes x 4 devices, K epoch": (2, 4, ["train.steps_per_call=epoch"]),
    "2 processes x 1 device, K epoch": (2, 1, ["train.steps_per_call=epoch"]),
}


def run(name: str, workdir: Path, epochs: int) -> dict:
    processes, devices, sets = VARIANTS[name]
    train = ["train", "--workdir", str(workdir), "--set", "data.batch_size=32", "--set", f"train.epochs={epochs}",
             "--set", "checkpoint.enabled=false", "--set", "train.compilation_cache=null",
             *[a for s in sets for a in ("--set", s)]]
    cmd = [sys.executable, "-m", "jaxtrain"]
    env = dict(os.environ)
    if processes is None:
        env["JAX_NUM_CPU_DEVICES"] = str(devices)
        cmd += train
    else:
        cmd += ["launch", "-n", str(processes), "--cpu-devices", str(devices), "--", *train]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"{name} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    summary = json.loads((workdir / "summary.json").read_text())
    parts = summary["time"]["breakdown"]
    return {"wall_s": wall, "compile_s": parts.get("compile", 0.0), "train_s": parts.get("train", 0.0),
            "step_ms": summary["perf"].get("step_time_ms")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    results: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for i, name in enumerate(VARIANTS):
                results[name].append(run(name, Path(tmp) / f"{r}-{i}", args.epochs))
                print(f"done: {name} (repeat {r + 1})", file=sys.stderr, flush=True)
    print(f"load average {os.getloadavg()[0]:.1f}; digits MLP, batch 32, {args.epochs} epochs; "
          f"median of {args.repeats}")
    base = statistics.median(r["wall_s"] for r in results[next(iter(VARIANTS))])
    for name, rs in results.items():
        med = {k: statistics.median(r[k] for r in rs if r[k] is not None) for k in rs[0]}
        print(f"{name:>34}: wall {med['wall_s']:6.1f} s ({med['wall_s'] / base:4.1f}x)  compile "
              f"{med['compile_s']:5.1f} s  train {med['train_s']:5.1f} s  step {med['step_ms']:6.1f} ms")


if __name__ == "__main__":
    main()
