"""Raw data sources: builtin (tables shipped in data/tables/), synthetic, idx, npz; csv and tfds live in their own modules.

Each loader returns a `RawData` (see raw.py); nothing here cleans or transforms.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.resources
import os
import struct
import zipfile
import zlib
from typing import Callable

import numpy as np

from jaxtrain.config.data import DataConfig
from jaxtrain.data.raw import Part, RawData, table_part
from jaxtrain.util.errors import DataError

# ---------------------------------------------------------------- builtin

_BUILTIN = {"digits": "classification", "iris": "classification", "wine": "classification",
            "breast_cancer": "classification", "diabetes": "regression"}


def builtin_table(name: str) -> dict[str, np.ndarray]:
    """x, y and feature_names of a built-in table: the package data that
    scripts/make_builtin_tables.py wrote from scikit-learn's copy."""
    with importlib.resources.files("jaxtrain.data").joinpath("tables", f"{name}.npz").open("rb") as f:
        with np.load(f, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}


def _builtin(cfg: DataConfig) -> RawData:
    if cfg.name not in _BUILTIN:
        raise DataError(f"data.name '{cfg.name}': no builtin data set of that name; "
                        f"valid: {', '.join(_BUILTIN)}")
    table = builtin_table(cfg.name)
    x, y = table["x"].astype(np.float64), table["y"].astype(np.float64)
    task = _BUILTIN[cfg.name]
    nc = int(y.max()) + 1 if task == "classification" else None
    extra = {"image_shape": [8, 8]} if cfg.name == "digits" else {}  # 64 columns are 8x8 pixels
    return RawData("table", {"all": table_part(y, x)}, name=cfg.name,
                   where=f"builtin data set '{cfg.name}'", task=task, num_classes=nc,
                   num_names=[str(n) for n in table["feature_names"]], extra=extra)


# ---------------------------------------------------------------- synthetic


def house_prices(n: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A clean synthetic house-price table from known coefficients plus noise.

    Features: floor area (m2), rooms, age (years), distance to centre (km).
    Returns (x, y, true_coefficients) where y = x @ coef + intercept + noise.
    """
    rng = np.random.default_rng(seed)
    area = rng.uniform(40, 250, n)
    rooms = np.clip(np.round(area / 30 + rng.normal(0, 0.8, n)), 1, 10)
    age = rng.uniform(0, 80, n)
    dist = rng.gamma(2.0, 4.0, n)
    x = np.stack([area, rooms, age, dist], axis=1)
    coef = np.array([2500.0, 8000.0, -600.0, -4000.0])
    y = x @ coef + 50000.0 + rng.normal(0, 15000.0, n)
    return x.astype(np.float32), y.astype(np.float32), coef


HOUSE_COLUMNS = ["area_m2", "rooms", "age_years", "distance_km"]


def messy_house_prices(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """`house_prices` with the mess of real data injected, seeded: ~2% exact duplicate
    rows, ~3% missing values in two columns, ~1% outliers (area typed 10x too large).
    Returns (x with NaN, y, counts of what was injected)."""
    x, y, _ = house_prices(n, seed)
    x, y = x.astype(np.float64), y.astype(np.float64)
    rng = np.random.default_rng([seed, 1])
    n_out, n_miss, n_dup = max(1, n // 100), max(1, 3 * n // 100), max(1, n // 50)
    out = rng.choice(n, n_out, replace=False)
    x[out, 0] *= 10.0
    for j in (2, 3):
        x[rng.choice(n, n_miss, replace=False), j] = np.nan
    dup = rng.choice(n, n_dup, replace=False)
    x, y = np.concatenate([x, x[dup]]), np.concatenate([y, y[dup]])
    perm = rng.permutation(len(y))
    return x[perm], y[perm], {"outliers": n_out, "missing_per_column": n_miss, "duplicates": n_dup}


def blobs(n: int, seed: int, num_classes: int = 3, dim: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs: class k centred at a seeded random point, unit variance."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 4.0, (num_classes, dim))
    y = rng.integers(0, num_classes, n)
    return centers[y] + rng.normal(0, 1.0, (n, dim)), y.astype(np.float64)


def _synthetic(cfg: DataConfig) -> RawData:
    n = cfg.synthetic_rows
    if cfg.name == "house_prices":
        x, y, injected = messy_house_prices(n, cfg.seed)
        return RawData("table", {"all": table_part(y, x)}, name="house_prices",
                       where="synthetic data set 'house_prices'", task="regression",
                       num_names=list(HOUSE_COLUMNS), target="price", extra={"injected": injected})
    if cfg.name == "blobs":
        k = cfg.num_classes or 3
        x, y = blobs(n, cfg.seed, k)
        return RawData("table", {"all": table_part(y, x)}, name="blobs", where="synthetic data set 'blobs'",
                       task="classification", num_classes=k, num_names=[f"x{j}" for j in range(x.shape[1])])
    raise DataError(f"data.name '{cfg.name}': no synthetic data set of that name; valid: house_prices, blobs")


# ---------------------------------------------------------------- idx (MNIST format)

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_NAMES = {"train_images": ("train-images",), "train_labels": ("train-labels",),
              "test_images": ("t10k-images", "test-images"), "test_labels": ("t10k-labels", "test-labels")}


def gunzip(path: str) -> bytes | np.ndarray:
    """The decompressed bytes of a gzip file, decoded straight into one buffer of the size its
    trailer states: `gzip.open(...).read()` gathers chunks and then joins them, touching twice
    the memory. Several members, or a trailer that does not match, take gzip's own path."""
    with open(path, "rb") as f:
        packed = f.read()
    size = int.from_bytes(packed[-4:], "little") if len(packed) >= 18 else 0
    out, pos = np.empty(size, np.uint8), 0
    d = zlib.decompressobj(wbits=31)
    data = packed
    while data and pos < size:
        chunk = d.decompress(data, min(1 << 20, size - pos))
        out[pos:pos + len(chunk)] = np.frombuffer(chunk, np.uint8)
        pos += len(chunk)
        data = d.unconsumed_tail
    if pos == size and not d.decompress(data) and d.eof and not d.unused_data:
        return out
    return gzip.decompress(packed)


def read_idx(path: str) -> np.ndarray:
    try:
        if path.endswith(".gz"):
            data = gunzip(path)
        else:
            with open(path, "rb") as f:
                data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read IDX file ({e}); re-download or decompress it") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or int(data[2]) not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number); expected MNIST-format files")
    ndim = int(data[3])
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"{path}: IDX header truncated")
    dims = struct.unpack(f">{ndim}I", bytes(data[4:4 + 4 * ndim]))
    dtype = np.dtype(_IDX_DTYPES[int(data[2])])
    need = int(np.prod(dims)) * dtype.itemsize
    body = len(data) - 4 - 4 * ndim
    if body != need:
        raise DataError(f"{path}: header says shape {tuple(dims)} ({need} bytes) but the file holds "
                        f"{body} bytes; the file is truncated or has the wrong header")
    values = np.frombuffer(data, dtype, offset=4 + 4 * ndim)      # a view: no copy of the body
    return values.reshape(dims).astype(dtype.newbyteorder("="), copy=False)


