"""The hooks a run gets from its config, built in one place, in the one order that works.

1. the non-finite guard: it reads each call's flags first, so nothing non-finite is
   acted on or saved;
2. early stopping, before checkpointing: the final checkpoint holds the best parameters
   it restores;
3. checkpoints (with a work directory), carrying the guard's and early stopping's state;
4. profiling (`train.profile`), TensorBoard (`logging.tensorboard`), the experiment trackers
   (`logging.mlflow`, `logging.wandb`): these two on the lead process only;
5. preemption: it raises only after the final checkpoint is written;
6. the console's progress.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from jaxtrain.config.schema import Config
from jaxtrain.data.featurestats import FeatureStats
from jaxtrain.training.hooks.best import BestMetric
from jaxtrain.training.hooks.guard import NonFiniteGuard
from jaxtrain.training.hooks.checkpointing import CheckpointHook
from jaxtrain.training.hooks.early_stopping import EarlyStopping
from jaxtrain.training.hooks.tensorboard import TensorBoardHook
from jaxtrain.training.hooks.trackers import tracker_hooks
from jaxtrain.training.hooks.profiling import ProfileHook
from jaxtrain.training.hooks.progress import ProgressHook
from jaxtrain.training.hooks.signals import PreemptionHook
from jaxtrain.training.hooks.protocol import Hook

__all__ = ["CheckpointHook", "EarlyStopping", "build_hooks"]


def build_hooks(cfg: Config, workdir: str | Path | None, *, stats: FeatureStats | None = None, lead: bool = True,
                hyperparams_in_state: Sequence[str] = (), preemption: bool = True) -> list[Hook]:
    """`stats`: the data's fitted statistics, recorded in checkpoints; `hyperparams_in_state`:
    a vectorized point's optimizer fields kept in its state (recorded, so a resume matches);
    `preemption`: handle SIGTERM/SIGINT (one lane of a vectorized run does, for the process)."""
    workdir = Path(workdir) if workdir is not None else None
    guard = NonFiniteGuard(cfg.train.on_nonfinite)
    hooks: list[Hook] = [guard]
    ckpt_dir = workdir / "checkpoints" if workdir is not None else None
    es = cfg.train.early_stopping
    best = BestMetric(es.metric, es.mode, es.min_delta) if es is not None else None
    if es is not None:
        hooks.append(EarlyStopping(es, ckpt_dir if cfg.checkpoint.enabled else None, tracker=best))
    if cfg.checkpoint.enabled and ckpt_dir is not None:
        # With early stopping and no best_metric of its own, the best checkpoint is early
        # stopping's best (one shared tracker): it holds what is restored.
        if cfg.checkpoint.best_metric is not None:
            best = BestMetric(cfg.checkpoint.best_metric, cfg.checkpoint.best_mode)
        hooks.append(CheckpointHook(cfg, ckpt_dir, stateful=list(hooks),
                                    meta={"stats": stats.to_dict() if stats else None,
                                          "hyperparams_in_state": list(hyperparams_in_state)},
                                    best=best))
    if cfg.train.profile:
        hooks.append(ProfileHook(workdir, max_steps=cfg.train.profile_steps,
                                 trace_calls=cfg.train.profile_trace_calls))
    if cfg.logging.tensorboard and workdir is not None and lead:
        hooks.append(TensorBoardHook(workdir / "tensorboard"))
    if workdir is not None and lead:
        hooks += tracker_hooks(cfg, workdir)
    if preemption:
        hooks.append(PreemptionHook())
    hooks.append(ProgressHook(cfg.train.epochs))
    return hooks
