"""Losses, the pure train step, and the drivers that fuse many steps into one call.

`train_step(state, batch) -> (state, metrics)` is a pure function of arrays:
the model's graph definition, the optimizer and the hyperparameters are bound
by closure, so the step compiles once and can run under `lax.scan` (K steps
per compiled call), `jax.jit` with shardings, or `jax.shard_map`.

A batch is `(x, y, mask)`: the mask is 0 for padding, so a last partial batch
is trained on (and evaluated) exactly, never dropped. Metrics are sums
(`loss_sum`, `correct`, `count`, `nonfinite`) that stay on the device and are
added up across steps; the host reads them once per epoch.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from jaxtrain.parallel.placement import is_key
from jaxtrain.model.augment import Augment
from jaxtrain.model.optim import regularization_penalty

Batch = tuple[jax.Array, jax.Array, jax.Array]
Metrics = dict[str, jax.Array]


class TrainState(struct.PyTreeNode):
    step: jax.Array          # int32 scalar: optimizer updates applied
    params: Any              # nnx.State of the nnx.Param variables
    rest: Any                # nnx.State of everything else (dropout RNG streams, batch stats)
    opt_state: Any
    ema: Any = None          # moving average of params (train.ema_decay), or None


def split_model(model: nnx.Module):
    """(train graphdef, eval graphdef, params, rest). Train/eval mode is static graph data."""
    model.eval()
    eval_def, _, _ = nnx.split(model, nnx.Param, ...)
    model.train()
    train_def, params, rest = nnx.split(model, nnx.Param, ...)
    return train_def, eval_def, params, rest


def init_state(params, rest, tx: optax.GradientTransformation, ema: bool = False) -> TrainState:
    """The state before the first step; `ema` starts the moving average at the parameters."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest,
                      opt_state=tx.init(params), ema=jax.tree.map(jnp.copy, params) if ema else None)


def eval_params(state: TrainState):
    """The parameters evaluation uses: the moving average when the run keeps one."""
    return state.params if state.ema is None else state.ema


# ---------------------------------------------------------------- losses


def per_example_loss(task: str, outputs: jax.Array, y: jax.Array) -> jax.Array:
    outputs = outputs.astype(jnp.float32)
    if outputs.ndim == 3:  # an ensemble's members in training, (batch, k, out): the mean of their losses
        return jax.vmap(lambda member: per_example_loss(task, member, y), in_axes=1, out_axes=1)(outputs).mean(1)
    if task == "classification":
        return optax.softmax_cross_entropy_with_integer_labels(outputs, y)
    pred = outputs[:, 0] if y.ndim == 1 else outputs
    err = jnp.square(pred - y)
    return err if err.ndim == 1 else err.mean(axis=-1)


def batch_metrics(task: str, outputs: jax.Array, y: jax.Array, losses: jax.Array,
                  mask: jax.Array) -> Metrics:
    m = {"loss_sum": jnp.sum(losses * mask), "count": jnp.sum(mask)}
    if task == "classification":
        if outputs.ndim == 3:  # an ensemble's members: the class of the mean probability
            outputs = jax.nn.softmax(outputs.astype(jnp.float32), -1).mean(1)
        m["correct"] = jnp.sum((jnp.argmax(outputs, -1) == y) * mask)
    return m


# ---------------------------------------------------------------- the step


def make_train_step(graphdef, tx: optax.GradientTransformation, task: str, *,
                    l1: float = 0.0, l2: float = 0.0, skip_nonfinite: bool = False,
                    axis_name: str | tuple[str, ...] | None = None,
                    augment: Augment | None = None, grad_accum_steps: int = 1,
                    ema_decay: float | None = None,
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """Build the pure train step for a model split into (graphdef, params, rest).

    `axis_name` makes it a pmap-style step for one device's shard under `shard_map`:
    gradients and the loss are averaged with `lax.pmean` over that axis, metric sums
    are summed, so every device ends the step with the same state (executors.py). Each
    device draws its own dropout masks: its index is folded into the RNG keys.
    `grad_accum_steps` splits the batch into that many microbatches (one update);
    `ema_decay` keeps `state.ema`, a moving average of the parameters.
    """
    gradients = make_gradients(graphdef, task, l1, l2, axis_name, grad_accum_steps)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        x, y, mask = batch
        rest = state.rest
        # augment.py: keyed by the step, so reproducible and resume-exact
        augment_key = None if augment is None else augment.key_at(state.step)
        if axis_name is not None:  # each device's shard draws its own dropout masks and augmentation
            device = jax.lax.axis_index(axis_name)
            rest = fold_in_keys(rest, device)
            augment_key = None if augment is None else jax.random.fold_in(augment_key, device)
        if augment is not None:
            x = augment.with_key(x, augment_key)
        loss, grads, new_rest, metrics = gradients(state.params, rest, x, y, mask)
        if axis_name is not None:
            grads, loss = jax.lax.pmean((grads, loss), axis_name)
            metrics = jax.lax.psum(metrics, axis_name)
            new_rest = mean_stats(with_keys_of(new_rest, state.rest), axis_name)  # keys shared, stats averaged
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        loss_ok = jnp.isfinite(loss)
        grads_ok = jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)] or [loss_ok])
        finite = loss_ok & jnp.all(grads_ok)
        new = state.replace(step=state.step + 1, params=params, rest=new_rest, opt_state=opt_state)
        if ema_decay is not None:
            new = new.replace(ema=jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p,
                                               state.ema, params))
        if skip_nonfinite:
            new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
            new = new.replace(step=state.step + 1)
        metrics["nonfinite"] = (~finite).astype(jnp.float32)
        # Which step and what went non-finite, for the guard's message (guard.py): the 1-based
        # global step, and 1 for the loss or 2 + the index of the first non-finite gradient leaf.
        metrics["first_nonfinite_step"] = jnp.where(finite, 0, state.step + 1).astype(jnp.float32)
        metrics["first_nonfinite_what"] = jnp.where(
            finite, 0, jnp.where(loss_ok, 2 + jnp.argmin(grads_ok), 1)).astype(jnp.float32)
        return new, metrics

    return train_step


