"""Import TensorFlow lazily, quietly, and without accelerator memory."""

from __future__ import annotations

import os


def import_tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import tensorflow as tf
    try:
        tf.config.set_visible_devices([], "GPU")   # TF must never take accelerator memory
    except RuntimeError:                            # devices already initialized: already hidden
        pass
    return tf
