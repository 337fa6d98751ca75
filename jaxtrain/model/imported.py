"""Your own model by import path: `model.name: "package.module:factory"`, `model.kwargs: {...}`.

The module is imported from the working directory or PYTHONPATH (or, for a run that
already started, from `model.import_root`, where it was found then), and the factory is
called as `factory(input_shape, out_features, *, rngs, **kwargs)`. `input_shape` is one
preprocessed example's shape before flattening (an image's (H, W[, C])); the module maps
a batch of that shape to (batch, out_features) logits or predictions. Every failure is one
line naming model.name.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtrain.config.schema import ModelConfig
from jaxtrain.util.errors import ConfigError


def _fail(cfg: ModelConfig, what: str) -> ConfigError:
    return ConfigError(f"config key 'model.name': '{cfg.name}': {what}")


def _import(cfg: ModelConfig, module_name: str):
    # The working directory counts as on the path, as for `python -m`; the saved root first.
    for entry in (os.getcwd(), cfg.import_root):
        if entry and Path(entry).is_dir() and entry not in sys.path:
            sys.path.insert(0 if entry == cfg.import_root else len(sys.path), entry)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise _fail(cfg, f"module '{e.name}' not found in the working directory or on PYTHONPATH"
                        + (f" (nor in {cfg.import_root})" if cfg.import_root else "")) from None
        raise _fail(cfg, f"importing '{module_name}' failed: {e}") from None
    except Exception as e:  # the user's module raised while being imported
        raise _fail(cfg, f"importing '{module_name}' failed: {type(e).__name__}: {e}") from None


def resolve_factory(cfg: ModelConfig) -> Callable[..., Any]:
    module_name, _, attr = cfg.name.partition(":")
    factory = getattr(_import(cfg, module_name), attr, None)
    if not callable(factory):
        raise _fail(cfg, f"module '{module_name}' has no callable '{attr}'")
    return factory


def import_root(cfg: ModelConfig) -> str | None:
    """The sys.path entry the model's module is imported from (saved as model.import_root)."""
    module_name = cfg.name.partition(":")[0]
    file = getattr(_import(cfg, module_name), "__file__", None)
    if not file:  # a namespace package: nothing to point at
        return None
    origin = Path(file).resolve()
    if origin.name == "__init__.py":
        origin = origin.parent
    return str(origin.parents[module_name.count(".")])


class ReshapeInput(nnx.Module):
    """Feeds the imported module batches of `input_shape`, whatever shape the data stage gives."""

    def __init__(self, net: nnx.Module, input_shape: tuple[int, ...]):
        self.net = net
        self.input_shape = tuple(input_shape)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.net(x.reshape(x.shape[0], *self.input_shape))


def build_imported(cfg: ModelConfig, input_shape: tuple[int, ...], feature_shape: tuple[int, ...],
                   out_features: int, *, rngs: nnx.Rngs) -> nnx.Module:
    factory = resolve_factory(cfg)
    try:
        net = factory(input_shape, out_features, rngs=rngs, **cfg.kwargs)
    except Exception as e:
        raise _fail(cfg, f"the factory raised {type(e).__name__}: {e} (called with input_shape="
                    f"{input_shape}, out_features={out_features}, kwargs={dict(cfg.kwargs)})") from None
    if not isinstance(net, nnx.Module):
        raise _fail(cfg, f"the factory returned {type(net).__name__}, not an nnx.Module")
    model = ReshapeInput(net, input_shape)
    _check_output(cfg, model, feature_shape, out_features)
    return model


def _check_output(cfg: ModelConfig, model: nnx.Module, feature_shape: tuple[int, ...],
                  out_features: int) -> None:
    """The model maps a batch of 2 examples to (2, out_features), checked without computing."""
    graphdef, state = nnx.split(model)
    batch = jax.ShapeDtypeStruct((2, *feature_shape), jnp.float32)
    try:
        out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, batch)
    except Exception as e:
        raise _fail(cfg, f"calling the model on a batch of shape {(2, *model.input_shape)} raised "
                    f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if getattr(out, "shape", None) != (2, out_features):
        raise _fail(cfg, f"the model maps a batch of shape {(2, *model.input_shape)} to "
                    f"{getattr(out, 'shape', type(out).__name__)}; it must return (batch, {out_features}) "
                    f"({out_features} = the number of classes, or of regression targets)")
