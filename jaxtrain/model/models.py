"""Built-in models (Flax NNX) and the registry that builds them by name.

Parameters are always float32. `compute_dtype=bfloat16` runs the matmuls on
bf16 inputs with float32 accumulation and result (`preferred_element_type`):
on CPUs with AMX and on GPUs/TPUs that is the fast path, whereas a bf16 result
is slower than fp32 on CPU. Activations, loss and softmax stay in float32.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtrain.config.schema import ModelConfig
from jaxtrain.model.imported import build_imported
from jaxtrain.util.errors import ConfigError

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "silu": jax.nn.silu,
    "elu": jax.nn.elu,
}


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def mixed_dot(x: jax.Array, kernel: jax.Array, compute_dtype) -> jax.Array:
    """x @ kernel with both inputs cast to `compute_dtype`, accumulated and returned in fp32.

    The backward pass is written out because autodiff's is slow here: the transpose
    of a bf16 dot with an fp32 result multiplies the fp32 cotangent by the kernel
    upcast to fp32, so two of a layer's three matmuls ran in fp32. Below, the
    cotangent is cast to bf16 and all three are bf16 x bf16 -> fp32 dots, with
    fp32 gradients (tests/test_perf_precision.py checks the compiled HLO).
    """
    return _dot(x.astype(compute_dtype), kernel.astype(compute_dtype), ((1,), (0,)))


def _dot(a: jax.Array, b: jax.Array, contracting) -> jax.Array:
    return jax.lax.dot_general(a, b, (contracting, ((), ())), preferred_element_type=jnp.float32)


def transposed_copy(a: jax.Array) -> jax.Array:
    """a.T materialized row-major. XLA's CPU backend runs bf16 dots on its fast library
    only when the contraction is over the lhs's last dimension; it folds a plain
    transpose into the dot (contracting over the batch dimension) and then upcasts
    that dot to fp32. The barrier keeps the transpose a real copy: on a 2-core CPU it costs
    about a third of the bf16 dot it feeds, and the pair is still faster than the fp32 dot."""
    if jax.default_backend() != "cpu":
        return a.T
    return jax.lax.optimization_barrier(a.T.reshape(-1)).reshape(a.shape[1], a.shape[0])


def _mixed_dot_fwd(x, kernel, compute_dtype):
    xc, kc = x.astype(compute_dtype), kernel.astype(compute_dtype)
    # Residuals kept in bf16 (half the memory of fp32); the zero-size arrays carry the input dtypes.
    return (_dot(xc, kc, ((1,), (0,))),
            (xc, kc, jnp.zeros((0,), x.dtype), jnp.zeros((0,), kernel.dtype)))


def _mixed_dot_bwd(compute_dtype, residuals, g):
    xc, kc, x_like, kernel_like = residuals
    g = g.astype(compute_dtype)
    dx = _dot(g, kc, ((1,), (1,)))                      # (B, out) x (in, out) -> (B, in)
    dkernel = _dot(transposed_copy(xc), g, ((1,), (0,)))    # (in, B) x (B, out) -> (in, out)
    return dx.astype(x_like.dtype), dkernel.astype(kernel_like.dtype)


mixed_dot.defvjp(_mixed_dot_fwd, _mixed_dot_bwd)


class Dense(nnx.Module):
    """y = x @ kernel + bias, with the matmul in `compute_dtype` and fp32 accumulation."""

    def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs,
                 compute_dtype: jnp.dtype = jnp.float32,
                 kernel_init: Callable = nnx.initializers.lecun_normal()):
        self.kernel = nnx.Param(kernel_init(rngs.params(), (in_features, out_features), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32))
        self.compute_dtype = compute_dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel[...]
        if self.compute_dtype != jnp.float32:
            return mixed_dot(x, kernel, self.compute_dtype) + self.bias[...]
        return jnp.dot(x, kernel, preferred_element_type=jnp.float32) + self.bias[...]


class MLP(nnx.Module):
    """Flatten, then Dense-activation(-dropout) blocks and a linear head."""

    def __init__(self, in_features: int, hidden_sizes: tuple[int, ...], out_features: int, *,
                 rngs: nnx.Rngs, activation: str = "relu", dropout: float = 0.0,
                 compute_dtype: jnp.dtype = jnp.float32):
        sizes = (in_features, *hidden_sizes)
        self.layers = nnx.List([Dense(a, b, rngs=rngs, compute_dtype=compute_dtype)
                                for a, b in zip(sizes[:-1], sizes[1:])])
        self.dropouts = nnx.List([nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
                                  for _ in hidden_sizes])
        self.head = Dense(sizes[-1], out_features, rngs=rngs, compute_dtype=compute_dtype)
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
                 compute_dtype: jnp.dtype = jnp.float32):
        self.linear = Dense(in_features, out_features, rngs=rngs, compute_dtype=compute_dtype,
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
                 compute_dtype: jnp.dtype = jnp.float32):
        h, w, c = image_shape
        mixed = compute_dtype != jnp.float32  # bf16 inputs, fp32 accumulation and result, as Dense
        convs, norms = [], []
        for ch, k in zip(channels, kernel_sizes):
            # No bias before batch norm: it would be subtracted again, and its gradient, zero up to
            # rounding, is noise that Adam scales up to full-size steps.
            convs.append(nnx.Conv(c, ch, (k, k), padding="SAME", use_bias=not batch_norm, rngs=rngs,
                                  dtype=compute_dtype if mixed else None,
                                  preferred_element_type=jnp.float32 if mixed else None,
                                  conv_general_dilated=conv_for(jax.default_backend())))
            norms.append(nnx.BatchNorm(ch, rngs=rngs) if batch_norm else None)
            c, h, w = ch, h // 2, w // 2
        self.image_shape = tuple(image_shape)
        self.convs = nnx.List(convs)
        self.norms = nnx.List(norms)
        self.dense = MLP(h * w * c, hidden_sizes, out_features, rngs=rngs, activation=activation,
                         dropout=dropout, compute_dtype=compute_dtype)
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


def conv_for(backend: str) -> Callable:
    """The convolution the CNN's layers compute with: XLA's own, except on CPU, where a
    convolution inside the fused epoch's loop ran 21x slower than the same step written as
    shifted slices and one matmul (bench/cnn_conv.py)."""
    return shifted_matmul_conv if backend == "cpu" else jax.lax.conv_general_dilated


def shifted_matmul_conv(lhs: jax.Array, rhs: jax.Array, window_strides, padding, *, lhs_dilation=None,
                        rhs_dilation=None, dimension_numbers=None, feature_group_count: int = 1,
                        precision=None, preferred_element_type=None, out_sharding=None) -> jax.Array:
    """`lax.conv_general_dilated` for what the CNN asks (NHWC images, HWIO kernel, stride 1,
    'SAME' padding, no dilation or groups): the k*k shifted copies of the padded input side by
    side, times the kernel as one (k*k*C_in, C_out) matrix."""
    kh, kw, c_in, c_out = rhs.shape
    assert padding == "SAME" and tuple(window_strides) == (1, 1) and feature_group_count == 1
    assert all(d in (None, 1) for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
    n, h, w, _ = lhs.shape
    padded = jnp.pad(lhs, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
    shifted = jnp.concatenate([padded[:, i:i + h, j:j + w] for i in range(kh) for j in range(kw)], axis=-1)
    out = jnp.dot(shifted.reshape(n * h * w, kh * kw * c_in), rhs.reshape(kh * kw * c_in, c_out),
                  precision=precision, preferred_element_type=preferred_element_type)
    return out.reshape(n, h, w, c_out)


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max pooling, stride 2, an odd last row/column dropped (as 'VALID'). Written as a
    reshape and a max: its gradient is element-wise, where reduce_window's select-and-scatter
    made a whole MNIST CNN step 1.9x slower on CPU (measured, same values)."""
    n, h, w, c = x.shape
    x = x[:, :h // 2 * 2, :w // 2 * 2]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def cnn_image_shape(cfg: ModelConfig, feature_shape: tuple[int, ...],
                    image_shape: tuple[int, ...] | None) -> tuple[int, int, int]:
    """(H, W, C) of the images a CNN reads; refuses data without an image shape (tables)."""
    shape = tuple(image_shape or (feature_shape if len(feature_shape) in (2, 3) else ()))
    if len(shape) not in (2, 3) or math.prod(shape) != math.prod(feature_shape):
        raise ConfigError(f"config key 'model.name': cnn needs image data (IDX, tfds images, NPZ image "
                          f"arrays), but the examples are {math.prod(feature_shape)} features without an "
                          f"image shape; use model.name=mlp for tables")
    shape = shape if len(shape) == 3 else (*shape, 1)
    smallest = min(shape[:2])
    if smallest >> len(cfg.channels) < 1:
        raise ConfigError(f"config key 'model.channels': {len(cfg.channels)} convolution blocks halve the "
                          f"{shape[0]}x{shape[1]} images {len(cfg.channels)} times, to nothing; use at "
                          f"most {smallest.bit_length() - 1} entries")
    return shape