def make_gradients(graphdef, task: str, l1: float, l2: float,
                   axis_name: str | tuple[str, ...] | None, microbatches: int) -> Callable:
    """`gradients(params, rest, x, y, mask) -> (loss, grads, new rest, metric sums)`.

    The loss is the batch's masked mean plus the penalty. With `microbatches` > 1 the batch
    is cut into that many equal microbatches, run one after the other under `lax.scan`, and
    their gradients are added up: each microbatch's masked sum is divided by the whole
    batch's count, so the sum is the whole batch's loss, padding included, and only one
    microbatch's activations are alive at a time. (Under jit with shardings XLA reduces
    each microbatch's gradients across devices inside the loop; the pmap-style step
    reduces the sum once, in `train_step`.)
    """

    def data_loss(params, rest, x, y, mask, denominator):
        # copy=True: fresh Variables at this trace level, or dropout's RNG counter (created by
        # the enclosing scan/jit trace) cannot be advanced inside value_and_grad.
        model = nnx.merge(graphdef, params, rest, copy=True)
        outputs = model(x)
        losses = per_example_loss(task, outputs, y)
        _, new_rest = nnx.state(model, nnx.Param, ...)
        metrics = batch_metrics(task, outputs, y, losses, mask)
        return jnp.sum(losses * mask) / denominator, (new_rest, metrics)

    def penalized_loss(params, rest, x, y, mask, denominator):
        loss, aux = data_loss(params, rest, x, y, mask, denominator)
        return loss + regularization_penalty(params, l1, l2), aux

    def accumulated(params, rest, x, y, mask, denominator):
        def one(carry, microbatch):
            rest, loss, grads = carry
            (l, (rest, m)), g = jax.value_and_grad(data_loss, has_aux=True)(
                params, rest, *microbatch, denominator)
            return (rest, loss + l, jax.tree.map(jnp.add, grads, g)), m

        zero = (rest, jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
        split = [microbatch_split(a, microbatches) for a in (x, y, mask)]
        (rest, loss, grads), metrics = jax.lax.scan(one, zero, split)
        if l1 or l2:
            penalty, penalty_grads = jax.value_and_grad(regularization_penalty)(params, l1, l2)
            loss, grads = loss + penalty, jax.tree.map(jnp.add, grads, penalty_grads)
        return loss, grads, rest, jax.tree.map(lambda a: a.sum(0), metrics)

    def gradients(params, rest, x, y, mask):
        # Masked mean: padding rows weigh nothing; an all-padding batch gives a zero loss.
        denominator = jnp.maximum(jnp.sum(mask), 1.0)
        if axis_name is not None:
            # This shard's masked sum over the *global* count, times the shard count: the pmean
            # of the shards' losses (and gradients) is then the global masked mean, however the
            # padding is spread over the shards.
            denominator = (jnp.maximum(jax.lax.psum(jnp.sum(mask), axis_name), 1.0)
                           / jax.lax.psum(1, axis_name))
        if microbatches > 1:
            return accumulated(params, rest, x, y, mask, denominator)
        (loss, (rest, metrics)), grads = jax.value_and_grad(penalized_loss, has_aux=True)(
            params, rest, x, y, mask, denominator)
        return loss, grads, rest, metrics

    return gradients


def microbatch_split(a: jax.Array, n: int) -> jax.Array:
    """(B, ...) -> (n, B/n, ...), microbatch j taking rows j, j + n, j + 2n, ...: a device
    holding a contiguous block of the batch holds its share of every microbatch, so
    splitting moves no data between devices."""
    return jnp.swapaxes(a.reshape(a.shape[0] // n, n, *a.shape[1:]), 0, 1)


def fold_in_keys(rest, index: jax.Array):
    """`rest` with `index` folded into every PRNG key: a pmap-style step's own streams."""
    return jax.tree.map(lambda a: jax.random.fold_in(a, index) if is_key(a) else a, rest)


def with_keys_of(rest, reference):
    """`rest` with its PRNG keys taken from `reference` (the counters stay `rest`'s)."""
    return jax.tree.map(lambda a, r: r if is_key(r) else a, rest, reference)


def mean_stats(rest, axis_name) -> Any:
    """Batch-norm statistics under pmap: each device saw its shard; keep their average on all."""
    return jax.tree.map(lambda a: jax.lax.pmean(a, axis_name) if jnp.issubdtype(a.dtype, jnp.floating) else a,
                        rest)


def zero_metrics(task: str) -> Metrics:
    keys = ["loss_sum", "count", "nonfinite", *FIRST_KEYS] + (["correct"] if task == "classification" else [])
    return {k: jnp.zeros((), jnp.float32) for k in keys}


# Metrics that keep the value of the first non-finite step instead of a sum.
FIRST_KEYS = ("first_nonfinite_step", "first_nonfinite_what")


def add_metrics(sums: Metrics, m: Metrics) -> Metrics:
    """Accumulate step (or chunk) metrics: sums add up; FIRST_KEYS keep the first non-finite
    step's value (exact while step counts stay below 2**24, the float32 integer range)."""
    seen = sums["nonfinite"] > 0
    return {k: jnp.where(seen, sums[k], m[k]) if k in FIRST_KEYS else sums[k] + m[k] for k in sums}


# ---------------------------------------------------------------- fused drivers


def make_device_epoch_runner(train_step, task: str, batch_size: int,
                             constrain: Callable[[Any], Any] = lambda b: b):
    """K steps per call over a training set already on the device.

    `run(state, x_all, y_all, order, start_step, num_steps)` gathers batch i from
    `order[(start_step + i) * B : ... + B]` (padded with -1 for the last partial
    batch), so shuffling costs one small index upload per epoch and the data
    itself never leaves the device. `num_steps` is static: it sets the scan length.
    """

    def run(state, x_all, y_all, order, start_step, num_steps: int):
        def body(carry, i):
            state, sums = carry
            idx = jax.lax.dynamic_slice_in_dim(order, (start_step + i) * batch_size, batch_size)
            mask = (idx >= 0).astype(jnp.float32)
            idx = jnp.maximum(idx, 0)
            # Indices are clamped into range above, so the gather needs no bounds handling
            # (measured: about 10% faster than jnp.take's default fill mode).
            batch = constrain((x_all.at[idx].get(mode="promise_in_bounds"),
                               y_all.at[idx].get(mode="promise_in_bounds"), mask))
            state, m = train_step(state, batch)
            return (state, add_metrics(sums, m)), None

        (state, sums), _ = jax.lax.scan(body, (state, zero_metrics(task)), jnp.arange(num_steps))
        return state, sums

    return run


def vmapped(make_runner: Callable) -> Callable:
    """`make_device_epoch_runner` for a state stacked along a leading axis (a vectorized
    sweep's points): every point trains on the same batches, in one compiled program."""

    def make(*args, **kwargs):
        run = make_runner(*args, **kwargs)

        def run_points(state, x_all, y_all, order, start_step, num_steps: int):
            return jax.vmap(lambda s: run(s, x_all, y_all, order, start_step, num_steps))(state)

        return run_points

    return make


def make_stream_runner(train_step, task: str, constrain: Callable[[Any], Any] = lambda b: b):
    """K steps per call over host batches stacked as (K, B, ...) arrays."""

    def run(state, xs, ys, masks):
        def body(carry, batch):
            state, sums = carry
            state, m = train_step(state, constrain(batch))
            return (state, add_metrics(sums, m)), None

        (state, sums), _ = jax.lax.scan(body, (state, zero_metrics(task)), (xs, ys, masks))
        return state, sums

    return run


def make_predict(graphdef) -> Callable[[Any, Any, jax.Array], jax.Array]:
    """predict(params, rest, xs) over (num_batches, B, ...) inputs, one compiled call."""

    def predict(params, rest, xs):
        def one(x):
            return nnx.merge(graphdef, params, rest)(x).astype(jnp.float32)

        return jax.lax.map(one, xs)

    return predict


# One compiled dispatch per call instead of one per metric: at a few steps per call,
# eager adds were a visible share of the loop's host time.
accumulate_metrics = jax.jit(add_metrics)
