"""Rules that look across config sections: options that do not go together.

Each section's own ranges live in its `validate()` (schema.py); `check_config` runs from
`Config.validate`, so the CLI and the API both get it. Every failure is a ConfigError naming
the keys involved and how to fix them.
"""

from __future__ import annotations

from typing import Any

from jaxtrain.config.metric_ref import MetricRef
from jaxtrain.util.errors import ConfigError


def check_config(cfg: Any) -> None:
    """Cross-section checks that need only the config."""
    data, train, model, opt = cfg.data, cfg.train, cfg.model, cfg.optimizer
    no_val = data.val_fraction == 0 and data.val_path is None
    for key, value in (("train.early_stopping.metric", train.early_stopping and train.early_stopping.metric),
                       ("checkpoint.best_metric", cfg.checkpoint.best_metric)):
        if value:
            if MetricRef.parse(value, key).split == "val" and no_val:
                raise ConfigError(f"config key '{key}': '{value}' needs a validation split but "
                                  f"data.val_fraction is 0; set data.val_fraction (e.g. 0.1) or use a "
                                  f"train.* metric")
    es, best = train.early_stopping, cfg.checkpoint
    if es is not None and best.best_metric == es.metric and best.best_mode != es.mode:
        raise ConfigError(f"config keys 'checkpoint.best_mode' and 'train.early_stopping.mode': both watch "
                          f"{es.metric}, one best for both; set them alike ({es.mode} or {best.best_mode})")
    if data.task == "regression" and data.num_classes is not None:
        raise ConfigError("config keys 'data.num_classes' and 'data.task': num_classes is for "
                          "classification; remove it or set data.task=classification")
    if model.name == "linear" and model.dropout > 0:
        raise ConfigError("config key 'model.dropout': the linear model has no hidden layer to drop; "
                          "set it to 0 or use model.name=mlp")
    if opt.nesterov and not (opt.name == "sgd" and opt.momentum > 0):
        raise ConfigError("config key 'optimizer.nesterov': needs optimizer.name=sgd with "
                          "optimizer.momentum > 0")
    if opt.momentum > 0 and opt.name != "sgd":
        raise ConfigError(f"config key 'optimizer.momentum': applies to sgd only; optimizer "
                          f"'{opt.name}' uses b1 (set momentum to 0)")
    if opt.weight_decay > 0 and opt.name != "adamw":
        raise ConfigError(f"config key 'optimizer.weight_decay': applies to adamw only; use "
                          f"optimizer.name=adamw, or optimizer.l2 for '{opt.name}'")
    if opt.schedule == "warmup_cosine" and opt.warmup_epochs >= train.epochs:
        raise ConfigError(f"config key 'optimizer.warmup_epochs': {opt.warmup_epochs} leaves no epoch to "
                          f"decay in (train.epochs={train.epochs}); make it smaller than train.epochs")
    if data.seed < 0:
        raise ConfigError(f"config key 'data.seed': must be >= 0, got {data.seed}")
    if cfg.logging.log_every_steps < 0:
        raise ConfigError("config key 'logging.log_every_steps': must be >= 0 (0: once per epoch)")
    # Ranges the sections' own validate() does not check.
    for key, value in (("data.prefetch", data.prefetch),
                       ("train.profile_steps", train.profile_steps),
                       ("train.profile_trace_calls", train.profile_trace_calls)):
        if value < 0:
            raise ConfigError(f"config key '{key}': must be >= 0, got {value}")
    shape = train.augment.image_shape
    if shape is not None and not all(d >= 1 for d in shape):
        raise ConfigError(f"config key 'train.augment.image_shape': every dimension must be >= 1, "
                          f"got {list(shape)}")
