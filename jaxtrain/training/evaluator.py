"""Evaluation: the model over a whole split in one compiled call, metrics on the host."""

from __future__ import annotations

import math

import jax
import numpy as np

from jaxtrain.data import Dataset
from jaxtrain.parallel import placement
from jaxtrain.engine.step import make_predict
from jaxtrain.model.metrics import compute_metrics


class Evaluator:
    """Runs the model over a whole split in one compiled call and computes metrics on the host."""

    def __init__(self, eval_def, mesh, batch_size: int, dataset: Dataset):
        self.mesh = mesh
        self.batch_size = batch_size
        self.dataset = dataset
        self._predict = jax.jit(make_predict(eval_def),
                                out_shardings=placement.output_sharding(mesh, 1))
        self._placed: dict[int, tuple[np.ndarray, jax.Array]] = {}  # the dataset's splits, uploaded once

    def _place(self, x: np.ndarray) -> jax.Array:
        """x padded to whole batches, as (num_batches, batch, ...) device arrays."""
        n = len(x)
        data_size = placement.batch_shards(self.mesh)
        b = min(self.batch_size, n)
        b = max(data_size, math.ceil(b / data_size) * data_size)
        nb = math.ceil(n / b)
        padded = np.zeros((nb * b, *x.shape[1:]), x.dtype)
        padded[:n] = x
        return jax.device_put(padded.reshape(nb, b, *x.shape[1:]), placement.batch_sharding(self.mesh, 1))

    def outputs(self, params, rest, x: np.ndarray, xs: jax.Array | None = None) -> np.ndarray:
        xs = self._place(x) if xs is None else xs
        out = np.asarray(self._predict(params, rest, xs))
        return out.reshape(-1, *out.shape[2:])[:len(x)]

    def evaluate(self, params, rest, split) -> dict[str, float]:
        # A split is evaluated every epoch: keep its device copy (keyed by the array, held here
        # so the id stays its own).
        x = split.x
        if id(x) not in self._placed:
            self._placed[id(x)] = (x, self._place(x))
        out = self.outputs(params, rest, x, self._placed[id(x)][1])
        d = self.dataset
        return compute_metrics(d.task, out, split.y, d.target_mean, d.target_scale)
