"""jaxtrain: a fast JAX trainer (Flax NNX + Optax) from the command line or Python.

The names below are imported on first use, so that importing one layer (say, a grain
worker process unpickling a data-stage function) does not import JAX and every layer.
"""

# First: the clock module notes jaxtrain's first moment, where a run's `startup` begins.
from jaxtrain.util import clock as _clock  # noqa: F401

import importlib  # noqa: E402

from jaxtrain.parallel.xla_flags import set_cpu_rendezvous_timeouts

set_cpu_rendezvous_timeouts()  # before JAX's backend starts (see parallel/xla_flags.py)

_WHERE = {"train": "jaxtrain.runs.api", "resume": "jaxtrain.runs.api", "evaluate": "jaxtrain.runs.api",
          "search": "jaxtrain.runs.search",
          "load_config": "jaxtrain.config.schema", "Config": "jaxtrain.config.schema",
          "UserError": "jaxtrain.util.errors", "ConfigError": "jaxtrain.util.errors",
          "DataError": "jaxtrain.util.errors"}

__all__ = list(_WHERE)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'jaxtrain' has no attribute '{name}'")
    return getattr(importlib.import_module(_WHERE[name]), name)