def _find_idx(directory: str, key: str) -> str:
    names = sorted(os.listdir(directory))
    for prefix in _IDX_NAMES[key]:
        for n in names:
            if n.startswith(prefix):
                return os.path.join(directory, n)
    raise DataError(f"{directory}: no {_IDX_NAMES[key][0]}-*-ubyte[.gz] file; an idx directory needs "
                    "train-images, train-labels, t10k-images and t10k-labels (gzip or raw)")


def _idx(cfg: DataConfig) -> RawData:
    directory = str(cfg.path)
    if not os.path.isdir(directory):
        raise DataError(f"{directory}: not a directory; set data.path to the directory holding the "
                        "four MNIST files")
    parts, shape = {}, None
    for split in ("train", "test"):
        ipath, lpath = _find_idx(directory, f"{split}_images"), _find_idx(directory, f"{split}_labels")
        images, labels = read_idx(ipath), read_idx(lpath)
        if images.ndim < 2:
            raise DataError(f"{ipath}: images must have at least 2 dimensions, got shape {images.shape}")
        if labels.ndim != 1:
            raise DataError(f"{lpath}: labels must be 1-D, got shape {labels.shape}")
        if len(images) != len(labels):
            raise DataError(f"{ipath}: {len(images)} images but {lpath} has {len(labels)} labels")
        if shape is not None and images.shape[1:] != shape:
            raise DataError(f"{ipath}: images of shape {images.shape[1:]}, but the training images are "
                            f"{shape}; every image must have the same shape")
        shape = images.shape[1:]
        parts[split] = Part(y=labels.astype(np.float64), rows=np.arange(len(labels)), x=images)
    nc = cfg.num_classes or 10
    return RawData("array", parts, name=os.path.basename(os.path.normpath(directory)), where=directory,
                   task="classification" if cfg.task == "auto" else cfg.task, num_classes=nc)


# ---------------------------------------------------------------- npz


