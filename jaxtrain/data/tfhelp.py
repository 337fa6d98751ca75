"""Import TensorFlow lazily, quietly, and without accelerator memory."""

from __future__ import annotations

import os

from jaxtrain.config.data import DataConfig
from jaxtrain.util.errors import Arg, UserError
from jaxtrain.util.optional import require

# tfds data sets that are also published as the four MNIST-format IDX files (data.source=idx).
IDX_NAMES = ("mnist", "fashion_mnist", "kmnist")
IDX_INSTEAD = ("read its four IDX files instead with ", Arg("overrides", {"data.source": "idx", "data.path": "DIR"}))


def require_tf(cfg: DataConfig) -> None:
    """Import what `cfg` needs of TensorFlow now, before any data is read; one line if missing."""
    if cfg.source == "tfds":
        try:
            import_tfds()
        except UserError as e:  # MNIST and its kin need no TensorFlow: say so
            if cfg.name not in IDX_NAMES:
                raise
            raise UserError(*e.parts, "; or ", *IDX_INSTEAD) from None
    elif cfg.backend == "tfdata":
        import_tf("data.backend=tfdata")


def import_tf(feature: str = "the tf.data backend"):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    tf = require("tensorflow", "tf", feature)
    try:
        tf.config.set_visible_devices([], "GPU")   # TF must never take accelerator memory
    except RuntimeError:                            # devices already initialized: already hidden
        pass
    return tf


def import_tfds():
    import_tf("data.source=tfds")
    require("importlib_resources", "tf", "data.source=tfds")   # tfds 4.9 builds data sets with it
    return require("tensorflow_datasets", "tf", "data.source=tfds")
