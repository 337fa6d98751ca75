"""The training-strategy hooks a run gets from its config: early stopping, checkpoints."""

from __future__ import annotations

from pathlib import Path

from jaxtrain.config.schema import Config
from jaxtrain.training.hooks.checkpointing import CheckpointHook
from jaxtrain.training.hooks.early_stopping import EarlyStopping
from jaxtrain.training.loop import Hook

__all__ = ["CheckpointHook", "EarlyStopping", "strategy_hooks"]


def strategy_hooks(cfg: Config, workdir: str | Path | None, stateful: list = ()) -> list[Hook]:
    """Early stopping (if configured) before checkpointing, so that the final checkpoint holds
    the restored best parameters. Checkpoints need a work directory. `stateful`: other hooks
    whose state the checkpoints carry (say, the non-finite guard's count of skipped steps)."""
    hooks: list[Hook] = []
    ckpt_dir = Path(workdir) / "checkpoints" if workdir is not None else None
    es = cfg.train.early_stopping
    if es is not None:
        hooks.append(EarlyStopping(es, ckpt_dir if cfg.checkpoint.enabled else None))
    if cfg.checkpoint.enabled and ckpt_dir is not None:
        # With early stopping and no best_metric of its own, the best checkpoint follows early
        # stopping's idea of best (same metric, mode and min_delta): it holds what is restored.
        follow = es is not None and cfg.checkpoint.best_metric is None
        hooks.append(CheckpointHook(cfg.checkpoint, ckpt_dir, stateful=[*hooks, *stateful],
                                    best_metric=es.metric if follow else None,
                                    best_mode=es.mode if follow else "min",
                                    best_min_delta=es.min_delta if follow else 0.0))
    return hooks
