"""jaxtrain against its peers on the classic MNIST MLP recipe, side by side in one run.

    python bench/compare.py [--mnist DIR] [--out FILE] [--repeats N] [--epochs E]
                            [--batch-size B] [--train-size N] [--peers a,b,...]

Workload (identical for every peer): an MLP 784-256-128-64-10 with ReLU, softmax
cross-entropy on integer labels, plain SGD with learning rate 0.01, batch 100,
a fresh shuffle every epoch, inputs scaled to [-1, 1].

Peers (one small class each, all with the `setup() / run_epoch() / sync()` shape of
`bench/_harness.py`):

1. `torch_recipe`  - the classic PyTorch recipe exactly: `nn.Sequential`,
   `CrossEntropyLoss`, `SGD(lr=0.01)`, `DataLoader(TensorDataset, batch_size=100,
   shuffle=True)` (default `num_workers=0`).
2. `torch_tight`   - the same model and optimizer over prebuilt tensors: one
   `randperm` gather per epoch, then contiguous slices; no DataLoader.
3. `keras_jax`     - Keras 3 on the JAX backend (`KERAS_BACKEND=jax`, set below before
   anything can import keras), the same model, `SGD(0.01)`,
   `SparseCategoricalCrossentropy(from_logits=True)`, no metrics, `model.fit(x, y,
   batch_size=100, epochs=E, shuffle=True, verbose=0)` with Keras' defaults
   otherwise (jit_compile on, steps_per_execution=1). One timed `fit` per repeat,
   after a warm-up `fit` that compiles.
4. `flax_nnx_docs` - the Flax NNX loop as the Flax MNIST tutorial writes it:
   `nnx.Optimizer(model, optax.sgd(0.01), wrt=nnx.Param)`, an `@nnx.jit` train_step
   called once per batch, batches sliced on the host from NumPy arrays. The
   tutorial's `nnx.MultiMetric` update is left out, since no other peer computes
   training metrics in its step.
5. `jaxtrain`      - `jaxtrain.train(config)` through the public API, with the
   config from `jaxtrain_config()`. Each repeat is one whole `train()` call; the
   sample is the summary's `train.examples_per_sec` (steady state, compilation
   excluded, as jaxtrain itself reports it), so this peer is *self-timed*; the
   wall time of the call (start-up and compilation included) is recorded too.
   If `jaxtrain.train` does not exist yet (ImportError/AttributeError) the peer
   is skipped with the reason printed. Its rate therefore leaves out what jaxtrain
   does once per run (loading, device upload, compile, final evaluation), which
   the other peers' wall-clock epochs also leave out or amortize in warm-up; the
   end-to-end rate of whole calls is reported next to it for the record.

Measurement choices (see `bench/_harness.py`):

- One process runs every peer; each is set up, then warmed up with one untimed run
  (compilation, lazy imports, allocator growth); then `--repeats` timed repeats
  (>= 5 for a result you quote), interleaved round-robin with a rotating start.
  Reported: the median examples/s over repeats; min/max and all samples in the JSON.
- One timed run = `--epochs` epochs over the whole training set (default 1), timed
  from the start of the epoch to the moment its last update is finished: JAX
  peers `jax.block_until_ready` their parameters, PyTorch on CPU is synchronous.
- Threads: PyTorch gets `torch.set_num_threads(<usable cores>)` (the CPU affinity
  mask when the OS exposes it, else `os.cpu_count()`), the same cores XLA's CPU
  client uses by default, so neither side is handicapped by its thread defaults.
- Data: MNIST from `--mnist DIR` (the four IDX `.gz` files, parsed here with
  numpy+gzip) or, without it, synthetic data of the same shape (60000/10000 x 784
  uint8 pixels, each 30% a fixed random per-class template and 70% noise, so the
  classes are learnable and accuracy means something). Every peer except jaxtrain gets the same float32 arrays scaled as
  x / 127.5 - 1; jaxtrain gets the raw pixels (the IDX directory itself, or an
  `.npz` written here) and scales them with its own `data.normalize: minmax_sym`.
- Noise: the 1-minute load average before and after the run is recorded; a busy
  machine slows every peer, PyTorch's spinning OpenMP threads by far the most
  (seen here: 30x slower epochs while another process used the cores).
- Test accuracy is measured once after the timing, for information only: the
  in-process peers have by then trained (1 + repeats) x epochs, jaxtrain `epochs`
  (each of its calls starts from scratch); `epochs_trained` records which.
- Ratios are `jaxtrain / peer` examples/s: above 1 means jaxtrain is faster.

Outputs: JSON (`--out`, default `bench/results/compare.json`), Markdown and a PNG
bar chart next to it with the same stem. Progress goes to stderr, the table to stdout.

Extra requirements (the `bench` extra): torch==2.13.0 (CPU wheel), keras>=3.15,
matplotlib; plus jax, flax, optax, numpy from jaxtrain itself.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Keras picks its backend at import time; set it before anything imports keras.
os.environ["KERAS_BACKEND"] = "jax"

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
# Benchmark the jaxtrain of this source tree, and find _harness when run as a script.
for _p in (str(REPO_ROOT), str(BENCH_DIR)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from _harness import Result, Skip, measure  # noqa: E402

HIDDEN = (256, 128, 64)
NUM_CLASSES = 10
LEARNING_RATE = 0.01
SEED = 0


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# ---------------------------------------------------------------- data


class Data:
    """Raw uint8 pixels (n, 784) and int labels, plus the [-1, 1] float32 view peers train on."""

    def __init__(self, x_train, y_train, x_test, y_test, name: str, mnist_dir: Path | None = None):
        self.raw = dict(x_train=x_train, y_train=y_train.astype(np.int32),
                        x_test=x_test, y_test=y_test.astype(np.int32))
        self.x_train = scale(x_train)
        self.y_train = self.raw["y_train"]
        self.x_test = scale(x_test)
        self.y_test = self.raw["y_test"]
        self.name = name
        self.mnist_dir = mnist_dir     # set only when the arrays are the whole IDX files

    @property
    def n_train(self) -> int:
        return len(self.x_train)


def scale(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float32) / 127.5 - 1.0).reshape(len(x), -1)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a NumPy array of its stored dtype."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic {raw[:4].hex()})")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    dtype, ndim = np.dtype(dtypes[raw[2]]), raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape}, file holds {data.size} values")
    return data.reshape(shape).astype(dtype.newbyteorder("="))


def _find(directory: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem, stem.replace("-idx", ".idx")):
        if (directory / name).exists():
            return directory / name
    raise FileNotFoundError(f"{directory}: no {stem}[.gz]")


def load_mnist(directory: Path) -> Data:
    parts = {key: read_idx(_find(directory, stem)) for key, stem in (
        ("x_train", "train-images-idx3-ubyte"), ("y_train", "train-labels-idx1-ubyte"),
        ("x_test", "t10k-images-idx3-ubyte"), ("y_test", "t10k-labels-idx1-ubyte"))}
    return Data(parts["x_train"].reshape(-1, 784), parts["y_train"],
                parts["x_test"].reshape(-1, 784), parts["y_test"], "mnist", directory)


def synthetic(n_train: int = 60000, n_test: int = 10000, seed: int = SEED) -> Data:
    """MNIST-shaped uint8 pixels: per class a fixed random template, 30% template + 70%
    uniform noise per example, so the classes are learnable but not from one pixel."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    templates = rng.uniform(0, 255, (NUM_CLASSES, 784)).astype(np.float32)
    y = rng.integers(0, NUM_CLASSES, n)
    x = 0.3 * templates[y] + 0.7 * rng.uniform(0, 255, (n, 784)).astype(np.float32)
    x = np.round(x).astype(np.uint8)
    return Data(x[:n_train], y[:n_train], x[n_train:], y[n_train:], "synthetic")


