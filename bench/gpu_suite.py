"""jaxtrain on one accelerator: every speed question of issue 14 in one prepared run.

    python bench/gpu_suite.py --out DIR [--mnist DIR] [--only grid,flags,torch,e2e,sweep]
    python bench/gpu_suite.py --smoke --out DIR        # a tiny version of everything, on CPU too

Meant for the lent GPU machine (one H200: Python 3.12, jax with CUDA, flax, optax, orbax,
pyarrow, torch, scikit-learn, matplotlib; no TensorFlow, no network; jaxtrain installed
with `pip install --no-deps --no-build-isolation .`) and sized to finish in under 8 minutes
there. Cases (each skipped with its reason when it cannot run here):

- grid:  batch 100, 1000, 8192 x fp32, bf16 x K = 1, auto, whole epoch x training set on
         the device or streamed from the host, through jaxtrain's engine (median of the
         interleaved timed epochs, bench/_harness.py);
- flags: XLA's GPU flags, each in its own process (XLA_FLAGS is read once, at start-up):
         the default, command buffers (CUDA graphs) that include WHILE so a fused K-step
         call's scan can run as one graph, and the scan unrolled 8 steps per iteration;
- torch: the MNIST recipe (784-256-128-64-10, SGD 0.01, batch 100) in jaxtrain, beside a
         PyTorch eager loop and the same loop under torch.compile, data on the same GPU;
- e2e:   `jaxtrain train mnist_mlp_tuned` as a whole process, after a warm-up run;
- sweep: 64 learning rates trained together (`jaxtrain sweep --vectorized`'s engine),
         beside one ordinary run whose time, times 64, estimates 64 sequential runs.

Every case reports step time, MFU (jaxtrain's own accounting: XLA's FLOP count over the
peak table of parallel/device_peak.py, or the measured matmul peak on a CPU) and, on a GPU, the
kernel floor: the step's device kernels alone, summed from a jax.profiler trace (what the
step would take with no launch gaps, host work or while-loop round trips).

Data: real MNIST IDX files with --mnist; otherwise MNIST-shaped synthetic data whose
labels follow a fixed linear rule of the pixels (learnable, so accuracies mean something),
written as IDX files where a case runs the CLI. Writes gpu_suite.json and gpu_suite.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gzip
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(BENCH_DIR.parent))

import numpy as np  # noqa: E402

from _harness import EngineEpochs  # noqa: E402

CASES = ("grid", "flags", "torch", "e2e", "sweep")
COMMAND_BUFFER_FLAGS = ("--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,"
                        "CONDITIONAL,WHILE --xla_gpu_graph_min_graph_size=1")
FLAG_VARIANTS = {"default": ("", 1), "command_buffer_while": (COMMAND_BUFFER_FLAGS, 1), "scan_unroll_8": ("", 8)}
RECIPE_HIDDEN = (256, 128, 64)


@dataclasses.dataclass(frozen=True)
class Sizes:
    train: int
    test: int
    batches: tuple[int, ...]
    repeats: int
    flag_batches: tuple[int, ...]
    e2e_epochs: int | None     # None: the config's own
    sweep_points: int
    sweep_epochs: int


FULL = Sizes(train=60000, test=10000, batches=(100, 1000, 8192), repeats=3, flag_batches=(100, 1000),
             e2e_epochs=None, sweep_points=64, sweep_epochs=2)
SMOKE = Sizes(train=512, test=128, batches=(64,), repeats=1, flag_batches=(64,),
              e2e_epochs=1, sweep_points=4, sweep_epochs=2)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- data


def mnist_like(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 28x28 images and labels from a fixed linear rule of the pixels."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    rule = np.random.default_rng(1234).normal(size=(784, 10))
    labels = np.argmax((images.reshape(n, -1) / 127.5 - 1.0) @ rule, axis=1).astype(np.uint8)
    return images, labels


def write_idx(directory: Path, sizes: Sizes) -> Path:
    """The four MNIST IDX files (gzip) of synthetic data in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", sizes.train, 0), ("t10k", sizes.test, 1)):
        images, labels = mnist_like(n, seed)
        with gzip.open(directory / f"{split}-images-idx3-ubyte.gz", "wb", compresslevel=1) as f:
            f.write(struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes())
        with gzip.open(directory / f"{split}-labels-idx1-ubyte.gz", "wb", compresslevel=1) as f:
            f.write(struct.pack(">II", 0x801, n) + labels.tobytes())
    return directory


