"""tensorflow-datasets source: any tfds name, images or text, with its own splits."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from jaxtrain.config.data import DataConfig
from jaxtrain.data.raw import Part, RawData
from jaxtrain.data.tfhelp import IDX_INSTEAD, IDX_NAMES, import_tfds
from jaxtrain.util.errors import DataError


def _builder(cfg: DataConfig):
    tfds = import_tfds()
    try:
        return tfds.builder(cfg.name, data_dir=cfg.data_dir)
    except Exception as e:  # noqa: BLE001  (tfds raises DatasetNotFoundError and friends)
        raise DataError(f"tfds data set '{cfg.name}': {str(e).splitlines()[0]}; "
                        "check data.name (see `tfds.list_builders()`)") from None


def _to_numpy(ds, key_x: str, key_y: str):
    import tensorflow_datasets as tfds
    xs, ys = [], []
    for batch in tfds.as_numpy(ds.batch(4096)):
        xs.append(batch[key_x])
        ys.append(batch[key_y])
    return np.concatenate(xs), np.concatenate(ys)


def load_tfds(cfg: DataConfig) -> RawData:
    b = _builder(cfg)
    where = f"tfds data set '{cfg.name}'" + (f" in {cfg.data_dir}" if cfg.data_dir else "")
    try:
        if cfg.download:
            b.download_and_prepare()
        known = list(b.info.splits.keys())
        # mock_data (tests) leaves info.splits empty: ask for train and test then.
        splits = [s for s in ("train", "validation", "test") if s in known] or ["train", "test"]
        ds_by_split = {s: b.as_dataset(split=s) for s in splits}
    except Exception as e:  # noqa: BLE001
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        idx = (*IDX_INSTEAD, ", or ") if cfg.name in IDX_NAMES else ()
        raise DataError(f"{where} is not prepared ({msg}); ", *idx, f"prepare it with `tfds build {cfg.name} "
                        f"--data_dir DIR` on a machine with network and copy DIR here, then set "
                        "data.data_dir=DIR (or set data.download=true where downloads work)") from None
    if "train" not in ds_by_split or "test" not in ds_by_split:
        raise DataError(f"{where}: needs 'train' and 'test' splits, has {', '.join(known)}")
    keys = b.info.supervised_keys
    if not keys or len(keys) != 2 or not all(isinstance(k, str) for k in keys):
        raise DataError(f"{where}: has no (input, label) supervised keys; use another source")
    kx, ky = keys
    label = b.info.features[ky]
    nc = getattr(label, "num_classes", None)
    feat = b.info.features[kx]
    is_text = False
    parts, shape = {}, None
    for s_name, s in (("train", "train"), ("val", "validation"), ("test", "test")):
        if s not in ds_by_split:
            continue
        x, y = _to_numpy(ds_by_split[s], kx, ky)
        if not is_text and x.dtype.kind in "OSU":
            is_text = True
        rows = np.arange(len(y))
        if is_text:
            txt = np.array([v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in x],
                           dtype=object)
            parts[s_name] = Part(y=y.astype(np.float64), rows=rows, num=np.zeros((len(y), 0)),
                                 txt={kx: pa.array(txt, pa.string())})
            continue
        if shape is not None and x.shape[1:] != shape:
            raise DataError(f"{where} split '{s}': examples of shape {x.shape[1:]}, but train has {shape}")
        expected = getattr(feat, "shape", None)
        if expected is not None and all(d is not None for d in expected) and tuple(x.shape[1:]) != tuple(expected):
            raise DataError(f"{where} split '{s}': images of shape {x.shape[1:]}, expected {tuple(expected)}")
        shape = x.shape[1:]
        parts[s_name] = Part(y=y.astype(np.float64), rows=rows, x=x)
    kind = "table" if is_text else "array"
    return RawData(kind, parts, name=cfg.name, where=where,
                   task="classification" if nc else ("regression" if cfg.task == "auto" else cfg.task),
                   num_classes=cfg.num_classes or nc, classes=None,
                   txt_kinds={kx: "text"} if is_text else {}, target=ky)
