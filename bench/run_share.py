"""How much of a whole `jaxtrain train` process is spent in training steps.

    python bench/run_share.py [--mnist /work/shared/data/mnist] [--repeats 3] [--out DIR]
                              [--config mnist_mlp_tuned] [--set KEY=VALUE ...]

Runs `python -m jaxtrain train CONFIG` as a child process `--repeats` times after one
warm-up run (which fills the persistent compilation cache, as any second run of a config
finds it), each in a fresh work directory. The wall time is measured here, from just
before the process is started to its exit; the training-step time is the run's own
`time.breakdown.train` from summary.json (its epochs' compiled calls up to each epoch's
device sync, compilation excluded). Reported: the median share train / wall, and the
median of each part of the breakdown, with what the run itself saw as its total (the
process wall time less the interpreter's exit, which no run can report).

Writes run_share.json and run_share.md into --out (default bench/results/).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def one_run(config: str, overrides: list[str], workdir: Path) -> dict:
    cmd = [sys.executable, "-m", "jaxtrain", "train", config, "--workdir", str(workdir),
           "--set", "logging.progress=none", *[a for kv in overrides for a in ("--set", kv)]]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    summary = json.loads((workdir / "summary.json").read_text())
    parts = summary["time"]["breakdown"]
    return {"wall_s": wall, "total_s": summary["time"]["total_s"], "parts": parts,
            "train_share": parts["train"] / wall, "test": summary["test"],
            "step_time_ms": summary["perf"]["step_time_ms"], "mfu": summary["perf"]["mfu"]}


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="mnist_mlp_tuned")
    ap.add_argument("--mnist", default="/work/shared/data/mnist", help="directory of the four IDX files")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    overrides = [f"data.source=idx", f"data.path={args.mnist}", *args.overrides]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats + 1):
            r = one_run(args.config, overrides, Path(tmp) / f"run{i}")
            label = "warm-up" if i == 0 else f"run {i}/{args.repeats}"
            print(f"{label}: wall {r['wall_s']:.2f} s, train {r['parts']['train']:.2f} s "
                  f"({100 * r['train_share']:.1f}%), test {r['test']}", file=sys.stderr)
            if i:
                runs.append(r)
    med = lambda xs: statistics.median(xs)  # noqa: E731
    parts = {name: med([r["parts"].get(name, 0.0) for r in runs]) for name in runs[0]["parts"]}
    result = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu": cpu_model(),
              "cpus": os.cpu_count(), "loadavg": os.getloadavg(),
              "command": f"jaxtrain train {args.config} " + " ".join(f"--set {o}" for o in overrides),
              "repeats": args.repeats, "train_share": med([r["train_share"] for r in runs]),
              "wall_s": med([r["wall_s"] for r in runs]), "total_s": med([r["total_s"] for r in runs]),
              "parts_s": parts, "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "run_share.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"`{result['command']}`, {result['cpu']} ({result['cpus']} cpus), {result['date']}, "
             f"median of {args.repeats} runs after a warm-up run:", "",
             "| part | seconds | share of the process wall time |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {s:.2f} | {100 * s / result['wall_s']:.1f}% |" for name, s in parts.items()]
    lines += [f"| (process wall time) | {result['wall_s']:.2f} | 100% |", "",
              f"Training steps: {100 * result['train_share']:.1f}% of the wall time (median of the runs' shares)."]
    (args.out / "run_share.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
