"""The backend kernels behind one seam: what the built-in models compute with on each platform.

XLA's CPU backend is slow on two things the models do, so on CPU they are written out:

- convolution (`im2col`): a convolution inside the fused epoch's loop ran 21x slower than
  the same step written as shifted slices and one matmul (bench/cnn_conv.py);
- the bf16 matmul's backward (`mixed_dot`): its weight gradient reads a transposed copy
  materialized row-major (`transposed_copy`), so the dot runs on the fast bf16 library.

`Kernels.for_platform(platform, conv_impl)` picks them from the platform of the devices the
run trains on (`model.conv_impl: auto` takes im2col on CPU and XLA's convolution elsewhere);
the choice is made once, when the model is built, never inside traced code. Max pooling is
the same everywhere (`max_pool_2x2`: reshape and max).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp

CONV_IMPLS = ("auto", "xla", "im2col")


def resolve_conv_impl(setting: str, platform: str) -> str:
    """'xla' or 'im2col' for `model.conv_impl` on `platform` ('auto': im2col on CPU only)."""
    if setting not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {', '.join(CONV_IMPLS)}, got {setting!r}")
    if setting != "auto":
        return setting
    return "im2col" if platform == "cpu" else "xla"


@dataclasses.dataclass(frozen=True)
class Kernels:
    """The kernels of one platform. Hashable: the models keep it as static graph data."""
    conv_impl: str = "xla"           # 'xla' or 'im2col'
    copy_transpose: bool = False     # the bf16 backward's transposed copy (CPU)

    @classmethod
    def for_platform(cls, platform: str, conv_impl: str = "auto") -> "Kernels":
        return cls(conv_impl=resolve_conv_impl(conv_impl, platform), copy_transpose=platform == "cpu")

    @property
    def conv(self) -> Callable:
        """A `lax.conv_general_dilated` for nnx.Conv's `conv_general_dilated`."""
        return shifted_matmul_conv if self.conv_impl == "im2col" else jax.lax.conv_general_dilated

    def dot(self, x: jax.Array, kernel: jax.Array, compute_dtype) -> jax.Array:
        """x @ kernel in `compute_dtype` with fp32 accumulation and result (`mixed_dot`)."""
        return mixed_dot(x, kernel, compute_dtype, self.copy_transpose)


# ---------------------------------------------------------------- convolution


def shifted_matmul_conv(lhs: jax.Array, rhs: jax.Array, window_strides, padding, *, lhs_dilation=None,
                        rhs_dilation=None, dimension_numbers=None, feature_group_count: int = 1,
                        precision=None, preferred_element_type=None, out_sharding=None) -> jax.Array:
    """`lax.conv_general_dilated` for what the CNN asks (NHWC images, HWIO kernel, stride 1,
    'SAME' padding, no dilation or groups): the k*k shifted copies of the padded input side by
    side, times the kernel as one (k*k*C_in, C_out) matrix."""
    _check_conv_arguments(padding, window_strides, feature_group_count, lhs_dilation, rhs_dilation,
                          dimension_numbers)
    kh, kw, c_in, c_out = rhs.shape
    n, h, w, _ = lhs.shape
    padded = jnp.pad(lhs, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
    shifted = jnp.concatenate([padded[:, i:i + h, j:j + w] for i in range(kh) for j in range(kw)], axis=-1)
    out = jnp.dot(shifted.reshape(n * h * w, kh * kw * c_in), rhs.reshape(kh * kw * c_in, c_out),
                  precision=precision, preferred_element_type=preferred_element_type)
    return out.reshape(n, h, w, c_out)


def _check_conv_arguments(padding, window_strides, feature_group_count, lhs_dilation, rhs_dilation,
                          dimension_numbers) -> None:
    """Refuse what shifted_matmul_conv does not compute (use model.conv_impl: xla for it)."""
    problems = []
    if padding != "SAME":
        problems.append(f"padding {padding!r} (only 'SAME')")
    if tuple(window_strides) != (1, 1):
        problems.append(f"strides {tuple(window_strides)} (only (1, 1))")
    if feature_group_count != 1:
        problems.append(f"feature_group_count {feature_group_count} (only 1)")
    if any(d not in (None, 1) for d in (*(lhs_dilation or ()), *(rhs_dilation or ()))):
        problems.append("dilation (none supported)")
    if dimension_numbers is not None and not _nhwc_hwio(dimension_numbers):
        problems.append(f"dimension_numbers {dimension_numbers} (only NHWC images, HWIO kernels)")
    if problems:
        raise ValueError("the im2col convolution does not support " + ", ".join(problems)
                         + "; set model.conv_impl: xla")


def _nhwc_hwio(dimension_numbers) -> bool:
    if isinstance(dimension_numbers, jax.lax.ConvDimensionNumbers):
        return dimension_numbers == jax.lax.conv_dimension_numbers(
            (1, 1, 1, 1), (1, 1, 1, 1), ("NHWC", "HWIO", "NHWC"))
    return tuple(dimension_numbers) == ("NHWC", "HWIO", "NHWC")


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max pooling, stride 2, an odd last row/column dropped (as 'VALID'). Written as a
    reshape and a max: its gradient is element-wise, where reduce_window's select-and-scatter
    made a whole MNIST CNN step 1.9x slower on CPU (measured, same values)."""
    n, h, w, c = x.shape
    x = x[:, :h // 2 * 2, :w // 2 * 2]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


# ---------------------------------------------------------------- the bf16 matmul


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def mixed_dot(x: jax.Array, kernel: jax.Array, compute_dtype, copy_transpose: bool = False) -> jax.Array:
    """x @ kernel with both inputs cast to `compute_dtype`, accumulated and returned in fp32.

    The backward pass is written out because autodiff's is slow here: the transpose
    of a bf16 dot with an fp32 result multiplies the fp32 cotangent by the kernel
    upcast to fp32, so two of a layer's three matmuls ran in fp32. Below, the
    cotangent is cast to bf16 and all three are bf16 x bf16 -> fp32 dots, with
    fp32 gradients (tests/test_perf_precision.py checks the compiled HLO).
    `copy_transpose` (CPU): see `transposed_copy`.
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
    return jax.lax.optimization_barrier(a.T.reshape(-1)).reshape(a.shape[1], a.shape[0])


def _mixed_dot_fwd(x, kernel, compute_dtype, copy_transpose):
    xc, kc = x.astype(compute_dtype), kernel.astype(compute_dtype)
    # Residuals kept in bf16 (half the memory of fp32); the zero-size arrays carry the input dtypes.
    return (_dot(xc, kc, ((1,), (0,))),
            (xc, kc, jnp.zeros((0,), x.dtype), jnp.zeros((0,), kernel.dtype)))


def _mixed_dot_bwd(compute_dtype, copy_transpose, residuals, g):
    xc, kc, x_like, kernel_like = residuals
    g = g.astype(compute_dtype)
    dx = _dot(g, kc, ((1,), (1,)))                      # (B, out) x (in, out) -> (B, in)
    xt = transposed_copy(xc) if copy_transpose else xc.T
    dkernel = _dot(xt, g, ((1,), (0,)))                 # (in, B) x (B, out) -> (in, out)
    return dx.astype(x_like.dtype), dkernel.astype(kernel_like.dtype)


mixed_dot.defvjp(_mixed_dot_fwd, _mixed_dot_bwd)
