"""Built-in models (Flax NNX) and the registry that builds them by name.

Parameters are always float32. `compute_dtype=bfloat16` runs the matmuls on
bf16 inputs with float32 accumulation and result (`preferred_element_type`):
on CPUs with AMX and on GPUs/TPUs that is the fast path, whereas a bf16 result
is slower than fp32 on CPU. Activations, loss and softmax stay in float32.

The models compute with the `Kernels` they are given (kernels.py: the convolution and the
bf16 matmul's backward of the platform they train on); the default is XLA's own, right
on every platform. `build_model` picks them for the run's devices.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtrain.config.schema import ModelConfig
from jaxtrain.model import images
from jaxtrain.model.activations import ACTIVATIONS
from jaxtrain.model.imported import build_imported
from jaxtrain.model.kernels import Kernels, max_pool_2x2
from jaxtrain.model.tabular import EnsembleMLP, TableLayout, TabularMLP
from jaxtrain.util.errors import ConfigError

class Dense(nnx.Module):
    """y = x @ kernel + bias, with the matmul in `compute_dtype` and fp32 accumulation."""

    def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs,
                 compute_dtype: jnp.dtype = jnp.float32,
                 kernel_init: Callable = nnx.initializers.lecun_normal(), kernels: Kernels = Kernels()):
        self.kernel = nnx.Param(kernel_init(rngs.params(), (in_features, out_features), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32))
        self.compute_dtype = compute_dtype
        self.kernels = kernels

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel[...]
        if self.compute_dtype != jnp.float32:
            return self.kernels.dot(x, kernel, self.compute_dtype) + self.bias[...]
        return jnp.dot(x, kernel, preferred_element_type=jnp.float32) + self.bias[...]


class MLP(nnx.Module):
    """Flatten, then Dense-activation(-dropout) blocks and a linear head."""

    def __init__(self, in_features: int, hidden_sizes: tuple[int, ...], out_features: int, *,
                 rngs: nnx.Rngs, activation: str = "relu", dropout: float = 0.0,
                 compute_dtype: jnp.dtype = jnp.float32, kernels: Kernels = Kernels()):
        sizes = (in_features, *hidden_sizes)
        self.layers = nnx.List([Dense(a, b, rngs=rngs, compute_dtype=compute_dtype, kernels=kernels)
                                for a, b in zip(sizes[:-1], sizes[1:])])
        self.dropouts = nnx.List([nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
                                  for _ in hidden_sizes])
        self.head = Dense(sizes[-1], out_features, rngs=rngs, compute_dtype=compute_dtype, kernels=kernels)
        self.activation = activation

    def __call__(self, x: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        x = x.reshape(x.shape[0], -1)
        for layer, drop in zip(self.layers, self.dropouts):
            x = act(layer(x))
            if drop is not None:
                x = drop(x)
        return self.head(x)


class LinearRegression(nnx.Module):
    """y = x @ w + b (one output per target), initialised at zero like the closed form's start."""

    def __init__(self, in_features: int, out_features: int = 1, *, rngs: nnx.Rngs,
                 compute_dtype: jnp.dtype = jnp.float32, kernels: Kernels = Kernels()):
        self.linear = Dense(in_features, out_features, rngs=rngs, compute_dtype=compute_dtype, kernels=kernels,
                            kernel_init=nnx.initializers.zeros_init())

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear(x.reshape(x.shape[0], -1))


