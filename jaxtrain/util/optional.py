"""Optional dependencies: imported where a feature needs them, refused in one line when missing.

`pip install .` brings what the default run needs; TensorFlow (tf.data, tfds), matplotlib
(reports, sweep charts), tensorboardX (TensorBoard files), jax2onnx (ONNX export), MLflow and
W&B (trackers) come with extras.
"""

from __future__ import annotations

import importlib
import importlib.util
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


def require_installed(module: str, extra: str, feature: str) -> None:
    """Like `require`, without importing `module` yet (a tracker imports it off the main thread)."""
    if importlib.util.find_spec(module) is None:
        raise UserError(f"{feature} needs {module}, which is not installed: pip install 'jaxtrain[{extra}]'")
