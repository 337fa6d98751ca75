"""Time spent checkpointing in the default run (`jaxtrain train`: digits MLP), by cadence.

Each variant trains the default config in this process and times every checkpoint save
(`Checkpointer.save`, and the wait for the last write in `close`) from the inside; the
run's fit is its `time.total_s` after start-up and data. Variants run interleaved, round-robin, after one
untimed warm-up each; the median of the repeats is reported.

- `every epoch (old default)`: checkpoint.every_epochs=1, every_seconds=null, synchronous;
- `every epoch, async`: the same with checkpoint.async_save=true;
- `every 60 s + last (default)`: the defaults (every_seconds=60, no epoch saves).

    python bench/checkpoint_cadence.py [--repeats 3] [--out bench/results/checkpoint_cadence.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
VARIANTS = {
    "every epoch (old default)": {"checkpoint.every_epochs": 1, "checkpoint.every_seconds": None},
    "every epoch, async": {"checkpoint.every_epochs": 1, "checkpoint.every_seconds": None,
                           "checkpoint.async_save": True},
    "every 60 s + last (default)": {},
}


def timed_run(overrides: dict) -> dict:
    """One default run; seconds inside checkpoint saves and the final wait, and fit_s."""
    from jaxtrain import train
    from jaxtrain.ckpt.checkpoint import Checkpointer
    spent = {"s": 0.0, "saves": 0}
    save, close = Checkpointer.save, Checkpointer.close

    def timed_save(self, *a, **k):
        t0 = time.perf_counter()
        try:
            return save(self, *a, **k)
        finally:
            spent["s"] += time.perf_counter() - t0
            spent["saves"] += 1

    def timed_close(self):
        t0 = time.perf_counter()
        try:
            return close(self)
        finally:
            spent["s"] += time.perf_counter() - t0

    Checkpointer.save, Checkpointer.close = timed_save, timed_close
    try:
        with tempfile.TemporaryDirectory() as tmp:
            summary = train(None, workdir=Path(tmp) / "run", overrides={"logging.progress": "none", **overrides})
    finally:
        Checkpointer.save, Checkpointer.close = save, close
    time_ = summary["time"]     # the fit: the run's time after start-up and the data stage
    fit_s = time_["total_s"] - time_["breakdown"]["startup"] - time_["breakdown"]["data"]
    return {"checkpoint_s": spent["s"], "saves": spent["saves"], "fit_s": fit_s}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "checkpoint_cadence.json")
    args = p.parse_args(argv)
    names = list(VARIANTS)
    samples: dict[str, list[dict]] = {n: [] for n in names}
    for n in names:  # warm-up: imports, compile cache, data
        timed_run(VARIANTS[n])
    for r in range(args.repeats):
        for i in range(len(names)):
            n = names[(i + r) % len(names)]
            samples[n].append(timed_run(VARIANTS[n]))
    rows = []
    for n in names:
        med = {k: statistics.median(s[k] for s in samples[n]) for k in ("checkpoint_s", "fit_s", "saves")}
        rows.append({"variant": n, **med, "samples": samples[n]})
    base = rows[0]["checkpoint_s"]
    lines = ["| cadence | saves | checkpoint s | vs old default | fit s |", "| --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['saves']:.0f} | {r['checkpoint_s']:.3f} | "
                     f"{r['checkpoint_s'] / base:.2f} | {r['fit_s']:.2f} |")
    md = f"Default run (digits MLP, 30 epochs), median of {args.repeats} interleaved runs.\n\n" + "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