def in_memory_dataset(sizes: Sizes):
    from jaxtrain.data import Dataset, Split
    images, labels = mnist_like(sizes.train)
    x = images.reshape(len(images), -1).astype(np.float32) / 127.5 - 1.0
    return Dataset(task="classification", num_classes=10, feature_shape=(784,),
                   train=Split(x, labels.astype(np.int32)), val=None,
                   test=Split(x[:256], labels[:256].astype(np.int32)), name="mnist_like")


# ---------------------------------------------------------------- measuring


def kernel_floor(fn, steps: int) -> dict:
    """The device kernels of `fn()` (which runs `steps` steps), from a jax.profiler trace:
    kernels per step and their summed time per step. Only where a device plane exists."""
    import jax
    from jax.profiler import ProfileData
    if jax.devices()[0].platform == "cpu":
        return {"kernel_floor_ms": None, "kernels_per_step": None, "kernel_note": "CPU: no device kernels"}
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp):
            fn()
        count, total_ns = 0, 0
        for path in Path(tmp).rglob("*.xplane.pb"):
            for plane in ProfileData.from_file(str(path)).planes:
                if not plane.name.startswith("/device:"):
                    continue
                for line in plane.lines:
                    if not line.name.startswith("Stream"):  # derived lines (XLA Ops, Steps) repeat them
                        continue
                    for event in line.events:
                        if not event.name.startswith(("Memcpy", "Memset")):
                            count += 1
                            total_ns += event.duration_ns
    if not count:
        return {"kernel_floor_ms": None, "kernels_per_step": None, "kernel_note": "no kernel events in the trace"}
    return {"kernel_floor_ms": total_ns / 1e6 / steps, "kernels_per_step": count / steps}


class Cell(EngineEpochs):
    """One training configuration through jaxtrain's engine, as a bench/_harness.py peer."""

    def __init__(self, dataset, batch: int, precision: str, k, data: str, hidden=RECIPE_HIDDEN,
                 optimizer: str = "sgd"):
        self.dataset, self.batch, self.precision, self.k, self.data = dataset, batch, precision, k, data
        self.hidden, self.optimizer = hidden, optimizer
        self.name = self.label = f"b{batch}-{precision}-K{k}-{data}"
        self.items_per_run = len(dataset.train)
        self.epoch = 0

    def setup(self) -> None:
        from jaxtrain import load_config
        from jaxtrain.engine.plan import make_plan
        from jaxtrain.runs.trained import make_model
        from jaxtrain.training.setup import setup
        from jaxtrain.training.context import RunContext
        from jaxtrain.util.events import Console, JsonlWriter
        cfg = load_config({"model": {"hidden_sizes": list(self.hidden)}, "data": {"batch_size": self.batch},
                           "optimizer": {"name": self.optimizer, "learning_rate": 0.01},
                           "train": {"epochs": 1000, "precision": self.precision, "steps_per_call": self.k,
                                     "on_device_fraction": 0.5 if self.data == "device" else 0.0},
                           "parallel": {"data_axis_size": 1}, "logging": {"progress": "none"}})
        ctx = RunContext(console=Console("none"), events=JsonlWriter(None))
        self.run = setup(cfg, make_model(cfg, self.dataset), self.dataset, ctx, plan=make_plan(cfg, self.dataset))
        self.run.engine.prepare(self.run.state)


    def report(self, result) -> dict:
        from jaxtrain.training.accounting import Perf
        row = {"case": self.name, "batch": self.batch, "precision": self.precision, "data": self.data,
               "k_setting": str(self.k), "status": result.status, "reason": result.reason}
        if result.status != "ok":
            return row
        engine = self.run.engine
        step_ms = 1e3 * statistics.median(result.seconds) / engine.steps
        meter = Perf(engine.flops_per_step, list(self.run.mesh.devices.flat), self.precision)
        row.update(k=engine.k, step_time_ms=step_ms, examples_per_sec=result.median,
                   compiles=engine.compiles, flops_per_step=meter.flops, **meter.rates(step_ms))
        return row


def measure_cells(cells: list[Cell], repeats: int, floors: bool = True) -> list[dict]:
    from _harness import measure
    results = measure(cells, repeats=repeats, warmup=1, log=log)
    rows = []
    for cell, result in zip(cells, results):
        row = cell.report(result)
        if floors and result.status == "ok" and cell.data == "device" and row["k"] == cell.run.engine.steps:
            try:
                row.update(kernel_floor(lambda: (cell.run_epoch(), cell.sync()), cell.run.engine.steps))
            except Exception as exc:  # noqa: BLE001 - a failed trace must not lose the timings
                row["kernel_note"] = f"trace failed: {type(exc).__name__}: {exc}"
        rows.append(row)
    return rows


