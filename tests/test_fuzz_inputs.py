"""Fuzzing: random configs and random or corrupt CSV, IDX and NPZ files against the CLI and the API.

The only acceptable outcomes are a finished run (exit 0) or a user error (exit 2 /
UserError): never an unhandled exception, never a hang. Bounded: few examples,
derandomized (the same examples every run), and a per-example alarm.
"""

import contextlib
import dataclasses
import gzip
import io
import os
import signal
import struct
import tempfile
import typing
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxtrain
from jaxtrain.cli import main as cli
from jaxtrain.config.schema import Config
from jaxtrain.util.errors import UserError

PER_EXAMPLE_S = 30
# FUZZ_EXAMPLES=500 for a longer hunt (then derandomize=False explores new examples each run).
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", 8))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 8, database=None,
                suppress_health_check=list(HealthCheck))
# Small and quick when valid: one epoch on one device, no checkpoints, no console.
BASE = {"train": {"epochs": 1, "steps_per_call": 8}, "parallel": {"data_axis_size": 1},
        "checkpoint": {"enabled": False}, "logging": {"progress": "none"}}


class Hang(Exception):
    pass


@contextlib.contextmanager
def alarm(seconds: int):
    def on_alarm(signum, frame):
        raise Hang(f"no result within {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_cli(args: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp, alarm(PER_EXAMPLE_S):
        return cli.main(["train", *args, "--workdir", str(Path(tmp) / "run")])


# ---------------------------------------------------------------- random configs


def _key_paths(cls, prefix=()) -> dict[tuple[str, ...], object]:
    """Every key of the config tree (nested sections included) and its type, from the dataclasses."""
    out = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)] or \
            ([tp] if dataclasses.is_dataclass(tp) else [])
        out[(*prefix, f.name)] = tp
        for sub in inner:
            out.update(_key_paths(sub, (*prefix, f.name)))
    return out


TYPES = _key_paths(Config)
KEYS = sorted(TYPES)