# ---------------------------------------------------------------- peers


class _PeerBase:
    name = "peer"
    label = "peer"

    def __init__(self, data: Data, batch_size: int, epochs: int):
        self.data, self.batch_size, self.epochs = data, batch_size, epochs
        self.items_per_run = data.n_train * epochs
        self.epochs_trained = 0

    def sync(self) -> None:
        pass

    def test_accuracy(self) -> float | None:
        return None


class TorchRecipe(_PeerBase):
    name = "torch_recipe"
    label = "PyTorch recipe (DataLoader)"

    def setup(self) -> None:
        import torch
        from torch import nn
        torch.set_num_threads(usable_cores())
        torch.manual_seed(SEED)
        self.torch = torch
        self.model = nn.Sequential(
            nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
            nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, NUM_CLASSES))
        self.loss_fn = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LEARNING_RATE)
        self.x = torch.from_numpy(self.data.x_train)
        self.y = torch.from_numpy(self.data.y_train.astype(np.int64))
        self.make_batches()

    def make_batches(self) -> None:
        from torch.utils.data import DataLoader, TensorDataset
        self.loader = DataLoader(TensorDataset(self.x, self.y), batch_size=self.batch_size,
                                 shuffle=True)

    def batches(self):
        return self.loader

    def run_epoch(self) -> None:
        model, loss_fn, opt = self.model, self.loss_fn, self.optimizer
        model.train()
        for _ in range(self.epochs):
            for xb, yb in self.batches():
                opt.zero_grad()
                loss = loss_fn(model(xb), yb)
                loss.backward()
                opt.step()
        self.epochs_trained += self.epochs

    def test_accuracy(self) -> float:
        torch = self.torch
        self.model.eval()
        with torch.no_grad():
            logits = self.model(torch.from_numpy(self.data.x_test))
        return float((logits.argmax(1).numpy() == self.data.y_test).mean())


