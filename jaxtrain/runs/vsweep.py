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
from typing import Callable

import jax
import jax.numpy as jnp

from jaxtrain import data as data_stage
from jaxtrain.config.schema import Config, to_dict
from jaxtrain.model.optim import VECTOR_FIELDS
from jaxtrain.runs.api import finish_summary, load_data
from jaxtrain.runs.trained import make_model
from jaxtrain.engine.compilation import enable_persistent_cache
from jaxtrain.runs.rundir import RunDirectory
from jaxtrain.training.hooks import build_hooks
from jaxtrain.training.hooks.dispatch import close_all
from jaxtrain.training.hooks.protocol import Hook
from jaxtrain.training.run import Lane, Run
from jaxtrain.training.loop import fit_lanes
from jaxtrain.training.preflight import check_before_training
from jaxtrain.training.setup import setup_vectorized
from jaxtrain.util.events import Console
from jaxtrain.engine.plan import make_plan
from jaxtrain.util.clock import RunClock


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


def train_vectorized(cfgs: list[Config], workdirs: list[Path], console: Console | None = None,
                     extra_hooks: list[list[Hook]] | None = None,
                     leaves: Callable[[Lane], bool] | None = None) -> list[dict]:
    """Train points that differ only in VECTOR_FIELDS in one program; return their summaries.

    `extra_hooks`: each point's hooks after the config's own. `leaves`: whether a lane's hooks
    took it out of the population (a search's pruning). When a lane leaves, the lanes left
    continue as a new, smaller population (the stopped ones cost nothing more)."""
    console = console or Console("none")
    clock = RunClock()  # the points train together: one clock for all
    enable_persistent_cache(cfgs[0].train.compilation_cache)  # before the first compile
    with contextlib.ExitStack() as stack:
        dirs = [stack.enter_context(RunDirectory(cfg, w, console=console, clock=clock))
                for cfg, w in zip(cfgs, workdirs)]
        base, ctx = cfgs[0], dirs[0].ctx
        dataset = load_data(base, ctx)
        for d in dirs[1:]:  # each point's stats.json and preprocess_report.json
            data_stage.write_artifacts(dataset, d.workdir)
        model = make_model(base, dataset)
        plan = make_plan(base, dataset, points=len(cfgs))
        check_before_training(base, model, dataset, dirs[0].workdir, plan)
        run = setup_vectorized(cfgs, model, dataset, [d.ctx for d in dirs], [w.name for w in workdirs], plan)
        for i, lane in enumerate(run.lanes):
            lane.hooks = build_hooks(lane.cfg, lane.ctx.workdir, stats=dataset.stats,
                                     hyperparams_in_state=lane.hyperparams_in_state,
                                     preemption=lane is run.lanes[0])
            lane.hooks += list(extra_hooks[i]) if extra_hooks else []
            stack.callback(close_all, lane.ctx.clock, lane.hooks)
        summaries: dict[int, dict] = {}
        position = {id(lane): i for i, lane in enumerate(run.lanes)}
        while True:
            results = fit_lanes(run)
            left = {id(lane) for lane in run.lanes if leaves is not None and leaves(lane)}
            done_all = (run.stop_reason is None or not left or len(left) == len(run.lanes)
                        or run.epoch >= base.train.epochs)
            for lane, summary in zip(run.lanes, results):
                if done_all or id(lane) in left:
                    summary.update(status="completed", workdir=str(lane.ctx.workdir))
                    finish_summary(dirs[position[id(lane)]], summary, lane.hooks)
                    summaries[position[id(lane)]] = summary
            if done_all:
                return [summaries[i] for i in range(len(cfgs))]
            run = compact(run, [lane for lane in run.lanes if id(lane) not in left], model)


def compact(run: Run, keep: list[Lane], model) -> Run:
    """A population of the lanes in `keep` (their states, hooks and records), rebuilt at an epoch
    boundary: its program computes only them from here on."""
    new = setup_vectorized([lane.cfg for lane in keep], model, run.dataset, [lane.ctx for lane in keep],
                           [lane.name for lane in keep], varying=run.lanes[0].hyperparams_in_state)
    rows = jnp.asarray([lane.index for lane in keep])
    new.state = new.engine.executor.layout.place_state(jax.tree.map(lambda a: a[rows], run.state))
    for i, lane in enumerate(keep):
        lane.index = i
    new.lanes = keep
    new.epoch, new.step_in_epoch, new.global_step = run.epoch, run.step_in_epoch, run.global_step
    return new