def build_model(cfg: ModelConfig, feature_shape: tuple[int, ...], out_features: int, *, seed: int,
                image_shape: tuple[int, ...] | None = None,
                compute_dtype: jnp.dtype = jnp.float32) -> nnx.Module:
    """The model `cfg` names, for examples of `feature_shape` (`image_shape`: the images'
    (H, W[, C]) when the data stage flattened them). Built-in models are initialised in one
    compiled call: eagerly, each initializer op compiles on its own (19 small compiles,
    seconds on 2 cores), and one call hits the persistent compilation cache as a whole. The
    values are the same. An imported factory runs eagerly, so its errors stay plain."""
    if cfg.imported:
        return build_imported(cfg, tuple(image_shape or feature_shape), tuple(feature_shape),
                              out_features, rngs=nnx.Rngs(params=seed, dropout=seed + 1))
    return nnx.jit(lambda: _construct(cfg, tuple(feature_shape), out_features, seed, compute_dtype,
                                      image_shape))()


def _construct(cfg: ModelConfig, feature_shape: tuple[int, ...], out_features: int, seed: int,
               compute_dtype: jnp.dtype, image_shape: tuple[int, ...] | None) -> nnx.Module:
    rngs = nnx.Rngs(params=seed, dropout=seed + 1)
    in_features = math.prod(feature_shape)
    if cfg.name == "mlp":
        return MLP(in_features, tuple(cfg.hidden_sizes), out_features, rngs=rngs,
                   activation=cfg.activation, dropout=cfg.dropout, compute_dtype=compute_dtype)
    if cfg.name == "linear":
        return LinearRegression(in_features, out_features, rngs=rngs, compute_dtype=compute_dtype)
    if cfg.name == "cnn":
        return CNN(cnn_image_shape(cfg, tuple(feature_shape), image_shape), tuple(cfg.channels),
                   tuple(cfg.kernel_sizes), tuple(cfg.hidden_sizes), out_features, rngs=rngs,
                   activation=cfg.activation, dropout=cfg.dropout, batch_norm=cfg.batch_norm,
                   compute_dtype=compute_dtype)
    raise ValueError(f"unknown model {cfg.name!r}")  # unreachable: the config validates names