# ---------------------------------------------------------------- cases


def case_grid(sizes: Sizes, ctx: dict) -> list[dict]:
    ds = ctx["dataset"]()
    cells = [Cell(ds, b, p, k, data) for b in sizes.batches for p in ("float32", "bfloat16")
             for k in (1, "auto", "epoch") for data in ("device", "stream")]
    return measure_cells(cells, sizes.repeats)


def flags_worker(sizes: Sizes, unroll: int) -> list[dict]:
    """In a process started with the variant's XLA_FLAGS: the recipe's device cells."""
    if unroll > 1:  # jaxtrain's runners call jax.lax.scan: unroll every scan of this process
        import functools

        import jax
        jax.lax.scan = functools.partial(jax.lax.scan, unroll=unroll)
    ds = in_memory_dataset(sizes)
    cells = [Cell(ds, b, "float32", k, "device") for b in sizes.flag_batches for k in (1, "epoch")]
    # the FLOPs are one step's however the scan is unrolled (Engine.flops_per_step counts a
    # one-step call); dividing a K-step call's count here, after its rate had reached the peak
    # cache, left a CPU 'measured again' at several times its real rate (issue 28)
    return measure_cells(cells, sizes.repeats)


def case_flags(sizes: Sizes, ctx: dict) -> list[dict]:
    rows = []
    for variant, (flags, unroll) in FLAG_VARIANTS.items():
        env = dict(os.environ, XLA_FLAGS=" ".join(filter(None, [os.environ.get("XLA_FLAGS", ""), flags])))
        cmd = [sys.executable, __file__, "--flags-worker", str(unroll)] + (["--smoke"] if ctx["smoke"] else [])
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            rows.append({"case": variant, "status": "failed", "xla_flags": flags,
                         "reason": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no output"})
            continue
        for row in json.loads(proc.stdout.strip().splitlines()[-1]):
            rows.append({**row, "case": f"{variant}: {row['case']}", "xla_flags": flags, "unroll": unroll})
    return rows


class TorchLoop:
    """The recipe's MLP in PyTorch on the same device, data resident there, batches by index."""

    def __init__(self, dataset, compiled: bool, batch: int = 100):
        self.dataset, self.compiled, self.batch = dataset, compiled, batch
        self.name = self.label = "torch.compile" if compiled else "torch eager"
        self.items_per_run = len(dataset.train)

    def setup(self) -> None:
        import torch
        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        sizes = (784, *RECIPE_HIDDEN)
        layers = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
        self.model = torch.nn.Sequential(*layers, torch.nn.Linear(sizes[-1], 10)).to(self.device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01)
        self.x = torch.as_tensor(self.dataset.train.x, device=self.device)
        self.y = torch.as_tensor(self.dataset.train.y, device=self.device).long()
        loss_fn = torch.nn.CrossEntropyLoss()

        def step(xb, yb):
            self.opt.zero_grad(set_to_none=True)
            loss = loss_fn(self.model(xb), yb)
            loss.backward()
            self.opt.step()
            return loss
        self.step = torch.compile(step) if self.compiled else step
        self.steps = len(self.x) // self.batch  # full batches only: one compiled shape

    def run_epoch(self) -> None:
        order = self.torch.randperm(len(self.x), device=self.device)
        for i in range(self.steps):
            idx = order[i * self.batch:(i + 1) * self.batch]
            self.step(self.x[idx], self.y[idx])

    def sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def report(self, result, flops_per_example: float | None, peak: float | None) -> dict:
        row = {"case": self.name, "batch": self.batch, "precision": "float32", "status": result.status,
               "reason": result.reason}
        if result.status == "ok":
            step_ms = 1e3 * statistics.median(result.seconds) / self.steps
            tflops = flops_per_example * self.batch / step_ms / 1e9 if flops_per_example else None
            row.update(step_time_ms=step_ms, examples_per_sec=self.steps * self.batch / statistics.median(result.seconds),
                       tflops_per_sec=tflops, mfu=tflops / peak if tflops and peak else None)
        return row


def case_torch(sizes: Sizes, ctx: dict) -> list[dict]:
    from _harness import measure
    try:
        import torch  # noqa: F401
    except ImportError:
        return [{"case": "torch", "status": "skipped", "reason": "torch is not installed"}]
    ds = ctx["dataset"]()
    jaxtrain_cell = Cell(ds, sizes.flag_batches[0] if ctx["smoke"] else 100, "float32", "auto", "device")
    torch_batch = jaxtrain_cell.batch
    peers = [jaxtrain_cell, TorchLoop(ds, False, torch_batch), TorchLoop(ds, True, torch_batch)]
    results = measure(peers, repeats=sizes.repeats, warmup=1, log=log)
    rows = [jaxtrain_cell.report(results[0])]
    rows[0]["case"] = f"jaxtrain {rows[0]['case']}"
    fpe = rows[0]["flops_per_step"] / torch_batch if rows[0].get("flops_per_step") else None
    peak = rows[0]["tflops_per_sec"] / rows[0]["mfu"] if rows[0].get("mfu") else None
    rows += [p.report(r, fpe, peak) for p, r in zip(peers[1:], results[1:])]
    return rows


def run_cli(args: list[str], workdir: Path) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "jaxtrain", *args, "--workdir", str(workdir), "--set", "logging.progress=none"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=BENCH_DIR.parent)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return wall, json.loads((workdir / "summary.json").read_text())


def case_e2e(sizes: Sizes, ctx: dict) -> list[dict]:
    extra = ["--set", f"train.epochs={sizes.e2e_epochs}"] if sizes.e2e_epochs else []
    args = ["train", "mnist_mlp_tuned", "--set", "data.source=idx", "--set", f"data.path={ctx['idx_dir']()}",
            *extra]
    rows = []
    for i, label in enumerate(("warm-up (fills the compilation cache)", "measured")):
        wall, summary = run_cli(args, ctx["tmp"] / f"e2e{i}")
        parts = summary["time"]["breakdown"]
        perf = summary["perf"]
        rows.append({"case": f"mnist_mlp_tuned, {label}", "status": "ok", "wall_s": wall,
                     "train_share": parts["train"] / wall, "breakdown_s": parts,
                     "test_accuracy": summary["test"].get("accuracy"),
                     **{k: perf[k] for k in ("step_time_ms", "mfu", "tflops_per_sec", "flops_per_step")}})
    return rows


def case_sweep(sizes: Sizes, ctx: dict) -> list[dict]:
    from jaxtrain import load_config
    from jaxtrain.runs.api import train
    from jaxtrain.runs.lanes import train_lanes
    from jaxtrain.util.events import Console
    base = {"data.source": "idx", "data.path": str(ctx["idx_dir"]()), "train.epochs": sizes.sweep_epochs,
            "checkpoint.enabled": False, "logging.progress": "none", "train.steps_per_call": "epoch"}
    rates = np.logspace(-4, -1, sizes.sweep_points)
    cfgs = [load_config("mnist_mlp", {**base, "optimizer.learning_rate": float(lr)}) for lr in rates]
    t0 = time.perf_counter()
    summaries = train_lanes(cfgs, [ctx["tmp"] / f"sweep{i}" for i in range(len(cfgs))], console=Console("none"))
    vector_wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = train(load_config("mnist_mlp", base), workdir=ctx["tmp"] / "sweep_single")
    single_wall = time.perf_counter() - t0
    perf = single["perf"]
    vec_step_ms = summaries[0]["perf"]["step_time_ms"]   # one step of all the models (the run clock's)
    vec_tflops = len(cfgs) * perf["flops_per_step"] / vec_step_ms / 1e9 if perf["flops_per_step"] else None
    best = max(summaries, key=lambda s: s["test"].get("accuracy", 0.0))
    return [
        {"case": f"{len(cfgs)} learning rates, vectorized", "status": "ok", "wall_s": vector_wall,
         "step_time_ms": vec_step_ms, "tflops_per_sec": vec_tflops,
         "mfu": vec_tflops / perf["peak_tflops"] if vec_tflops and perf["peak_tflops"] else None,
         "best_test_accuracy": best["test"].get("accuracy"), "note": "step = one step of all the models"},
        {"case": f"{len(cfgs)} sequential runs (estimated: one run x {len(cfgs)})", "status": "ok",
         "wall_s": single_wall * len(cfgs), "one_run_wall_s": single_wall,
         "step_time_ms": perf["step_time_ms"], "tflops_per_sec": perf["tflops_per_sec"], "mfu": perf["mfu"],
         "speedup_of_vectorized": single_wall * len(cfgs) / vector_wall},
    ]


# ---------------------------------------------------------------- report


def fmt(value, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


def markdown(env: dict, sections: dict[str, list[dict]]) -> str:
    lines = [f"# gpu_suite: {env['device_kind']} x{env['device_count']} ({env['platform']}), {env['date']}", "",
             f"`{env['command']}`; jax {env['jax']}, torch {env['torch']}; {env['wall_s']:.0f} s in all.", ""]
    for name, rows in sections.items():
        lines += [f"## {name}", "", "| case | status | K | step ms | kernel floor ms | kernels/step | "
                  "TFLOP/s | MFU | other |", "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
        for r in rows:
            other = {k: r[k] for k in ("wall_s", "train_share", "test_accuracy", "best_test_accuracy",
                                       "speedup_of_vectorized", "compiles", "reason") if r.get(k) not in (None, "")}
            lines.append(f"| {r['case']} | {r['status']} | {r.get('k', '-')} | {fmt(r.get('step_time_ms'), '.4g')} | "
                         f"{fmt(r.get('kernel_floor_ms'), '.4g')} | {fmt(r.get('kernels_per_step'), '.3g')} | "
                         f"{fmt(r.get('tflops_per_sec'))} | "
                         f"{fmt(r.get('mfu') and 100 * r['mfu'], '.1f')}{'%' if r.get('mfu') else ''} | "
                         + ", ".join(f"{k}={fmt(v) if isinstance(v, float) else v}" for k, v in other.items())
                         + " |")
        lines.append("")
    return "\n".join(lines)


def environment(args, wall_s: float) -> dict:
    import jax
    try:
        import torch
        torch_version = torch.__version__
    except ImportError:
        torch_version = "not installed"
    device = jax.devices()[0]
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "device_kind": device.device_kind,
            "platform": device.platform, "device_count": jax.device_count(), "jax": jax.__version__,
            "torch": torch_version, "python": platform.python_version(), "cpus": os.cpu_count(),
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "smoke": args.smoke, "wall_s": wall_s,
            "command": "python bench/gpu_suite.py " + " ".join(sys.argv[1:])}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "gpu_suite")
    p.add_argument("--smoke", action="store_true", help="a tiny version of every case (minutes on a CPU)")
    p.add_argument("--mnist", type=Path, help="directory of the four MNIST IDX files (default: synthetic)")
    p.add_argument("--only", default=",".join(CASES), help=f"comma-separated cases of {', '.join(CASES)}")
    p.add_argument("--flags-worker", type=int, metavar="UNROLL", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    if args.flags_worker is not None:
        print(json.dumps(flags_worker(sizes, args.flags_worker), default=float))
        return 0
    only = [c for c in args.only.split(",") if c]
    unknown = [c for c in only if c not in CASES]
    if unknown:
        print(f"gpu_suite: unknown case {unknown[0]!r}; cases: {', '.join(CASES)}", file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    sections: dict[str, list[dict]] = {}
    md = ""
    with tempfile.TemporaryDirectory() as tmp:
        cache: dict = {}

        def once(key, make):
            return lambda: cache[key] if key in cache else cache.setdefault(key, make())
        ctx = {"smoke": args.smoke, "tmp": Path(tmp),
               "dataset": once("dataset", lambda: in_memory_dataset(sizes)),
               "idx_dir": once("idx", lambda: args.mnist or write_idx(Path(tmp) / "idx", sizes))}
        for name in only:
            log(f"== {name}")
            t0 = time.perf_counter()
            try:
                sections[name] = globals()[f"case_{name}"](sizes, ctx)
            except Exception as exc:  # noqa: BLE001 - one case must not sink the others
                sections[name] = [{"case": name, "status": "failed", "reason": f"{type(exc).__name__}: {exc}"}]
            log(f"== {name}: {time.perf_counter() - t0:.1f} s")
            md = write_results(args, sections, time.perf_counter() - t_start)  # after each case: a cut run keeps them
    print(md)
    return 0


def write_results(args, sections: dict, wall_s: float) -> str:
    env = environment(args, wall_s)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_suite.json").write_text(json.dumps({"environment": env, "cases": sections}, indent=2,
                                                        default=float) + "\n")
    md = markdown(env, sections)
    (args.out / "gpu_suite.md").write_text(md)
    return md


if __name__ == "__main__":
    sys.exit(main())
