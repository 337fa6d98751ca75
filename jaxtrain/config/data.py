"""The `data` config section."""

from __future__ import annotations

import dataclasses
from typing import Literal

from jaxtrain.util.errors import check_key


@dataclasses.dataclass(frozen=True)
class CleanConfig:
    """Cleaning rules, applied to the training split only (evaluation rows are never dropped)."""
    # Remove exact duplicate rows (features and label) from the training split.
    duplicates: bool = True
    # Missing values: drop the training row, or impute a value fitted on the training split.
    missing: Literal["drop", "mean", "median", "most_frequent", "constant"] = "median"
    fill_value: float = 0.0          # for missing=constant, numeric columns
    fill_text: str = "missing"       # for missing=constant (and mean/median), text columns
    # Outliers in numeric columns, bounds fitted on the training split.
    outliers: Literal["none", "zscore", "iqr"] = "none"
    outlier_action: Literal["clip", "drop"] = "clip"
    zscore_threshold: float = 3.0
    iqr_k: float = 1.5
    # Labels out of range / not an integer (classification), or a missing target.
    invalid_labels: Literal["error", "drop"] = "error"
    # data.source=images: an unreadable or truncated training image, an error or a counted skip.
    invalid_images: Literal["error", "drop"] = "error"

    def validate(self, key: str) -> None:
        check_key(self.zscore_threshold > 0, f"{key}.zscore_threshold", "must be positive")
        check_key(self.iqr_k > 0, f"{key}.iqr_k", "must be positive")


TABLE_FILES = ("csv", "parquet")                 # sources with a header of named columns and a target
PATH_SOURCES = ("csv", "parquet", "npz", "idx", "images")  # sources that read data.path
SPLIT_FILE_SOURCES = ("csv", "parquet", "npz", "images")   # sources that take data.val_path / test_path


@dataclasses.dataclass(frozen=True)
class DataConfig:
    source: Literal["builtin", "synthetic", "tfds", "csv", "parquet", "idx", "npz", "images"] = "builtin"
    # builtin: digits | iris | wine | breast_cancer | diabetes;
    # synthetic: house_prices | blobs; tfds: any tensorflow-datasets name.
    name: str = "digits"
    # csv/npz file, idx directory; parquet: a .parquet (or Arrow IPC/Feather) file, a directory
    # or a glob of them, read in file-name order; images: a folder with one sub-folder per class.
    path: str | None = None
    # A separate validation / test file (same source and columns as data.path; images: a folder
    # with the same class sub-folders): that split is the whole file instead of a fraction.
    val_path: str | None = None
    test_path: str | None = None
    image_size: tuple[int, ...] | None = None   # images: [height, width] to resize to (default: as read)
    channels: Literal[1, 3] | None = None       # images: 1 gray, 3 RGB (default: 3 if any is colour)
    data_dir: str | None = None      # tfds data directory
    download: bool = False           # tfds: allowed to download and prepare
    target: str | None = None        # csv/parquet: the target column
    task: Literal["auto", "classification", "regression"] = "auto"
    num_classes: int | None = None   # classification: labels must lie in [0, num_classes)
    # csv: the field delimiter; auto sniffs ',', ';', tab or '|' from the header (and says which).
    delimiter: str = "auto"
    drop_columns: tuple[str, ...] = ()
    # csv column kinds; unnamed columns are inferred (numeric if parseable, else category
    # with at most `max_categories` values, else free text).
    columns: dict[str, Literal["numeric", "category", "text"]] = dataclasses.field(default_factory=dict)
    max_categories: int = 50
    hash_dim: int = 256              # hashed bag-of-words size for free-text columns
    log_columns: tuple[str, ...] = ()  # log1p before outlier rules and normalization
    standardize_target: bool = True  # regression: train on (y - mean) / std
    flatten: bool = True             # images to (n, h*w*c)
    clean: CleanConfig = CleanConfig()
    normalize: Literal["none", "zscore", "minmax", "minmax_sym"] = "zscore"
    # per feature, or one shift/scale for all features; auto: global for images.
    normalize_scope: Literal["auto", "feature", "global"] = "auto"
    backend: Literal["numpy", "tfdata", "grain"] = "numpy"
    workers: int = 0                 # grain: worker processes gathering batches (0: in this process)
    # csv/parquet: read the file in blocks (Parquet: record batches of its row groups), never
    # whole, and train from an on-disk cache (any backend).
    streaming: bool = False
    # where streaming writes its preprocessed cache (default: temp), and where decoded image
    # folders are kept for the next run (default: ~/.cache/jaxtrain/images)
    cache_dir: str | None = None
    # tf.data/grain map threads, image decoding threads; -1: AUTOTUNE (grain, images: one per core)
    num_parallel_calls: int = -1
    prefetch: int = 2                # batches prefetched by the backend
    synthetic_rows: int = 1000
    batch_size: int = 64
    eval_batch_size: int = 1000
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    seed: int = 0

    def validate(self, key: str) -> None:
        check_key(self.batch_size >= 1, f"{key}.batch_size", f"must be >= 1, got {self.batch_size}")
        check_key(self.eval_batch_size >= 1, f"{key}.eval_batch_size", "must be >= 1")
        check_key(0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1
               and self.val_fraction + self.test_fraction < 1,
               f"{key}.val_fraction/test_fraction", "must be in [0, 1) and sum below 1")
        check_key(self.hash_dim >= 1, f"{key}.hash_dim", "must be >= 1")
        check_key(self.max_categories >= 1, f"{key}.max_categories", "must be >= 1")
        check_key(self.num_classes is None or self.num_classes >= 2, f"{key}.num_classes", "must be >= 2")
        check_key(self.synthetic_rows >= 10, f"{key}.synthetic_rows", "must be >= 10")
        check_key(self.num_parallel_calls == -1 or self.num_parallel_calls >= 1,
               f"{key}.num_parallel_calls", "must be -1 (autotune) or >= 1")
        check_key(not self.streaming or self.source in TABLE_FILES, f"{key}.streaming",
                  "needs data.source=csv or parquet")
        check_key(self.delimiter == "auto" or len(self.delimiter) == 1, f"{key}.delimiter",
                  f"must be auto or one character, got {self.delimiter!r}")
        check_key(self.workers >= 0 and (self.workers == 0 or self.backend == "grain"), f"{key}.workers",
                  f"worker processes (got {self.workers}) need data.backend=grain and a count >= 0")
        check_key(self.source not in PATH_SOURCES or self.path is not None,
               f"{key}.path", f"data.source={self.source} needs data.path (a "
               + {"csv": "CSV file", "npz": ".npz file", "idx": "directory with the four MNIST files",
                  "parquet": "Parquet file, directory or glob",
                  "images": "folder with one sub-folder of images per class"}.get(self.source, "file") + ")")
        check_key(self.source not in TABLE_FILES or self.target is not None, f"{key}.target",
               f"data.source={self.source} needs data.target, the name of the target column")
        for split in ("val", "test"):
            given = getattr(self, f"{split}_path") is not None
            check_key(not given or self.source in SPLIT_FILE_SOURCES, f"{key}.{split}_path",
                      f"needs data.source {' or '.join(SPLIT_FILE_SOURCES)}, not {self.source}")
        self._validate_images(key)

    def _validate_images(self, key: str) -> None:
        check_key(self.image_size is None or (len(self.image_size) == 2 and min(self.image_size) >= 1),
                  f"{key}.image_size", f"must be [height, width], both >= 1, got {self.image_size}")
        check_key(self.source != "images" or self.task != "regression", f"{key}.task",
                  "data.source=images is classification (one sub-folder per class)")
