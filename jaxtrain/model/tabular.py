"""The mlp for tables: numeric and category embeddings in front, one MLP or an ensemble behind.

A table's features arrive as the encoder writes them: the normalized numeric columns first,
then one one-hot block per category column, then the hashed text (passed through). The
embeddings read those columns inside the model, so eval, predict, streaming and the ONNX
export (raw row in) need nothing beyond the encoder they already share:

- piecewise_linear: each numeric value -> T components from its column's bin edges
  b_0 < ... < b_T (training quantiles, stats.json): 1 for bins wholly below the value, 0 for
  bins above, (x - b_{t-1}) / (b_t - b_{t-1}) in its own bin; values outside [b_0, b_T]
  clip to all 0 / all 1. Columns with fewer edges are padded with components that stay 0.
  The edges are constants of the model (static data, not parameters): never trained.
- periodic: x -> [sin(2 pi c x), cos(2 pi c x)] with trainable frequencies c per column,
  then a per-column linear layer and ReLU.
- learned categories: the one-hot block times a table of vectors, plus a reserved vector
  for a row whose block is all zeros (a category not seen in training).

An ensemble (`model.ensemble` = k) holds k MLPs' parameters stacked on a leading member
axis and runs them as one batched program (TabM-mini: the embeddings are shared). In
training it returns every member's outputs (batch, k, out), and the loss is the mean of the
members' losses (engine/step.py); in evaluation (`model.eval()`) it returns the mean
prediction: the mean value for regression, and for classes log of the mean probability, so
that a softmax of the output is the mean of the members' probabilities.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtrain.model.activations import ACTIVATIONS
from jaxtrain.model.kernels import Kernels


@dataclasses.dataclass(frozen=True)
class TableLayout:
    """Where a table's columns sit in the feature vector (from the run's statistics)."""
    numeric: int                                   # numeric columns, first
    categories: tuple[int, ...] = ()               # one-hot width of each category column, next
    rest: int = 0                                  # hashed text, last (passed through)
    bin_edges: tuple[tuple[float, ...], ...] | None = None   # per numeric column (piecewise_linear)


def category_dim(n: int) -> int:
    """The learned embedding's width for a column of n categories."""
    return max(1, min(16, round(1.6 * n ** 0.56)))