def read_npz(path: str) -> dict[str, np.ndarray]:
    """Every array in an .npz file; a DataError for anything unreadable (truncated or corrupt too)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"{path}: cannot read as .npz ({e})") from None


def _npz(cfg: DataConfig) -> RawData:
    path = str(cfg.path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: .npz file not found; set data.path to an existing file")
    arrays = read_npz(path)
    splits = [s for s in ("train", "val", "test") if f"x_{s}" in arrays]
    if splits:
        if "train" not in splits:
            raise DataError(f"{path}: has split arrays {', '.join('x_' + s for s in splits)} but no x_train")
        pairs = {s: (f"x_{s}", f"y_{s}") for s in splits}
    elif "x" in arrays:
        pairs = {"all": ("x", "y")}
    else:
        raise DataError(f"{path}: needs arrays 'x' and 'y' (or x_train/y_train[/x_test/y_test]); "
                        f"found: {', '.join(arrays) or 'none'}")
    parts, shape, kind, first = {}, None, None, None
    for s, (xk, yk) in pairs.items():
        if yk not in arrays:
            raise DataError(f"{path}: array '{xk}' has no matching '{yk}'")
        x, y = arrays[xk], arrays[yk]
        if x.dtype.kind not in "biuf" or y.dtype.kind not in "biuf":
            raise DataError(f"{path}: arrays '{xk}'/'{yk}' must be numeric, got {x.dtype}/{y.dtype}")
        if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{path}: '{xk}' must be (n, features...) and '{yk}' (n,), got "
                            f"{x.shape} and {y.shape}")
        if shape is not None and x.shape[1:] != shape:
            raise DataError(f"{path}: '{xk}' has examples of shape {x.shape[1:]}, but '{first}' has "
                            f"{shape}; every example must have the same shape")
        shape, first = x.shape[1:], xk
        kind = "table" if x.ndim == 2 else "array"
        rows = np.arange(len(y))
        parts[s] = table_part(y.astype(np.float64), x, rows=rows) if kind == "table" \
            else Part(y=y.astype(np.float64), rows=rows, x=x)
    names = [f"x{j}" for j in range(shape[0])] if kind == "table" else []
    return RawData(kind, parts, name=os.path.basename(path).removesuffix(".npz"), where=path,
                   task=None if cfg.task == "auto" else cfg.task, num_classes=cfg.num_classes,
                   num_names=names)


def load_raw(cfg: DataConfig) -> RawData:
    if cfg.source == "csv":
        from jaxtrain.data.csvfile import load_csv
        raw = load_csv(cfg)
    elif cfg.source == "parquet":
        from jaxtrain.data.parquetfile import load_parquet
        raw = load_parquet(cfg)
    elif cfg.source == "tfds":
        from jaxtrain.data.tfds_source import load_tfds
        raw = load_tfds(cfg)
    elif cfg.source == "images":
        from jaxtrain.data.images import load_images
        raw = load_images(cfg)
    else:
        loaders = {"builtin": _builtin, "synthetic": _synthetic, "idx": _idx, "npz": _npz}
        raw = loaders[cfg.source](cfg)
    for split in ("val", "test"):
        path = getattr(cfg, f"{split}_path", None)
        if path is not None and cfg.source != "images":   # image folders: read with the training folder
            raw.parts[split], line_of = _split_file(cfg, raw, split, str(path))
            raw.split_files[split] = (str(path), line_of)
    check_not_empty(raw)
    return raw


def _split_file(cfg: DataConfig, raw: RawData, split: str, path: str
                ) -> tuple[Part, Callable[[int], int] | None]:
    """A split read from its own file (data.val_path / test_path) like the training file."""
    if cfg.source == "csv":
        from jaxtrain.data.csvfile import read_split_file
        return read_split_file(path, raw, cfg)
    if cfg.source == "parquet":
        from jaxtrain.data.parquetfile import read_split_file
        return read_split_file(path, raw, cfg), None
    own = _npz(dataclasses.replace(cfg, path=path))
    key = next((k for k in ("all", split) if k in own.parts), None)
    if key is None:
        raise DataError(f"{path}: needs arrays 'x' and 'y' (or x_{split}/y_{split}) for the {split} split")
    part = own.parts[key]
    want, got = _example_shape(raw), _example_shape(own)
    if own.kind != raw.kind or want != got:
        raise DataError(f"{path}: examples of shape {got}, but {raw.where} has {want}; "
                        "a split file needs the training file's shape")
    return part, None


def _example_shape(raw: RawData) -> tuple[int, ...]:
    part = next(iter(raw.parts.values()))
    return tuple((part.num if raw.kind == "table" else part.x).shape[1:])


def check_not_empty(raw: RawData) -> None:
    """Degenerate data (no rows, no feature columns, zero-size images) is a DataError, not a crash
    somewhere in preprocessing (tests/test_fuzz_inputs.py feeds such inputs)."""
    for split, part in raw.parts.items():
        if len(part) == 0:
            raise DataError(f"{raw.where}: the {split} data has no examples")
        width = (part.num.shape[1] + len(part.txt)) if raw.kind == "table" else int(np.prod(part.x.shape[1:]))
        if width == 0:
            what = "no feature columns besides the target" if raw.kind == "table" else \
                f"examples of size 0 (shape {part.x.shape[1:]})"
            raise DataError(f"{raw.where}: the {split} data has {what}")
