"""Checks that need more than one config section, or the data: options that do not go together.

Each section's own ranges live in its `validate()` (config.py). What is here
looks across sections (`check_config`, run from `Config.validate`, so the CLI
and the API both get it) or needs the loaded data set (`check_with_data`, run
once the data is known and before anything is compiled). Every failure is a
ConfigError naming the keys involved and how to fix them.
"""

from __future__ import annotations

from typing import Any

from jaxtrain.errors import ConfigError, UserError

# The metrics a split reports, per task (metrics.py), for early stopping and best-checkpoint keys.
TASK_METRICS = {"classification": ("loss", "accuracy"), "regression": ("loss", "mse", "mae", "r2")}
SPLITS = ("train", "val")


def _split_metric(value: str, key: str) -> tuple[str, str]:
    split, _, metric = value.partition(".")
    if split not in SPLITS or not metric:
        raise ConfigError(f"config key '{key}': '{value}' must look like val.<metric> or train.<metric> "
                          f"(e.g. val.loss)")
    return split, metric


def check_config(cfg: Any) -> None:
    """Cross-section checks that need only the config."""
    data, train, model, opt = cfg.data, cfg.train, cfg.model, cfg.optimizer
    no_val = data.val_fraction == 0
    for key, value in (("train.early_stopping.metric", train.early_stopping and train.early_stopping.metric),
                       ("checkpoint.best_metric", cfg.checkpoint.best_metric)):
        if value:
            split, _ = _split_metric(value, key)
            if split == "val" and no_val:
                raise ConfigError(f"config key '{key}': '{value}' needs a validation split but "
                                  f"data.val_fraction is 0; set data.val_fraction (e.g. 0.1) or use a "
                                  f"train.* metric")
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
    # Ranges the sections' own validate() does not check (yet).
    for key, value in (("data.prefetch", data.prefetch),
                       ("train.profile_steps", getattr(train, "profile_steps", 0)),
                       ("train.profile_trace_calls", getattr(train, "profile_trace_calls", 0))):
        if value < 0:
            raise ConfigError(f"config key '{key}': must be >= 0, got {value}")
    shape = getattr(getattr(train, "augment", None), "image_shape", None)
    if shape is not None and not all(d >= 1 for d in shape):
        raise ConfigError(f"config key 'train.augment.image_shape': every dimension must be >= 1, "
                          f"got {list(shape)}")


def check_with_data(cfg: Any, dataset: Any) -> None:
    """Checks that need the loaded data: the task decides which metrics exist."""
    metrics = TASK_METRICS.get(dataset.task, ())
    for key, value in (("train.early_stopping.metric", cfg.train.early_stopping and cfg.train.early_stopping.metric),
                       ("checkpoint.best_metric", cfg.checkpoint.best_metric)):
        if value:
            split, metric = _split_metric(value, key)
            if metric not in metrics:
                raise ConfigError(f"config key '{key}': '{value}' is not reported for {dataset.task}; "
                                  f"use one of {', '.join(f'{split}.{m}' for m in metrics)}")
            if split == "val" and dataset.val is None:
                raise ConfigError(f"config key '{key}': '{value}' needs a validation split and the data "
                                  f"has none; set data.val_fraction > 0")
    if dataset.num_train < 1:
        raise ConfigError("the training split is empty after cleaning; check data.path, "
                          "data.test_fraction/val_fraction and data.clean")


def check_before_training(cfg: Any, model: Any, dataset: Any, workdir: Any) -> dict:
    """Everything that can be known to fail before the first step: options against the data,
    memory against the estimate (memory.py), and disk space for the checkpoints."""
    from flax import nnx

    from jaxtrain import memory, workdir as workdir_checks
    check_with_data(cfg, dataset)
    parts = memory.check_run(cfg, model, dataset)
    if cfg.checkpoint.enabled and workdir is not None:
        params = memory.count_params(nnx.state(model, nnx.Param)) * memory.FLOAT_BYTES
        per_checkpoint = params * (1 + memory.optimizer_state_factor(cfg.optimizer))
        # keep + best + the one being written, and a margin for metadata, logs and stats.
        need = per_checkpoint * (cfg.checkpoint.keep + 2) + 16 * 2**20
        workdir_checks.check_free_space(workdir, need)
    return parts


def checkpoint_mismatch(directory: Any, step: int, state: Any, error: Exception) -> UserError:
    """A one-line error for a checkpoint whose arrays do not fit this run's model or optimizer:
    names the first parameter that differs, else says which part of the state does not fit."""
    import jax
    import numpy as np

    from jaxtrain.checkpoint import load_named_params
    from jaxtrain.optim import param_path
    where = f"checkpoint '{directory}/{step}'"
    fix = "resume with the run's own model and optimizer settings (or start a new run with model.init_from)"
    try:
        saved, _ = load_named_params(f"{directory}/{step}")
    except UserError as unreadable:  # incomplete or damaged, not another model: say that
        return unreadable
    except Exception:  # unreadable as parameters too: report what the restore said, in one line
        return ConfigError(f"{where} does not match this run ({str(error).splitlines()[0][:200]}); {fix}")
    wanted = {param_path(p): np.shape(v) for p, v in jax.tree_util.tree_flatten_with_path(state.params)[0]}
    for name in sorted(set(saved) | set(wanted)):
        got, need = saved.get(name), wanted.get(name)
        if got is None or need is None or tuple(got.shape) != tuple(need):
            return ConfigError(f"{where}: parameter '{name}' is "
                               f"{'missing' if got is None else tuple(got.shape)} there but the model has "
                               f"{'none' if need is None else tuple(need)}; {fix}")
    return ConfigError(f"{where}: its optimizer state does not fit this run's optimizer settings "
                       f"(optimizer.name, momentum, clip_norm, freeze); {fix}")
