"""Optional dependencies: imported where a feature needs them, refused in one line when missing.

`pip install .` brings what the default run needs; TensorFlow (tf.data, tfds), matplotlib
(reports, sweep charts) and tensorboardX (TensorBoard files) come with extras.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from jaxtrain.util.errors import UserError


def require(module: str, extra: str, feature: str) -> ModuleType:
    """`module`, imported; a UserError naming `feature` and `pip install 'jaxtrain[extra]'` if missing."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        missing = e.name or module
        raise UserError(f"{feature} needs {missing}, which is not installed: "
                        f"pip install 'jaxtrain[{extra}]'") from None