def plausible(tp) -> st.SearchStrategy:
    """Values of the key's own type (so that more fuzzed configs get as far as training)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType")):
        return st.one_of([plausible(a) for a in args])
    if origin in (tuple, list):
        return st.lists(plausible(args[0]), max_size=3)
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers(-1, 4)
    if tp is float:
        return st.floats(-0.5, 1.5)
    if tp is str:
        return st.sampled_from(["x", "", "val.loss"])
    return st.none()
# Keys whose large values make a *valid* run long (not an error): small values only.
COSTLY = {("train", "epochs"), ("data", "synthetic_rows"), ("model", "hidden_sizes"),
          ("train", "eval_every_epochs"), ("data", "hash_dim")}

small_ints = st.integers(-3, 6)
values = st.recursive(
    st.one_of(st.none(), st.booleans(), small_ints, st.sampled_from([0, 10**12, -(10**12)]),
              st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
              st.sampled_from(["auto", "epoch", "relu", "val.loss", "csv", "npz", "idx", "sgd",
                               "bfloat16", "skip_step", "minmax", "tfdata", "regression"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=4)
cheap_values = st.one_of(st.none(), st.booleans(), small_ints, st.text(max_size=4),
                         st.lists(small_ints, max_size=3))


@st.composite
def configs(draw):
    cfg = yaml.safe_load(yaml.safe_dump(BASE))
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.integers(0, 9)) == 0:
            path = tuple(draw(st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=3)))
        else:
            path = draw(st.sampled_from(KEYS))
        wild = cheap_values if path in COSTLY else values
        value = draw(wild if path not in TYPES or draw(st.booleans()) else plausible(TYPES[path]))
        node = cfg
        for k in path[:-1]:
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
        node[path[-1]] = value
    return cfg


@FUZZ
@given(cfg=configs())
def test_random_configs_through_the_cli(cfg):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.yaml"
        path.write_text(yaml.safe_dump(cfg))
        assert run_cli([str(path)]) in (0, 2)


@FUZZ
@given(cfg=configs())
def test_random_configs_through_the_api(cfg):
    with tempfile.TemporaryDirectory() as tmp, alarm(PER_EXAMPLE_S):
        try:
            summary = jaxtrain.train(cfg, workdir=Path(tmp) / "run")
        except UserError:
            return
        assert summary["status"] == "completed"


# ---------------------------------------------------------------- random and corrupt data files

cells = st.one_of(st.integers(-5, 5).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                  st.sampled_from(["", "nan", "NA", "inf", "a", "b", '"x,y"', '"', " ", "1e400", "-0"]),
                  st.text(alphabet=st.characters(codec="utf-8"), max_size=4))


@st.composite
def csv_texts(draw):
    width = draw(st.integers(1, 4))
    header = draw(st.lists(st.sampled_from(["y", "a", "b", "c", "", "y"]), min_size=width, max_size=width))
    rows = draw(st.lists(st.lists(cells, min_size=0, max_size=width + 1), max_size=30))
    text = "\n".join(",".join(r) for r in [header, *rows])
    if draw(st.booleans()):  # random bytes somewhere
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.text(max_size=10)) + text[cut:]
    return text


@FUZZ
@given(text=csv_texts(), task=st.sampled_from(["auto", "classification", "regression"]))
def test_random_csv_files(text, task):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.csv"
        path.write_bytes(text.encode("utf-8", errors="replace"))
        assert run_cli([*_sets(BASE), "--set", "data.source=csv", "--set", f"data.path={path}",
                        "--set", "data.target=y", "--set", f"data.task={task}"]) in (0, 2)


def _sets(cfg: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in cfg.items():
        if isinstance(v, dict):
            out += _sets(v, f"{prefix}{k}.")
        else:
            out += ["--set", f"{prefix}{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"]
    return out


def _idx_bytes(array: np.ndarray) -> bytes:
    codes = {np.uint8: 0x08, np.int32: 0x0C, np.float32: 0x0D}
    head = struct.pack(">HBB", 0, codes[array.dtype.type], array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return head + array.astype(array.dtype.newbyteorder(">")).tobytes()


IDX_NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte"]


@FUZZ
@given(n=st.integers(0, 12), side=st.integers(0, 4), labels_n=st.integers(0, 12),
       label_max=st.integers(0, 300), corrupt=st.sampled_from(["none", "truncate", "flip", "random", "gzip"]),
       which=st.integers(0, 3), data=st.data())
def test_random_and_corrupt_idx_files(n, side, labels_n, label_max, corrupt, which, data):
    rng = np.random.default_rng(n * 100 + side)
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for name in IDX_NAMES:
            if "images" in name:
                files[name] = _idx_bytes(rng.integers(0, 256, (n, side, side)).astype(np.uint8))
            else:
                files[name] = _idx_bytes(rng.integers(0, label_max + 1, labels_n).astype(np.uint8))
        name = IDX_NAMES[which]
        raw = files[name]
        if corrupt == "truncate":
            files[name] = raw[:data.draw(st.integers(0, len(raw)))]
        elif corrupt == "flip" and raw:
            i = data.draw(st.integers(0, len(raw) - 1))
            files[name] = raw[:i] + bytes([raw[i] ^ 0xFF]) + raw[i + 1:]
        elif corrupt == "random":
            files[name] = data.draw(st.binary(max_size=64))
        for fname, content in files.items():
            if corrupt == "gzip" and fname == name:
                (Path(tmp) / f"{fname}.gz").write_bytes(gzip.compress(content)[:-4])  # a cut-off archive
            else:
                (Path(tmp) / fname).write_bytes(content)
        assert run_cli([*_sets(BASE), "--set", "data.source=idx", "--set", f"data.path={tmp}"]) in (0, 2)


arrays = st.sampled_from(["float", "int", "nan", "inf", "str", "empty", "3d", "bool", "complex"])


def _array(kind: str, n: int, rng) -> np.ndarray:
    return {"float": lambda: rng.normal(size=(n, 3)), "int": lambda: rng.integers(0, 4, (n, 3)),
            "nan": lambda: np.full((n, 3), np.nan), "inf": lambda: np.full((n, 3), np.inf),
            "str": lambda: np.array([["a", "b", "c"]] * n), "empty": lambda: np.zeros((0, 3)),
            "3d": lambda: rng.normal(size=(n, 2, 2)), "bool": lambda: rng.random((n, 3)) > 0.5,
            "complex": lambda: np.ones((n, 3), complex)}[kind]()


@FUZZ
@given(xk=arrays, yk=arrays, n=st.integers(1, 40), keys=st.sampled_from(["xy", "splits", "nox", "other"]),
       corrupt=st.sampled_from(["none", "truncate", "random", "flip"]), data=st.data())
def test_random_and_corrupt_npz_files(xk, yk, n, keys, corrupt, data):
    rng = np.random.default_rng(n)
    x, y = _array(xk, n, rng), _array(yk, n, rng)
    y = y[:, 0] if y.ndim > 1 and data.draw(st.booleans()) else y
    named = {"xy": {"x": x, "y": y}, "splits": {"x_train": x, "y_train": y, "x_test": x[: n // 2],
                                                   "y_test": y[: n // 2]},
             "nox": {"y": y}, "other": {"features": x, "y": y}}[keys]
    buf = io.BytesIO()
    np.savez(buf, **named)
    raw = buf.getvalue()
    if corrupt == "truncate":
        raw = raw[:data.draw(st.integers(0, len(raw)))]
    elif corrupt == "random":
        raw = data.draw(st.binary(max_size=200))
    elif corrupt == "flip":
        i = data.draw(st.integers(0, len(raw) - 1))
        raw = raw[:i] + bytes([raw[i] ^ 0x5A]) + raw[i + 1:]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.npz"
        path.write_bytes(raw)
        assert run_cli([*_sets(BASE), "--set", "data.source=npz", "--set", f"data.path={path}"]) in (0, 2)


def test_the_alarm_catches_a_hang():
    """The bound itself must work, or a hang would pass unnoticed."""
    import time
    with pytest.raises(Hang):
        with alarm(1):
            time.sleep(5)
