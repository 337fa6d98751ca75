"""The fitted preprocessing statistics: one typed, versioned record, saved as stats.json.

Fitted once on the training split (in memory or streamed) and read back by `eval`,
`predict` and `--resume`; `encoder.py` is the one code that applies it. Version 1 files
(untyped dicts written before this record) hold the same keys and are read as version 2.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jaxtrain.util.errors import DataError

STATS_VERSION = 2
READABLE_VERSIONS = (1, 2)


@dataclasses.dataclass
class Normalizer:
    """(x - shift) / scale on the first `width` features, per feature or one global pair."""
    kind: str = "none"                 # none | zscore | minmax | minmax_sym
    scope: str = "feature"             # feature | global
    shift: list[float] = dataclasses.field(default_factory=list)
    scale: list[float] = dataclasses.field(default_factory=list)
    width: int = 0

    def arrays(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(shift, scale) as float32 vectors of `width` (or one value, global), None for no-op."""
        if self.kind == "none" or self.width == 0:
            return None
        shift, scale = np.asarray(self.shift, np.float32), np.asarray(self.scale, np.float32)
        if self.scope != "global" and len(shift) != self.width:
            raise DataError(f"saved statistics normalize {len(shift)} features but the data has {self.width}; "
                            "the data does not match the run that saved stats.json")
        return shift, scale


@dataclasses.dataclass
class OutlierRule:
    method: str = "none"               # none | zscore | iqr
    action: str = "clip"               # clip | drop
    bounds: list[list[float]] | None = None   # [low, high] per numeric column


@dataclasses.dataclass
class FeatureStats:
    task: str
    num_classes: int | None = None
    classes: list[str] | None = None   # text class names, in label order
    numeric_columns: list[str] = dataclasses.field(default_factory=list)
    categories: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    text_columns: list[str] = dataclasses.field(default_factory=list)
    hash_dim: int = 256
    fills: dict[str, Any] = dataclasses.field(default_factory=dict)   # numeric: float, text: str
    log_columns: list[str] = dataclasses.field(default_factory=list)
    outliers: OutlierRule = dataclasses.field(default_factory=OutlierRule)
    normalize: Normalizer = dataclasses.field(default_factory=Normalizer)
    target_mean: float = 0.0           # regression: y_original = y * target_scale + target_mean
    target_scale: float = 1.0
    feature_names: list[str] = dataclasses.field(default_factory=list)
    feature_shape: list[int] = dataclasses.field(default_factory=list)
    image_shape: list[int] | None = None
    # model.numeric_embedding=piecewise_linear: per numeric column, the increasing bin edges of
    # its normalized values, quantiles of the training split (bins.py); None when not fitted.
    bin_edges: list[list[float]] | None = None
    bins: int = 0                      # the model.bins the edges were fitted for
    version: int = STATS_VERSION

    @property
    def is_table(self) -> bool:
        return bool(self.numeric_columns or self.categories or self.text_columns)

    def feature_columns(self) -> list[str]:
        """The raw columns a table model was trained on, in training order."""
        return list(self.numeric_columns) + list(self.categories) + list(self.text_columns)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> "FeatureStats":
        """The record from stats.json's contents; a DataError naming `where` if it is not one."""
        version = d.get("version") if isinstance(d, dict) else None
        if version not in READABLE_VERSIONS:
            raise DataError(f"{where}: preprocessing statistics of version {version!r}; this jaxtrain reads "
                            f"versions {', '.join(map(str, READABLE_VERSIONS))}: retrain the run")
        d = dict(d, version=STATS_VERSION)
        target = d.pop("target", None) or {}       # version 1 kept the target scaling in a dict
        d.setdefault("target_mean", target.get("mean", 0.0))
        d.setdefault("target_scale", target.get("scale", 1.0))
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            d["outliers"] = OutlierRule(**(d.get("outliers") or {}))
            d["normalize"] = Normalizer(**d.get("normalize", {}))
            return cls(**{k: v for k, v in d.items() if k in known})
        except TypeError as e:
            raise DataError(f"{where}: not a valid statistics record ({e}); retrain the run") from None
