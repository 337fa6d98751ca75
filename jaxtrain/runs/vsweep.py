"""Vectorized sweeps: points that differ only in optimizer hyperparameters train together.

The optimizer keeps the varying hyperparameters (learning rate, weight decay, momentum:
`optim.VECTOR_FIELDS`) in its state (`optax.inject_hyperparams`) instead of baking them
into the compiled step. The points' states are stacked along a new leading axis and the
engine runs the step under `jax.vmap`, with the data, the permutation and therefore every
batch shared by all points. Each point starts from the same initial parameters and sees
the same batches as its separate run, so the results agree with separate runs to float32
rounding (tested to 1e-5).

Apart from that it is an ordinary run (training/setup.py: `setup_vectorized`): the same
work-directory handling, preflight checks, loop, hooks, summaries and checkpoints, one
lane per point. So every point's directory is a complete run directory, and
`jaxtrain train --resume POINT` continues it like any run's.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from jaxtrain import data as data_stage
from jaxtrain.config.schema import Config, to_dict
from jaxtrain.model.optim import VECTOR_FIELDS
from jaxtrain.runs.api import finish_summary, load_data, make_model
from jaxtrain.engine.compilation import enable_persistent_cache
from jaxtrain.runs.rundir import RunDirectory
from jaxtrain.training.hooks import build_hooks
from jaxtrain.training.hooks.dispatch import close_all
from jaxtrain.training.loop import fit_lanes
from jaxtrain.training.preflight import check_before_training
from jaxtrain.training.setup import setup_vectorized
from jaxtrain.util.events import Console
from jaxtrain.util.time_account import TimeAccount


def why_not_vectorized(cfg: Config) -> str | None:
    """Why a point cannot train in a vectorized group (None if it can): vectorized training
    covers in-memory data, the sharded strategy and no per-point early stopping, augmentation,
    fine-tuning, gradient accumulation or parameter averaging."""
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


def train_vectorized(cfgs: list[Config], workdirs: list[Path], console: Console | None = None) -> list[dict]:
    """Train points that differ only in VECTOR_FIELDS in one program; return their summaries."""
    console = console or Console("none")
    account = TimeAccount()  # the points train together: one account of the time for all
    enable_persistent_cache(cfgs[0].train.compilation_cache)  # before the first compile
    with contextlib.ExitStack() as stack:
        dirs = [stack.enter_context(RunDirectory(cfg, w, console=console, account=account))
                for cfg, w in zip(cfgs, workdirs)]
        base, ctx = cfgs[0], dirs[0].ctx
        dataset = load_data(base, ctx)
        for d in dirs[1:]:  # each point's stats.json and preprocess_report.json
            data_stage.write_artifacts(dataset, d.workdir)
        model = make_model(base, dataset)
        check_before_training(base, model, dataset, dirs[0].workdir)
        run = setup_vectorized(cfgs, model, dataset, [d.ctx for d in dirs], [w.name for w in workdirs])
        for lane in run.lanes:
            lane.hooks = build_hooks(lane.cfg, lane.ctx.workdir, stats=dataset.stats,
                                     hyperparams_in_state=lane.hyperparams_in_state,
                                     preemption=lane is run.lanes[0])
            stack.callback(close_all, lane.ctx.account, lane.hooks)
        summaries = fit_lanes(run)
        for d, lane, summary in zip(dirs, run.lanes, summaries):
            summary.update(status="completed", workdir=str(d.workdir))
            finish_summary(d, summary, lane.hooks)
        return summaries
