"""The hooks a run gets from its config, built in one place.

Their order of action is not this list's: each hook names its stage (protocol.STAGES: the
non-finite guard validates, early stopping decides, checkpoints persist, profiling,
TensorBoard and the experiment trackers observe, preemption exits) and the loop calls them
stage by stage (dispatch.py). Early stopping and the best checkpoint read one best-metric
tracker when they watch the same metric (`_Trackers`), with early stopping's min_delta.
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


class _Trackers:
    """One BestMetric per metric name in a lane: the hooks that watch the same metric share it
    (the first one asked for fixes its mode and min_delta; config/rules.py refuses two modes)."""

    def __init__(self):
        self.by_metric: dict[str, BestMetric] = {}

    def get(self, metric: str, mode: str, min_delta: float = 0.0) -> BestMetric:
        return self.by_metric.setdefault(metric, BestMetric(metric, mode, min_delta))


def build_hooks(cfg: Config, workdir: str | Path | None, *, stats: FeatureStats | None = None, lead: bool = True,
                hyperparams_in_state: Sequence[str] = (), preemption: bool = True) -> list[Hook]:
    """`stats`: the data's fitted statistics, recorded in checkpoints; `hyperparams_in_state`:
    a vectorized point's optimizer fields kept in its state (recorded, so a resume matches);
    `preemption`: handle SIGTERM/SIGINT (one lane of a vectorized run does, for the process)."""
    workdir = Path(workdir) if workdir is not None else None
    guard = NonFiniteGuard(cfg.train.on_nonfinite)
    hooks: list[Hook] = [guard]
    ckpt_dir = workdir / "checkpoints" if workdir is not None else None
    es, trackers = cfg.train.early_stopping, _Trackers()
    if es is not None:
        tracker = trackers.get(es.metric, es.mode, es.min_delta)
        hooks.append(EarlyStopping(es, ckpt_dir if cfg.checkpoint.enabled else None, tracker=tracker))
    if cfg.checkpoint.enabled and ckpt_dir is not None:
        # With early stopping and no best_metric of its own, the best checkpoint is early
        # stopping's best (one shared tracker): it holds what is restored.
        best = es and trackers.get(es.metric, es.mode, es.min_delta)
        if cfg.checkpoint.best_metric is not None:
            best = trackers.get(cfg.checkpoint.best_metric, cfg.checkpoint.best_mode)
        hooks.append(CheckpointHook(cfg, ckpt_dir, stats=stats.to_dict() if stats else None,
                                    hyperparams_in_state=hyperparams_in_state, best=best or None))
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