class CNN(nnx.Module):
    """Per entry of `channels`: a 'SAME' convolution, batch norm (optional), the activation and
    2x2 max pooling; then the dense layers of an MLP (with its dropout) and a linear head.
    Inputs arrive flat or as images and are reshaped to `image_shape` (H, W, C)."""

    def __init__(self, image_shape: tuple[int, int, int], channels: tuple[int, ...],
                 kernel_sizes: tuple[int, ...], hidden_sizes: tuple[int, ...], out_features: int, *,
                 rngs: nnx.Rngs, activation: str = "relu", dropout: float = 0.0, batch_norm: bool = False,
                 compute_dtype: jnp.dtype = jnp.float32, kernels: Kernels = Kernels()):
        h, w, c = image_shape
        mixed = compute_dtype != jnp.float32  # bf16 inputs, fp32 accumulation and result, as Dense
        convs, norms = [], []
        for ch, k in zip(channels, kernel_sizes):
            # No bias before batch norm: it would be subtracted again, and its gradient, zero up to
            # rounding, is noise that Adam scales up to full-size steps.
            convs.append(nnx.Conv(c, ch, (k, k), padding="SAME", use_bias=not batch_norm, rngs=rngs,
                                  dtype=compute_dtype if mixed else None,
                                  preferred_element_type=jnp.float32 if mixed else None,
                                  conv_general_dilated=kernels.conv))
            norms.append(nnx.BatchNorm(ch, rngs=rngs) if batch_norm else None)
            c, h, w = ch, h // 2, w // 2
        self.image_shape = tuple(image_shape)
        self.convs = nnx.List(convs)
        self.norms = nnx.List(norms)
        self.dense = MLP(h * w * c, hidden_sizes, out_features, rngs=rngs, activation=activation,
                         dropout=dropout, compute_dtype=compute_dtype, kernels=kernels)
        self.activation = activation

    def __call__(self, x: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        x = x.reshape(x.shape[0], *self.image_shape)
        for conv, norm in zip(self.convs, self.norms):
            x = conv(x)
            if norm is not None:
                x = norm(x)
            x = max_pool_2x2(act(x))
        return self.dense(x)


def cnn_image_shape(cfg: ModelConfig, feature_shape: tuple[int, ...],
                    image_shape: tuple[int, ...] | None) -> tuple[int, int, int]:
    """(H, W, C) of the images a CNN reads; refuses data without an image shape (tables)."""
    shape = images.image_shape(feature_shape, image_shape) or ()
    if len(shape) not in (2, 3) or math.prod(shape) != math.prod(feature_shape):
        raise ConfigError(f"config key 'model.name': cnn needs image data (IDX, tfds images, NPZ image "
                          f"arrays), but the examples are {math.prod(feature_shape)} features without an "
                          f"image shape; use model.name=mlp for tables")
    shape = images.with_channels(shape)
    smallest = min(shape[:2])
    if smallest >> len(cfg.channels) < 1:
        raise ConfigError(f"config key 'model.channels': {len(cfg.channels)} convolution blocks halve the "
                          f"{shape[0]}x{shape[1]} images {len(cfg.channels)} times, to nothing; use at "
                          f"most {smallest.bit_length() - 1} entries")
    return shape


def build_model(cfg: ModelConfig, feature_shape: tuple[int, ...], out_features: int, *, seed: int,
                image_shape: tuple[int, ...] | None = None, compute_dtype: jnp.dtype = jnp.float32,
                platform: str, layout: TableLayout | None = None, task: str = "classification") -> nnx.Module:
    """The model `cfg` names, for examples of `feature_shape` (`image_shape`: the images'
    (H, W[, C]) when the data stage flattened them), computing with the kernels of `platform`
    (the devices it trains on) and `model.conv_impl` (kernels.py). Built-in models are initialised in one
    compiled call: eagerly, each initializer op compiles on its own (19 small compiles,
    seconds on 2 cores), and one call hits the persistent compilation cache as a whole. The
    values are the same. An imported factory runs eagerly, so its errors stay plain.
    `layout` (a table's columns) and `task` shape the tabular mlp (model/tabular.py)."""
    if cfg.imported:
        return build_imported(cfg, tuple(image_shape or feature_shape), tuple(feature_shape),
                              out_features, rngs=nnx.Rngs(params=seed, dropout=seed + 1))
    kernels = Kernels.for_platform(platform, cfg.conv_impl)
    if cfg.tabular:
        check_tabular(cfg, layout)
        return nnx.jit(lambda: _construct_tabular(cfg, math.prod(feature_shape), out_features, seed, compute_dtype,
                                                  kernels, layout, task == "classification"))()
    return nnx.jit(lambda: _construct(cfg, tuple(feature_shape), out_features, seed, compute_dtype,
                                      image_shape, kernels))()


def _construct(cfg: ModelConfig, feature_shape: tuple[int, ...], out_features: int, seed: int,
               compute_dtype: jnp.dtype, image_shape: tuple[int, ...] | None, kernels: Kernels) -> nnx.Module:
    rngs = nnx.Rngs(params=seed, dropout=seed + 1)
    in_features = math.prod(feature_shape)
    common = {"rngs": rngs, "compute_dtype": compute_dtype, "kernels": kernels}
    if cfg.name == "mlp":
        return MLP(in_features, tuple(cfg.hidden_sizes), out_features, activation=cfg.activation,
                   dropout=cfg.dropout, **common)
    if cfg.name == "linear":
        return LinearRegression(in_features, out_features, **common)
    if cfg.name == "cnn":
        return CNN(cnn_image_shape(cfg, tuple(feature_shape), image_shape), tuple(cfg.channels),
                   tuple(cfg.kernel_sizes), tuple(cfg.hidden_sizes), out_features,
                   activation=cfg.activation, dropout=cfg.dropout, batch_norm=cfg.batch_norm, **common)
    raise ValueError(f"unknown model {cfg.name!r}")  # unreachable: the config validates names


def check_tabular(cfg: ModelConfig, layout: TableLayout | None) -> None:
    """Embeddings need a table's columns (and piecewise_linear its fitted edges)."""
    if layout is None and (cfg.numeric_embedding != "none" or cfg.category_embedding != "onehot"):
        key = "numeric_embedding" if cfg.numeric_embedding != "none" else "category_embedding"
        raise ConfigError(f"config key 'model.{key}': applies to tables (CSV or Parquet columns), and this data "
                          f"has none; leave it at its default for arrays and images")
    if cfg.numeric_embedding == "piecewise_linear" and layout.numeric and layout.bin_edges is None:
        raise ConfigError("config key 'model.numeric_embedding': piecewise_linear needs the bin edges fitted on "
                          "the training split, and the run's statistics have none; retrain the run")


def _construct_tabular(cfg: ModelConfig, in_features: int, out_features: int, seed: int,
                       compute_dtype: jnp.dtype, kernels: Kernels, layout: TableLayout | None,
                       classification: bool) -> nnx.Module:
    """The mlp with embeddings over `layout`'s columns and/or as an ensemble of `cfg.ensemble`
    members (member j initialised as the plain mlp of params seed `seed + j`)."""
    rngs = nnx.Rngs(params=seed, dropout=seed + 1)

    def backbone(width: int) -> nnx.Module:
        def member(j: int) -> MLP:
            member_rngs = rngs if cfg.ensemble == 1 else nnx.Rngs(params=seed + j, dropout=seed + 1)
            return MLP(width, tuple(cfg.hidden_sizes), out_features, activation=cfg.activation,
                       dropout=cfg.dropout if cfg.ensemble == 1 else 0.0, rngs=member_rngs,
                       compute_dtype=compute_dtype, kernels=kernels)
        if cfg.ensemble == 1:
            return member(0)
        return EnsembleMLP([member(j) for j in range(cfg.ensemble)], classification, dropout=cfg.dropout,
                           activation=cfg.activation, compute_dtype=compute_dtype, rngs=rngs, matmul=kernels)
    if layout is None:
        return backbone(in_features)
    return TabularMLP(cfg, layout, backbone, rngs=rngs)