class TorchTight(TorchRecipe):
    name = "torch_tight"
    label = "PyTorch tight loop (tensors)"

    def make_batches(self) -> None:
        pass

    def batches(self):
        torch, b = self.torch, self.batch_size
        perm = torch.randperm(len(self.x))
        xs, ys = self.x[perm], self.y[perm]
        return ((xs[i:i + b], ys[i:i + b]) for i in range(0, len(xs), b))


class KerasJax(_PeerBase):
    name = "keras_jax"
    label = "Keras 3 fit (JAX backend)"

    def setup(self) -> None:
        import keras
        if keras.backend.backend() != "jax":
            raise Skip(f"keras was imported with backend {keras.backend.backend()!r}, not 'jax'")
        # Seeded initializers rather than keras.utils.set_random_seed, which imports
        # TensorFlow (seconds, ~750 MB) only to seed it.
        np.random.seed(SEED)
        self.keras = keras

        def dense(i: int, units: int, activation: str | None = None):
            return keras.layers.Dense(
                units, activation=activation,
                kernel_initializer=keras.initializers.GlorotUniform(seed=SEED + i))

        self.model = keras.Sequential([
            keras.Input((784,)), dense(0, 256, "relu"), dense(1, 128, "relu"),
            dense(2, 64, "relu"), dense(3, NUM_CLASSES)])
        self.model.compile(optimizer=keras.optimizers.SGD(learning_rate=LEARNING_RATE),
                           loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    def run_epoch(self) -> None:
        self.model.fit(self.data.x_train, self.data.y_train, batch_size=self.batch_size,
                       epochs=self.epochs, shuffle=True, verbose=0)
        self.epochs_trained += self.epochs

    def sync(self) -> None:
        import jax
        jax.block_until_ready([v.value for v in self.model.trainable_variables])

    def test_accuracy(self) -> float:
        logits = self.model.predict(self.data.x_test, batch_size=1000, verbose=0)
        return float((np.argmax(logits, 1) == self.data.y_test).mean())


class FlaxNnxDocs(_PeerBase):
    name = "flax_nnx_docs"
    label = "Flax NNX docs loop (nnx.jit)"

    def setup(self) -> None:
        import jax
        import optax
        from flax import nnx

        class MLP(nnx.Module):
            def __init__(self, rngs: nnx.Rngs):
                self.linear1 = nnx.Linear(784, 256, rngs=rngs)
                self.linear2 = nnx.Linear(256, 128, rngs=rngs)
                self.linear3 = nnx.Linear(128, 64, rngs=rngs)
                self.linear4 = nnx.Linear(64, NUM_CLASSES, rngs=rngs)

            def __call__(self, x):
                x = nnx.relu(self.linear1(x))
                x = nnx.relu(self.linear2(x))
                x = nnx.relu(self.linear3(x))
                return self.linear4(x)

        def loss_fn(model, batch):
            logits = model(batch["image"])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
            return loss, logits

        @nnx.jit
        def train_step(model, optimizer, batch):
            grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
            (loss, logits), grads = grad_fn(model, batch)
            optimizer.update(model, grads)

        @nnx.jit
        def predict(model, x):
            return model(x).argmax(axis=1)

        self.jax, self.nnx = jax, nnx
        self.model = MLP(nnx.Rngs(SEED))
        self.optimizer = nnx.Optimizer(self.model, optax.sgd(LEARNING_RATE), wrt=nnx.Param)
        self.train_step, self.predict = train_step, predict
        self.rng = np.random.default_rng(SEED)

    def run_epoch(self) -> None:
        x, y, b = self.data.x_train, self.data.y_train, self.batch_size
        for _ in range(self.epochs):
            perm = self.rng.permutation(len(x))
            for i in range(0, len(x), b):
                idx = perm[i:i + b]
                self.train_step(self.model, self.optimizer, {"image": x[idx], "label": y[idx]})
        self.epochs_trained += self.epochs

    def sync(self) -> None:
        self.jax.block_until_ready(self.nnx.state(self.model))

    def test_accuracy(self) -> float:
        pred = np.asarray(self.predict(self.model, self.data.x_test))
        return float((pred == self.data.y_test).mean())


def jaxtrain_config(data_source: str, data_path: str, batch_size: int, epochs: int) -> dict:
    """The jaxtrain config of the comparison: the same MLP, SGD 0.01, batch, scaling."""
    return {
        "name": "compare_mnist_mlp",
        "data": {"source": data_source, "path": data_path, "batch_size": batch_size,
                 "normalize": "minmax_sym", "val_fraction": 0.0},
        "model": {"name": "mlp", "hidden_sizes": list(HIDDEN), "activation": "relu"},
        "optimizer": {"name": "sgd", "learning_rate": LEARNING_RATE},
        "train": {"epochs": epochs, "seed": SEED},
        "checkpoint": {"enabled": False},
        "logging": {"progress": "none"},
    }


def lookup(d: Any, dotted: str) -> Any:
    """d["a"]["b"] or d["a.b"] for "a.b"; None when absent."""
    if isinstance(d, dict) and dotted in d:
        return d[dotted]
    head, _, rest = dotted.partition(".")
    if rest and isinstance(d, dict) and isinstance(d.get(head), dict):
        return lookup(d[head], rest)
    return None


class Jaxtrain(_PeerBase):
    name = "jaxtrain"
    label = "jaxtrain.train"

    def setup(self) -> None:
        import inspect
        import jaxtrain
        self.train = jaxtrain.train             # AttributeError -> skipped until it exists
        self.tmp = tempfile.TemporaryDirectory(prefix="jaxtrain_compare_")
        tmp = Path(self.tmp.name)
        if self.data.mnist_dir is not None:
            source, path = "idx", str(self.data.mnist_dir)
        else:
            # Raw pixels as float32 (0..255): jaxtrain applies minmax_sym itself.
            path = str(tmp / "data.npz")
            np.savez(path, **{k: (v.astype(np.float32) if k.startswith("x") else v)
                              for k, v in self.data.raw.items()})
            source = "npz"
        self.config = jaxtrain_config(source, path, self.batch_size, self.epochs)
        if getattr(self, "overrides", None):
            from jaxtrain.config.schema import apply_overrides
            self.config = apply_overrides(self.config, self.overrides)
        self.has_workdir = "workdir" in inspect.signature(self.train).parameters
        self.summaries: list[dict] = []
        self.wall_s: list[float] = []

    def run_epoch(self) -> float:
        t0 = time.perf_counter()
        # A fresh work directory per call: jaxtrain refuses to overwrite a finished run.
        kwargs = ({"workdir": str(Path(self.tmp.name) / f"run{len(self.wall_s)}")}
                  if self.has_workdir else {})
        summary = self.train(self.config, **kwargs)
        self.wall_s.append(time.perf_counter() - t0)
        self.summaries.append(summary)
        eps = lookup(summary, "train.examples_per_sec")
        if eps is None:
            raise KeyError(f"summary has no train.examples_per_sec; keys: {sorted(summary)}")
        self.epochs_trained = self.epochs
        return float(eps)

    def test_accuracy(self) -> float | None:
        if not self.summaries:
            return None
        acc = lookup(self.summaries[-1], "test.accuracy")
        return None if acc is None else float(acc)

    def extra(self) -> dict:
        summaries = getattr(self, "summaries", None)
        s = summaries[-1] if summaries else {}
        walls = getattr(self, "wall_s", [])
        timed = walls[1:] or walls         # the first call paid for cold imports and caches
        return {"call_wall_s": walls,
                # Whole train() calls: data loading, upload, compile and evaluation included.
                "end_to_end_examples_per_sec":
                    self.items_per_run / float(np.median(timed)) if timed else None,
                "compile_s": lookup(s, "time.breakdown.compile"),
                "steps_per_call": lookup(s, "execution.steps_per_call"),
                "on_device_data": lookup(s, "execution.on_device_data"),
                "examples": lookup(s, "data"),
                "config": getattr(self, "config", None)}


PEERS = {cls.name: cls for cls in (TorchRecipe, TorchTight, KerasJax, FlaxNnxDocs, Jaxtrain)}


# ---------------------------------------------------------------- report


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def environment(data: Data, args: argparse.Namespace) -> dict:
    from importlib import metadata
    versions = {}
    for pkg in ("jax", "jaxlib", "flax", "optax", "keras", "torch", "numpy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    try:
        import jax
        devices = [str(d) for d in jax.devices()]
    except Exception:                   # noqa: BLE001
        devices = []
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "machine": platform.machine(), "processor": platform.processor() or None,
        "platform": platform.platform(), "python": platform.python_version(),
        "usable_cores": usable_cores(), "jax_devices": devices, "versions": versions,
        "loadavg_start": args.loadavg_start, "loadavg_end": _loadavg(),
        "data": data.name, "n_train": data.n_train, "n_test": len(data.x_test),
        "batch_size": args.batch_size, "epochs_per_repeat": args.epochs,
        "repeats": args.repeats, "warmup": args.warmup, "learning_rate": LEARNING_RATE,
        "model": f"784-{'-'.join(map(str, HIDDEN))}-{NUM_CLASSES} relu",
    }


def with_ratios(results: list[Result]) -> list[dict]:
    rows = [r.as_dict() for r in results]
    ref = next((r["median"] for r in rows if r["name"] == "jaxtrain" and r["median"]), None)
    for r in rows:
        r["jaxtrain_speedup"] = (ref / r["median"]) if ref and r["median"] else None
    return rows


def _fmt(v: float | None, spec: str, none: str = "-") -> str:
    return none if v is None else format(v, spec)


def markdown(env: dict, rows: list[dict]) -> str:
    lines = [
        "# jaxtrain vs peers: MNIST MLP training throughput", "",
        f"`{env['command']}` - {env['date']}", "",
        f"Workload: MLP {env['model']}, softmax cross-entropy, SGD lr {env['learning_rate']}, "
        f"batch {env['batch_size']}, {env['data']} ({env['n_train']} train examples). "
        f"Median of {env['repeats']} interleaved repeats of {env['epochs_per_repeat']} epoch(s) "
        f"after {env['warmup']} warm-up; {env['usable_cores']} cores, {env['platform']}.", "",
        "| peer | examples/s (median) | min - max | jaxtrain speedup | test acc | epochs trained |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['label']} | {r['status']} | | | | |")
            continue
        acc = r["extra"].get("test_accuracy")
        lines.append(
            f"| {r['label']}{' (self-timed)' if r['self_timed'] else ''} "
            f"| {r['median']:,.0f} | {r['min']:,.0f} - {r['max']:,.0f} "
            f"| {_fmt(r['jaxtrain_speedup'], '.2f')}x | {_fmt(acc and 100 * acc, '.2f')}"
            f"{'%' if acc is not None else ''} | {r['extra'].get('epochs_trained', '-')} |")
    jt = next((r for r in rows if r["name"] == "jaxtrain" and r["status"] == "ok"), None)
    if jt and jt["extra"].get("end_to_end_examples_per_sec"):
        e = jt["extra"]
        lines += ["", f"jaxtrain is self-timed: its summary's steady-state `train.examples_per_sec` "
                  f"(compilation and start-up excluded; steps_per_call {e.get('steps_per_call')}, "
                  f"on-device data {e.get('on_device_data')}, compile {_fmt(e.get('compile_s'), '.2f')} s). "
                  f"Whole `train()` calls, with loading, compile and evaluation: "
                  f"{e['end_to_end_examples_per_sec']:,.0f} examples/s."]
    notes = [f"- {r['name']}: {r['status']} - {r['reason']}" for r in rows if r["status"] != "ok"]
    if notes:
        lines += ["", "Not measured:", *notes]
    lines += ["", "jaxtrain speedup = jaxtrain examples/s / peer examples/s (above 1: jaxtrain "
              "is faster). Versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()
                                                   if v), ""]
    return "\n".join(lines)


