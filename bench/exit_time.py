"""How long a Python process that imported jaxtrain takes to exit: the interpreter's own
exit beside `jaxtrain.cli.main.exit_without_teardown` (what `jaxtrain ...` uses).

    python bench/exit_time.py [--repeats 3]

Each child imports jaxtrain's API, runs one compiled call, prints the time and exits; the
parent notes when the child has exited. Children alternate between the two exits.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

CHILD = """import time, jax, jax.numpy as jnp
from jaxtrain.runs import api
from jaxtrain.cli.main import exit_without_teardown
jax.jit(lambda a: a @ a)(jnp.ones((64, 64))).block_until_ready()
print(time.time(), flush=True)
"""
EXITS = {"python's exit": "", "exit_without_teardown": "exit_without_teardown(0)\n"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    seconds = {name: [] for name in EXITS}
    for _ in range(args.repeats):
        for name, tail in EXITS.items():
            out = subprocess.run([sys.executable, "-c", CHILD + tail], capture_output=True, text=True).stdout
            seconds[name].append(time.time() - float(out.strip().splitlines()[-1]))
    print(f"load average {os.getloadavg()[0]:.1f}; median of {args.repeats} exits each")
    for name, s in seconds.items():
        print(f"{name:>22}: {statistics.median(s):.3f} s  ({', '.join(f'{v:.2f}' for v in s)})")


if __name__ == "__main__":
    main()
