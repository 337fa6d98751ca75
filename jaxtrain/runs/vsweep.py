"""Vectorized sweeps: points that differ only in optimizer hyperparameters train together.

The optimizer keeps the varying hyperparameters (learning rate, weight decay, momentum:
`optim.VECTOR_FIELDS`) in its state (`optax.inject_hyperparams`) instead of baking them
into the compiled step. The points' states are stacked along a new leading axis and the
engine runs the step under `jax.vmap`, with the data, the permutation and therefore every
batch shared by all points. Each point starts from the same initial parameters and sees
the same batches as its separate run, so the results agree with separate runs to float32
rounding (tested to 1e-5).

This module says which points can train together; they train through the one
orchestrator (lanes.py: `train_lanes`, one lane per point) like any run: the same
work-directory handling, preflight checks, loop, hooks, summaries and checkpoints. So
every point's directory is a complete run directory, and `jaxtrain train --resume POINT`
continues it like any run's.
"""

from __future__ import annotations

import json

from jaxtrain.config.schema import Config, to_dict
from jaxtrain.model.optim import VECTOR_FIELDS


def why_not_vectorized(cfg: Config) -> str | None:
    """Why a point cannot train in a vectorized group (None if it can): vectorized training
    covers in-memory data, the sharded strategy and no per-point early stopping, augmentation,
    fine-tuning, gradient accumulation or parameter averaging. Any model stacks, an imported
    one (`model.name: module:factory`) included: each point's config.yaml names its
    model.import_root like a separate run's."""
    reasons = {f"data.backend={cfg.data.backend}": cfg.data.backend != "numpy",
               "data.streaming": cfg.data.streaming,
               f"parallel.strategy={cfg.parallel.strategy}": cfg.parallel.strategy != "sharded",
               "train.early_stopping": cfg.train.early_stopping is not None,
               "train.augment": bool(cfg.train.augment), "model.init_from": cfg.model.init_from is not None,
               "train.grad_accum_steps": cfg.train.grad_accum_steps != 1,
               "train.ema_decay": cfg.train.ema_decay is not None}
    found = [name for name, present in reasons.items() if present]
    return f"{', '.join(found)} cannot be vectorized" if found else None


def vector_groups(cfgs: list[Config]) -> list[list[int]]:
    """Indices of points grouped by everything except the optimizer's VECTOR_FIELDS
    (points that cannot be vectorized run alone)."""
    groups: dict[str, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        if why_not_vectorized(cfg):
            groups[f"alone-{i}"] = [i]
            continue
        d = to_dict(cfg)
        for f in VECTOR_FIELDS:
            d["optimizer"].pop(f)
        groups.setdefault(json.dumps(d, sort_keys=True, default=str), []).append(i)
    return list(groups.values())