def bar_chart(env: dict, rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ok = [r for r in rows if r["status"] == "ok"]
    fig, ax = plt.subplots(figsize=(8, 0.6 * max(len(ok), 1) + 1.6))
    if ok:
        y = np.arange(len(ok))
        med = np.array([r["median"] for r in ok])
        err = np.array([[r["median"] - r["min"] for r in ok], [r["max"] - r["median"] for r in ok]])
        colors = ["tab:orange" if r["name"] == "jaxtrain" else "tab:blue" for r in ok]
        ax.barh(y, med, xerr=err, color=colors, capsize=3)
        ax.set_yticks(y, [r["label"] for r in ok])
        ax.invert_yaxis()
        for yi, r in zip(y, ok):
            s = f" {r['median']:,.0f}"
            if r["jaxtrain_speedup"] and r["name"] != "jaxtrain":
                s += f"  (jaxtrain {r['jaxtrain_speedup']:.2f}x)"
            ax.text(r["max"], yi, s, va="center", fontsize=8)
        ax.set_xlim(0, med.max() * 1.45 if med.size else 1)
    ax.set_xlabel("training examples/s (median; bars: min-max)")
    ax.set_title(f"MNIST MLP {env['model']}, batch {env['batch_size']}, {env['data']}, "
                 f"{env['usable_cores']} cores", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mnist", type=Path, help="directory with the MNIST IDX (.gz) files; "
                   "default: synthetic data of the same shape")
    p.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "compare.json",
                   help="JSON output; .md and .png are written next to it (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per peer (default 5)")
    p.add_argument("--epochs", type=int, default=1, help="epochs per timed repeat (default 1)")
    p.add_argument("--batch-size", type=int, default=100, help="default 100")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per peer first (default 1)")
    p.add_argument("--train-size", type=int, help="use only the first N training examples "
                   "(smoke tests; not for quoted results)")
    p.add_argument("--jaxtrain-set", dest="jaxtrain_set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of jaxtrain's config, e.g. train.steps_per_call=epoch (repeatable)")
    p.add_argument("--peers", default=",".join(PEERS),
                   help="comma-separated subset of: %(default)s")
    args = p.parse_args(argv)
    args.peers = [s.strip() for s in args.peers.split(",") if s.strip()]
    unknown = [s for s in args.peers if s not in PEERS]
    if unknown:
        p.error(f"unknown peer(s) {unknown}; valid: {', '.join(PEERS)}")
    if args.repeats < 1 or args.epochs < 1 or args.batch_size < 1 or args.warmup < 0:
        p.error("--repeats, --epochs and --batch-size must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.repeats < 5:
        print(f"note: {args.repeats} repeats; quote only results with >= 5", file=sys.stderr)
    args.loadavg_start = _loadavg()
    if args.loadavg_start and args.loadavg_start[0] > 0.5:
        print(f"note: 1-min load average {args.loadavg_start[0]} before start: other processes "
              f"share these cores and will add noise (PyTorch's OpenMP threads suffer most)",
              file=sys.stderr)
    data = load_mnist(args.mnist) if args.mnist else synthetic()
    if args.train_size:
        data = Data(data.raw["x_train"][:args.train_size], data.raw["y_train"][:args.train_size],
                    data.raw["x_test"], data.raw["y_test"], f"{data.name}[:{args.train_size}]")
    print(f"data: {data.name}, {data.n_train} train / {len(data.x_test)} test; "
          f"peers: {', '.join(args.peers)}", file=sys.stderr)

    peers = [PEERS[name](data, args.batch_size, args.epochs) for name in args.peers]
    for peer in peers:
        if isinstance(peer, Jaxtrain):
            peer.overrides = list(args.jaxtrain_set)
    results = measure(peers, repeats=args.repeats, warmup=args.warmup)
    for peer, res in zip(peers, results):
        res.extra["epochs_trained"] = peer.epochs_trained
        if res.status == "ok":
            try:
                res.extra["test_accuracy"] = peer.test_accuracy()
            except Exception as exc:    # noqa: BLE001 - accuracy is informative only
                res.extra["test_accuracy_error"] = f"{type(exc).__name__}: {exc}"
        if hasattr(peer, "extra"):
            res.extra.update(peer.extra())

    env = environment(data, args)
    rows = with_ratios(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": env, "results": rows}, indent=2, default=str))
    md = markdown(env, rows)
    args.out.with_suffix(".md").write_text(md)
    bar_chart(env, rows, args.out.with_suffix(".png"))
    print(md)
    print(f"wrote {args.out}, {args.out.with_suffix('.md')}, {args.out.with_suffix('.png')}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
