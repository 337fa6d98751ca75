"""jaxtrain: a fast JAX trainer (Flax NNX + Optax) from the command line or Python."""

from jaxtrain.api import evaluate, train
from jaxtrain.resume import resume
from jaxtrain.config import Config, load_config
from jaxtrain.errors import ConfigError, DataError, UserError

__all__ = ["train", "resume", "evaluate", "load_config", "Config", "UserError", "ConfigError", "DataError"]
__version__ = "0.1.0"
