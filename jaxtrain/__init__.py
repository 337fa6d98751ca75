"""jaxtrain: a fast JAX trainer (Flax NNX + Optax) from the command line or Python."""

from jaxtrain.runs.api import evaluate, resume, train
from jaxtrain.config.schema import Config, load_config
from jaxtrain.util.errors import ConfigError, DataError, UserError

__all__ = ["train", "resume", "evaluate", "load_config", "Config", "UserError", "ConfigError", "DataError"]
__version__ = "0.1.0"