def edge_arrays(edges: tuple[tuple[float, ...], ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(low, width, used), each (columns, T): bin t of column j spans [low, low + width);
    padding bins (used 0) have width 1 and are multiplied away."""
    t = max(len(e) - 1 for e in edges)
    low, width, used = np.zeros((len(edges), t), np.float32), np.ones((len(edges), t), np.float32), \
        np.zeros((len(edges), t), np.float32)
    for j, e in enumerate(edges):
        e = np.asarray(e, np.float32)
        low[j, :len(e) - 1], width[j, :len(e) - 1], used[j, :len(e) - 1] = e[:-1], np.diff(e), 1.0
    return low, width, used


def piecewise_linear(x: jax.Array, low: np.ndarray, width: np.ndarray, used: np.ndarray) -> jax.Array:
    """(batch, columns) -> (batch, columns, T) components."""
    return jnp.clip((x[:, :, None] - low) / width, 0.0, 1.0) * used


class PerColumnLinear(nnx.Module):
    """(batch, columns, d_in) -> (batch, columns, d_out): each column its own linear layer."""

    def __init__(self, columns: int, d_in: int, d_out: int, *, rngs: nnx.Rngs):
        bound = 1.0 / math.sqrt(d_in)          # torch.nn.Linear's initialisation, per column
        self.kernel = nnx.Param(jax.random.uniform(rngs.params(), (columns, d_in, d_out), jnp.float32, -bound, bound))
        self.bias = nnx.Param(jax.random.uniform(rngs.params(), (columns, d_out), jnp.float32, -bound, bound))

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.einsum("bci,cio->bco", x, self.kernel[...], preferred_element_type=jnp.float32) + self.bias[...]


class PiecewiseLinearEmbedding(nnx.Module):
    """Numeric columns -> their piecewise-linear encoding, flat, or through a per-column
    linear layer and ReLU (`dim` > 0)."""

    def __init__(self, edges: tuple[tuple[float, ...], ...], dim: int, *, rngs: nnx.Rngs):
        self.edges = edges                    # static: constants of the compiled program
        bins = max(len(e) - 1 for e in edges)
        self.linear = PerColumnLinear(len(edges), bins, dim, rngs=rngs) if dim > 0 else None
        self.out_features = len(edges) * (dim if dim > 0 else bins)

    def __call__(self, x: jax.Array) -> jax.Array:
        z = piecewise_linear(x, *edge_arrays(self.edges))
        if self.linear is not None:
            z = jax.nn.relu(self.linear(z))
        return z.reshape(x.shape[0], -1)


def periodic(x: jax.Array, frequencies: jax.Array) -> jax.Array:
    """(batch, columns) and (columns, F) -> (batch, columns, 2F): [sin(2 pi c x), cos(2 pi c x)]."""
    angle = 2.0 * jnp.pi * frequencies * x[:, :, None]
    return jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], axis=-1)


class PeriodicEmbedding(nnx.Module):
    """Numeric columns -> periodic features with trainable frequencies (initial N(0, scale)),
    a per-column linear layer and ReLU, flat."""

    def __init__(self, columns: int, frequencies: int, scale: float, dim: int, *, rngs: nnx.Rngs):
        self.frequencies = nnx.Param(scale * jax.random.normal(rngs.params(), (columns, frequencies), jnp.float32))
        self.linear = PerColumnLinear(columns, 2 * frequencies, dim, rngs=rngs)
        self.out_features = columns * dim

    def __call__(self, x: jax.Array) -> jax.Array:
        z = jax.nn.relu(self.linear(periodic(x, self.frequencies[...])))
        return z.reshape(x.shape[0], -1)


class CategoryEmbedding(nnx.Module):
    """One category column's one-hot block -> its learned vector; an all-zero block (a
    category not seen in training) -> the reserved vector."""

    def __init__(self, categories: int, *, rngs: nnx.Rngs):
        dim = category_dim(categories)
        init = nnx.initializers.normal(1.0 / math.sqrt(dim))
        self.table = nnx.Param(init(rngs.params(), (categories, dim), jnp.float32))
        self.unseen = nnx.Param(init(rngs.params(), (dim,), jnp.float32))
        self.out_features = dim

    def __call__(self, onehot: jax.Array) -> jax.Array:
        seen = jnp.sum(onehot, axis=-1, keepdims=True)
        return jnp.dot(onehot, self.table[...], preferred_element_type=jnp.float32) + (1.0 - seen) * self.unseen[...]


class EnsembleMLP(nnx.Module):
    """k MLPs (Dense-activation(-dropout) blocks and a linear head) with their parameters
    stacked on a leading member axis: member j is initialised exactly as the plain MLP of
    params seed `seed + j`. Training mode: (batch, k, out); eval mode: the mean prediction."""

    def __init__(self, members: list[nnx.Module], classification: bool, *, dropout: float, activation: str,
                 compute_dtype: jnp.dtype, rngs: nnx.Rngs, matmul: Kernels = Kernels()):
        def stacked(get: Callable) -> nnx.Param:
            return nnx.Param(jnp.stack([get(m)[...] for m in members]))
        depth = len(members[0].layers)
        self.kernels = nnx.List([stacked(lambda m, i=i: m.layers[i].kernel) for i in range(depth)]
                                + [stacked(lambda m: m.head.kernel)])
        self.biases = nnx.List([stacked(lambda m, i=i: m.layers[i].bias) for i in range(depth)]
                               + [stacked(lambda m: m.head.bias)])
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
        self.members = len(members)
        self.classification = classification
        self.activation = activation
        self.compute_dtype = compute_dtype
        self.matmul = matmul
        self.deterministic = False            # set by model.eval() / model.train()

    def _dense(self, x: jax.Array, i: int) -> jax.Array:
        kernel = self.kernels[i][...]
        if self.compute_dtype != jnp.float32:
            # One 2-D mixed-precision dot per member (model/kernels.py): CPUs run no batched
            # bf16 x bf16 -> fp32 dot, and the 2-D one has the fast backward.
            out = jnp.stack([self.matmul.dot(x if x.ndim == 2 else x[:, j], kernel[j], self.compute_dtype)
                             for j in range(self.members)], axis=1)
            return out + self.biases[i][...]
        spec = "bi,kio->bko" if x.ndim == 2 else "bki,kio->bko"    # the input is shared by every member
        return jnp.einsum(spec, x, kernel, preferred_element_type=jnp.float32) + self.biases[i][...]

    def members_out(self, x: jax.Array) -> jax.Array:
        """Every member's outputs, (batch, k, out)."""
        act = ACTIVATIONS[self.activation]
        x = x.reshape(x.shape[0], -1)
        for i in range(len(self.kernels) - 1):
            x = act(self._dense(x, i))
            if self.dropout is not None:
                x = self.dropout(x)
        return self._dense(x, len(self.kernels) - 1)

    def __call__(self, x: jax.Array) -> jax.Array:
        out = self.members_out(x)
        return out if not self.deterministic else mean_prediction(out, self.classification)


def mean_prediction(members: jax.Array, classification: bool) -> jax.Array:
    """(batch, k, out) -> (batch, out): the mean value, or log of the mean probability."""
    if not classification:
        return members.mean(axis=1)
    return jax.nn.logsumexp(jax.nn.log_softmax(members, axis=-1), axis=1) - math.log(members.shape[1])


def numeric_embedding(cfg, layout: TableLayout, rngs: nnx.Rngs) -> nnx.Module | None:
    """The embedding of `layout`'s numeric columns `cfg.numeric_embedding` names (None: as they are)."""
    if cfg.numeric_embedding == "piecewise_linear" and layout.numeric:
        return PiecewiseLinearEmbedding(layout.bin_edges, cfg.embedding_dim, rngs=rngs)
    if cfg.numeric_embedding == "periodic" and layout.numeric:
        return PeriodicEmbedding(layout.numeric, cfg.frequencies, cfg.frequency_scale, cfg.embedding_dim, rngs=rngs)
    return None


class TabularMLP(nnx.Module):
    """The embeddings `cfg` asks for over `layout`'s columns, then `backbone` (an MLP or an
    EnsembleMLP built by `make_backbone(width of the embedded features)`)."""

    def __init__(self, cfg, layout: TableLayout, make_backbone: Callable[[int], nnx.Module], *, rngs: nnx.Rngs):
        self.layout = layout
        self.numeric = nnx.data(numeric_embedding(cfg, layout, rngs))
        width = self.numeric.out_features if self.numeric is not None else layout.numeric
        learned = cfg.category_embedding == "learned"
        self.categories = nnx.List([CategoryEmbedding(n, rngs=rngs) if learned else None
                                    for n in layout.categories])
        width += sum(e.out_features if e is not None else n for e, n in zip(self.categories, layout.categories))
        self.backbone = make_backbone(width + layout.rest)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        n = self.layout.numeric
        parts = [self.numeric(x[:, :n]) if self.numeric is not None else x[:, :n]]
        col = n
        for emb, width in zip(self.categories, self.layout.categories):
            block = x[:, col:col + width]
            parts.append(emb(block) if emb is not None else block)
            col += width
        parts.append(x[:, col:])
        return self.backbone(jnp.concatenate(parts, axis=-1))
