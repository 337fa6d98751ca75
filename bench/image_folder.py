"""Benchmark: a folder of PNG images (data.source=images) beside its floors, side by side in one run.

    python bench/image_folder.py [--mnist DIR] [--images 10000] [--size 28] [--suffix .png]
                                 [--repeats 3] [--json FILE]

Writes `--images` MNIST training images (from the IDX files in --mnist; without it, the
built-in 8x8 digits scaled to 28x28), resized to --size, as PNG or JPEG files, one
sub-folder per class, into a temp dir, and an .npz of the pixels read back. Cases, medians of interleaved repeats after a warm-up:
- `pillow loop`: the floor, one thread opening and decoding every file with Pillow;
- `decode, 1 thread` / `decode, all cores`: `sources.load_raw` with a fresh cache
  directory (probe, decode into the memory-mapped cache), data.num_parallel_calls 1 / -1;
- `cached`: `load_raw` again on the same cache (the second run of a user);
- `dataset, cached` / `dataset, npz`: the whole `load_dataset` (split, duplicates,
  normalization) from the cache and from the .npz of the same pixels.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from jaxtrain.config.data import DataConfig  # noqa: E402
from jaxtrain.data import load_dataset, sources  # noqa: E402


def mnist_or_digits(mnist: str | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    if mnist:
        with gzip.open(os.path.join(mnist, "train-images-idx3-ubyte.gz")) as f:
            x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
        with gzip.open(os.path.join(mnist, "train-labels-idx1-ubyte.gz")) as f:
            y = np.frombuffer(f.read(), np.uint8, offset=8)
        return x[:n], y[:n].astype(np.int64)
    table = sources.builtin_table("digits")
    x = (table["x"] * 15).astype(np.uint8).reshape(-1, 8, 8).repeat(3, 1).repeat(3, 2)
    x = np.pad(x, ((0, 0), (2, 2), (2, 2)))
    reps = -(-n // len(x))
    return np.tile(x, (reps, 1, 1))[:n], np.tile(table["y"].astype(np.int64), reps)[:n]


def write_images(root: str, x: np.ndarray, y: np.ndarray, size: int, suffix: str) -> list[str]:
    from PIL import Image
    paths = []
    for i in range(len(x)):
        folder = os.path.join(root, str(y[i]))
        os.makedirs(folder, exist_ok=True)
        paths.append(os.path.join(folder, f"{i:06d}{suffix}"))
        im = Image.fromarray(x[i])
        im = im if im.size == (size, size) else im.resize((size, size), Image.Resampling.BILINEAR)
        im.save(paths[-1])
    return paths


def read_back(paths: list[str]) -> np.ndarray:
    from PIL import Image
    return np.stack([np.asarray(Image.open(p)) for p in paths])


def cases(work: str, paths: list[str]) -> dict:
    from PIL import Image
    folder, npz = os.path.join(work, "png"), os.path.join(work, "same.npz")
    warm = os.path.join(work, "cache-warm")

    def pillow_loop():
        for p in paths:
            with Image.open(p) as im:
                np.asarray(im)

    def cold(threads):
        def run():
            cache = tempfile.mkdtemp(dir=work)
            sources.load_raw(DataConfig(source="images", path=folder, cache_dir=cache,
                                        num_parallel_calls=threads))
            shutil.rmtree(cache)
        return run

    return {
        "pillow loop": pillow_loop,
        "decode, 1 thread": cold(1),
        "decode, all cores": cold(-1),
        "cached": lambda: sources.load_raw(DataConfig(source="images", path=folder, cache_dir=warm)),
        "dataset, cached": lambda: load_dataset(DataConfig(source="images", path=folder, cache_dir=warm)),
        "dataset, npz": lambda: load_dataset(DataConfig(source="npz", path=npz)),
    }


def measure(fns: dict, repeats: int) -> dict[str, list[float]]:
    for fn in fns.values():         # warm-up: imports, page cache, the warm cache entry
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeats):        # interleaved, rotated
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or "unknown"
    return f"{name}, {os.cpu_count()} cores"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mnist", help="directory of the MNIST IDX files (default: built-in digits, 28x28)")
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--size", type=int, default=28, help="side of the square images written")
    ap.add_argument("--suffix", default=".png", choices=[".png", ".jpg"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="jaxtrain-bench-images-")
    try:
        x, y = mnist_or_digits(args.mnist, args.images)
        paths = write_images(os.path.join(work, "png"), x, y, args.size, args.suffix)
        order = np.argsort(y, kind="stable")
        np.savez(os.path.join(work, "same.npz"), x=read_back(paths)[order], y=y[order])
        times = measure(cases(work, paths), args.repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    median = {k: statistics.median(v) for k, v in times.items()}
    floor = median["pillow loop"]
    print(f"{len(x)} {args.suffix} images {args.size}x{args.size} ({'MNIST' if args.mnist else 'digits'}); "
          f"{cpu_model()}; median of {args.repeats}")
    for k, v in median.items():
        print(f"  {k:20s} {v * 1e3:9.1f} ms   {v / floor:6.2f}x the Pillow loop")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"images": len(x), "size": args.size, "suffix": args.suffix, "cpu": cpu_model(), "seconds": times, "median_s": median}, f, indent=1)


if __name__ == "__main__":
    main()
