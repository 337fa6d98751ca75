"""Checks before training that need the loaded data, the work directory or the checkpoints.

Config-only rules live in `jaxtrain.config.rules`. What is here needs the loaded data
set (`check_with_data`, run once the data is known and before anything is compiled) or
the machine and the run directory. Every failure names the keys involved and how to fix them.
"""

from __future__ import annotations

from typing import Any

from jaxtrain.config.metric_ref import TASK_METRICS, MetricRef
from jaxtrain.util.errors import ConfigError, UserError

def check_with_data(cfg: Any, dataset: Any) -> None:
    """Checks that need the loaded data: the task decides which metrics exist."""
    metrics = TASK_METRICS.get(dataset.task, ())
    for key, value in (("train.early_stopping.metric", cfg.train.early_stopping and cfg.train.early_stopping.metric),
                       ("checkpoint.best_metric", cfg.checkpoint.best_metric)):
        if value:
            ref = MetricRef.parse(value, key)
            if ref.name not in metrics:
                raise ConfigError(f"config key '{key}': '{value}' is not reported for {dataset.task}; "
                                  f"use one of {', '.join(f'{ref.split}.{m}' for m in metrics)}")
            if ref.split == "val" and dataset.val is None:
                raise ConfigError(f"config key '{key}': '{value}' needs a validation split and the data "
                                  f"has none; set data.val_fraction > 0")
    if dataset.num_train < 1:
        raise ConfigError("the training split is empty after cleaning; check data.path, "
                          "data.test_fraction/val_fraction and data.clean")


def check_before_training(cfg: Any, model: Any, dataset: Any, workdir: Any, plan: Any) -> dict:
    """Everything that can be known to fail before the first step: options against the data,
    memory against the estimate for the run's `plan` (memory.py), and disk space for the checkpoints."""
    from flax import nnx

    from jaxtrain.engine import memory

    from jaxtrain.util import workdir as workdir_checks
    check_with_data(cfg, dataset)
    parts = memory.check_run(cfg, model, dataset, plan)
    if cfg.checkpoint.enabled and workdir is not None:
        params = memory.count_params(nnx.state(model, nnx.Param)) * memory.FLOAT_BYTES
        ema = cfg.train.ema_decay is not None
        per_checkpoint = params * (1 + memory.optimizer_state_factor(cfg.optimizer) + ema)
        # keep + best + the one being written, and a margin for metadata, logs and stats.
        need = per_checkpoint * (cfg.checkpoint.keep + 2) + 16 * 2**20
        workdir_checks.check_free_space(workdir, need)
    return parts

