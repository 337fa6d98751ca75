"""Optax optimizers, learning-rate schedules, clipping, regularization and freezing.

Durations in the config are in epochs; they are converted to steps here, in
one place, from `steps_per_epoch`.
"""

from __future__ import annotations

import dataclasses
import fnmatch

import jax
import jax.numpy as jnp
import optax

from jaxtrain.config.schema import OptimizerConfig


def learning_rate_schedule(cfg: OptimizerConfig, steps_per_epoch: int, epochs: int) -> optax.Schedule:
    total = max(1, steps_per_epoch * epochs)
    lr = cfg.learning_rate
    if cfg.schedule == "constant":
        return optax.constant_schedule(lr)
    if cfg.schedule == "cosine":
        return optax.cosine_decay_schedule(lr, decay_steps=total)
    if cfg.schedule == "warmup_cosine":
        warmup = min(total - 1, int(round(cfg.warmup_epochs * steps_per_epoch)))
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps=warmup, decay_steps=total)
    if cfg.schedule == "step":
        every = max(1, int(round(cfg.decay_epochs * steps_per_epoch)))
        return optax.exponential_decay(lr, transition_steps=every, decay_rate=cfg.decay_factor,
                                       staircase=True)
    raise ValueError(cfg.schedule)  # unreachable: the config validates names


def param_path(path: tuple) -> str:
    """'layers.0.kernel' for a key path into params, whether an nnx.State or restored dicts."""
    names = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
    if names and names[-1] == "value":  # the Variable wrapper's own leaf
        names = names[:-1]
    return ".".join(names)


def frozen_mask(params, patterns: tuple[str, ...]):
    """A pytree of bools, True where a parameter's path matches one of `patterns`."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: any(fnmatch.fnmatchcase(param_path(path), p) for p in patterns), params)


# Optimizer fields a vectorized sweep's points may differ in (each is a number the optimizer reads).
VECTOR_FIELDS = ("learning_rate", "weight_decay", "momentum")


def build_optimizer(cfg: OptimizerConfig, steps_per_epoch: int, epochs: int,
                    params=None, in_state: tuple[str, ...] = ()) -> optax.GradientTransformation:
    """The optimizer `cfg` describes. `in_state`: fields of VECTOR_FIELDS kept in the optimizer
    state (optax.inject_hyperparams) instead of baked into the step, so that points differing
    in them share one compiled step (vectorized sweeps)."""
    if in_state:
        return _with_hyperparams_in_state(cfg, steps_per_epoch, epochs, params, in_state)
    schedule = learning_rate_schedule(cfg, steps_per_epoch, epochs)
    if cfg.name == "sgd":
        # No momentum trace for a plain 0; an array momentum (a vectorized sweep's state,
        # see training/setup.py) always gets one, since its value is unknown at trace time.
        plain_zero = isinstance(cfg.momentum, (int, float)) and cfg.momentum == 0
        opt = optax.sgd(schedule, momentum=None if plain_zero else cfg.momentum, nesterov=cfg.nesterov)
    elif cfg.name == "adam":
        opt = optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    else:
        opt = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
    parts = []
    if cfg.clip_norm is not None:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    parts.append(opt)
    tx = optax.chain(*parts) if len(parts) > 1 else opt
    if cfg.freeze and params is not None:
        labels = jax.tree.map(lambda frozen: "frozen" if frozen else "trained",
                              frozen_mask(params, cfg.freeze))
        tx = optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)
    return tx


def _with_hyperparams_in_state(cfg: OptimizerConfig, steps_per_epoch: int, epochs: int, params,
                                in_state: tuple[str, ...]) -> optax.GradientTransformation:
    def factory(learning_rate, weight_decay, momentum):
        opt = dataclasses.replace(cfg, learning_rate=learning_rate, weight_decay=weight_decay,
                                  momentum=momentum)
        return build_optimizer(opt, steps_per_epoch, epochs, params)

    static = [f for f in VECTOR_FIELDS if f not in in_state]
    return optax.inject_hyperparams(factory, static_args=static)(**{f: getattr(cfg, f) for f in VECTOR_FIELDS})


def regularization_penalty(params, l1: float, l2: float) -> jax.Array:
    """l1 * sum|w| + l2/2 * sum w^2 over weight matrices (biases are not penalised)."""
    total = jnp.zeros((), jnp.float32)
    if not (l1 or l2):
        return total
    for leaf in jax.tree.leaves(params):
        if leaf.ndim >= 2:
            if l1:
                total = total + l1 * jnp.sum(jnp.abs(leaf))
            if l2:
                total = total + 0.5 * l2 * jnp.sum(jnp.square(leaf))
    return total
