"""One orchestrator for N >= 1 lanes: a run, the points of a vectorized sweep, a search's population.

`train_lanes` resolves the configs, opens each lane's run directory, loads the data once,
builds the model, makes the plan once, checks the run before anything compiles, sets it
up (stacked only when N > 1: training/setup.py), builds each lane's hooks, fits, and
finishes each lane (summary.json, the experiment trackers, the closing lines). `train`
(api.py), `run_sweep` (sweep.py) and `search` (search.py) all train through it, and a
search's pruning rebuilds a smaller population through `compact`. Whatever N, a lane's
directory is a complete run directory: `jaxtrain train --resume LANE` continues it.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtrain import data as data_stage
from jaxtrain.ckpt.finetune import init_from
from jaxtrain.config.schema import Config
from jaxtrain.data.featurestats import FeatureStats
from jaxtrain.engine import memory
from jaxtrain.engine.compilation import enable_persistent_cache
from jaxtrain.engine.plan import make_plan
from jaxtrain.parallel import distributed
from jaxtrain.parallel.watchdog import ProgressWatchdog
from jaxtrain.runs.finish import finish_summary, saved_summary
from jaxtrain.runs.resume import nothing_left, resume_point, resume_run, saved_stats
from jaxtrain.runs.rundir import RunDirectory, default_workdir
from jaxtrain.runs.trained import PYTHON_MODEL_FILE, fit_model_stats, make_model, with_import_root
from jaxtrain.training.hooks import build_hooks
from jaxtrain.training.hooks.dispatch import close_all
from jaxtrain.training.context import RunContext
from jaxtrain.training.hooks.protocol import Hook
from jaxtrain.training.hooks.trackers import TrackerHook
from jaxtrain.training.loop import fit_lanes
from jaxtrain.training.preflight import check_before_training
from jaxtrain.training.run import Lane, Run
from jaxtrain.training.setup import setup
from jaxtrain.util.clock import RunClock
from jaxtrain.util.errors import NonFiniteError, Preempted
from jaxtrain.util.events import Console, check_verbose
from jaxtrain.util.files import write_json
from jaxtrain.util.phases import Phase
from jaxtrain.util.workdir import explain_os_error

Leaves = Callable[[Lane], bool]


def train_lanes(cfgs: Sequence[Config], workdirs: Sequence[str | Path | None], *,
                model: nnx.Module | None = None, dataset: data_stage.Dataset | None = None,
                console: Console | None = None, verbose: int = 1, clock: RunClock | None = None,
                resuming: bool = False, extra_hooks: Sequence[Sequence[Hook]] | None = None,
                leaves: Leaves | None = None) -> list[dict]:
    """Train one lane per config (configs that differ only in optimizer VECTOR_FIELDS when
    there are several) in one program; each lane's summary, as written to its summary.json.

    `model`/`dataset`: a Python user's (or a search's data, loaded once); `clock`: the lanes'
    one clock (the CLI's counts the process's start-up); `resuming`: one lane, continued in
    its directory; `extra_hooks`: each lane's hooks after the config's own; `leaves`: whether
    a lane's hooks took it out of the population (a search's pruning): the lanes left go on
    as a smaller population."""
    if model is None:  # eval, predict and --resume rebuild an imported model from any directory
        cfgs = [with_import_root(cfg) for cfg in cfgs]
    base = cfgs[0]
    distributed.initialize(base.parallel.distributed)  # a multi-process run joins before any JAX use
    enable_persistent_cache(base.train.compilation_cache)  # before the first compile (the model's init)
    lead = distributed.is_lead()  # process 0 writes logs and summaries; all take part in checkpoints
    console = console or Console(base.logging.progress if lead else "none", verbose=check_verbose(verbose))
    if not resuming:
        workdirs = [distributed.same_on_all(str(w or default_workdir(c))) for c, w in zip(cfgs, workdirs)]
    clock = clock or RunClock()  # the lanes train together: one clock for all
    with contextlib.ExitStack() as stack:
        dirs = [stack.enter_context(RunDirectory(cfg, w, resuming=resuming, lead=lead, console=console,
                                                 clock=clock)) for cfg, w in zip(cfgs, workdirs)]
        with _failures(dirs):
            return _train_in(dirs, model, dataset, extra_hooks, leaves)


@contextlib.contextmanager
def _failures(dirs: list[RunDirectory]) -> Iterator[None]:
    """A failed run's reason in each lane's metrics.jsonl (no summary.json: it would look like a
    result); a disk full or a permission refused while saving as one line (exit 2)."""
    try:
        yield
    except (NonFiniteError, Preempted) as e:
        for d in dirs:
            d.ctx.events.write("failed" if isinstance(e, NonFiniteError) else "preempted", message=str(e))
        raise
    except OSError as e:
        for d in dirs:
            d.keep = True
        raise (explain_os_error(e, dirs[0].workdir, "writing the run") or e) from None


def load_data(cfg: Config, ctx: RunContext, dataset: data_stage.Dataset | None = None, *,
              stats: FeatureStats | None = None, lead: bool = True) -> data_stage.Dataset:
    """The run's data set (loaded unless given; its time is the clock's 'data' phase), its
    preprocessing artifacts written to the work directory."""
    # The data loads before there is a loop to move the clock: the orchestrator charges it.
    with ctx.clock.phase(Phase.DATA):
        if dataset is None:
            dataset = data_stage.load_dataset(cfg.data, stats=stats)
        fit_model_stats(cfg, dataset)   # into stats.json: the bin edges of model.numeric_embedding
        if lead:
            data_stage.write_artifacts(dataset, ctx.workdir)   # stats.json + preprocess_report.json
    ctx.console.line(data_stage.summary(dataset))
    return dataset


def _model(dirs: list[RunDirectory], model: nnx.Module | None, dataset: data_stage.Dataset) -> nnx.Module:
    """The config's model (or the Python user's, named in each directory), fine-tuned from a
    trained run's parameters when asked."""
    first = dirs[0]
    if model is None:
        model = make_model(first.cfg, dataset)
    elif first.lead:  # eval, report and predict need this model again: say which it was
        for d in dirs:
            write_json(d.workdir / PYTHON_MODEL_FILE,
                       {"class": f"{type(model).__module__}.{type(model).__qualname__}"})
    if first.cfg.model.init_from:  # fine-tuning: matching parameters from a trained run
        init_from(model, first.cfg.model.init_from, first.ctx.console, first.ctx.events)
    return model


def _train_in(dirs: list[RunDirectory], model: nnx.Module | None, dataset: data_stage.Dataset | None,
              extra_hooks: Sequence[Sequence[Hook]] | None, leaves: Leaves | None) -> list[dict]:
    """Data, model, plan, checks, setup, hooks, a resume if asked for, the fit and each lane's end."""
    first, several = dirs[0], len(dirs) > 1
    cfg, ctx, lead = first.cfg, first.ctx, first.lead
    dataset = load_data(cfg, ctx, dataset, stats=saved_stats(first.workdir) if first.resuming else None,
                        lead=lead)
    for d in dirs[1:] if lead else ():  # each lane's stats.json and preprocess_report.json
        data_stage.write_artifacts(dataset, d.workdir)
    model = _model(dirs, model, dataset)
    plan = make_plan(cfg, dataset, points=len(dirs) if several else None)  # every part reads it from here
    estimate = check_before_training(cfg, model, dataset, first.workdir, plan)  # options vs data, memory, disk
    point = resume_point(first.workdir / "checkpoints", cfg, plan) if first.resuming else None  # read once
    # A vectorized sweep's point keeps some optimizer hyperparameters in its state: resume it alike.
    in_state = point.meta.hyperparams_in_state if point else None
    watchdog = ProgressWatchdog(cfg.parallel.distributed.collective_timeout_s, jax.process_index(),
                                jax.process_count(), phase="setting up the run (compiling, restoring)")
    for d in dirs:
        d.ctx.watchdog = watchdog
    lanes = [Lane(d.cfg, d.ctx, name=d.workdir.name) for d in dirs] if several else None
    ends = _LaneEnds(dirs, estimate)
    try:
        run = setup(cfg, model, dataset, ctx, plan=plan, hyperparams_in_state=in_state, points=lanes)
        ends.lanes = list(run.lanes)
        for i, lane in enumerate(run.lanes):
            lane.hooks = build_hooks(lane.cfg, lane.ctx.workdir, stats=dataset.stats, lead=lead,
                                     hyperparams_in_state=lane.hyperparams_in_state, preemption=i == 0)
            lane.hooks += list(extra_hooks[i]) if extra_hooks else []
        if first.resuming:
            resume_run(run, point, first.workdir / "checkpoints", run.lanes[0].hooks)
            first.write_config(cfg)  # the overrides (say, more epochs) are now part of the run
            ends.unchanged = nothing_left(run)
        return _fit(run, model, ends, leaves)
    finally:
        # However training ended: a checkpoint save in flight finishes (it holds a good state)
        # and the signal handlers are put back.
        ends.close_unfinished()
        watchdog.close()


class _LaneEnds:
    """How each lane ends: its hooks closed (a save in flight finishes), then its summary
    written and its trackers finished; the lanes a failure left unfinished closed as failed."""

    def __init__(self, dirs: list[RunDirectory], estimate: dict):
        self.dirs, self.estimate = dirs, estimate
        self.lanes: list[Lane] = []
        self.summaries: dict[int, dict] = {}
        self.unchanged = False  # a resume with nothing left to train: summary.json stays as it was

    def finish(self, run: Run, lane: Lane, summary: dict) -> None:
        where = next(i for i, one in enumerate(self.lanes) if one is lane)
        rundir = self.dirs[where]
        if self.unchanged:
            close_all(lane.ctx.clock, lane.hooks)
            rundir.ctx.console.line(f"{rundir.workdir}/summary.json unchanged: nothing was trained")
            self.summaries[where] = saved_summary(rundir.workdir) or {**summary, "status": "unchanged"}
            return
        summary["memory"] = memory.report(run.state, run.engine.executable(), self.estimate)
        summary.update(status="completed", workdir=str(rundir.workdir))
        # The trackers stay open until summary.json and the report are written (finish_summary).
        close_all(lane.ctx.clock, [h for h in lane.hooks if not isinstance(h, TrackerHook)])
        finish_summary(rundir, summary, lane.hooks)
        self.summaries[where] = summary

    def close_unfinished(self) -> None:
        for where, lane in enumerate(self.lanes):
            if where not in self.summaries:
                close_all(lane.ctx.clock, lane.hooks)


def _fit(run: Run, model: nnx.Module, ends: _LaneEnds, leaves: Leaves | None) -> list[dict]:
    """Fit to the end; when some lanes leave (a search's pruning), finish them there and go
    on with the others as a new, smaller population (the stopped ones cost nothing more)."""
    while True:
        results = fit_lanes(run)
        left = {id(lane) for lane in run.lanes if leaves is not None and leaves(lane)}
        done_all = (run.stop_reason is None or not left or len(left) == len(run.lanes)
                    or run.epoch >= run.cfg.train.epochs)
        for lane, summary in zip(run.lanes, results):
            if done_all or id(lane) in left:
                ends.finish(run, lane, summary)
        if done_all:
            return [ends.summaries[i] for i in range(len(ends.lanes))]
        run = compact(run, [lane for lane in run.lanes if id(lane) not in left], model)


def compact(run: Run, keep: list[Lane], model: nnx.Module) -> Run:
    """A population of the lanes in `keep` (their states, hooks and records), rebuilt at an epoch
    boundary from the run's plan: its program computes only them from here on."""
    rows = jnp.asarray([lane.index for lane in keep])
    plan = dataclasses.replace(run.plan, points=len(keep))
    new = setup(keep[0].cfg, model, run.dataset, keep[0].ctx, plan=plan,
                hyperparams_in_state=run.lanes[0].hyperparams_in_state, points=keep)
    new.state = new.engine.executor.layout.place_state(jax.tree.map(lambda a: a[rows], run.state))
    new.epoch, new.step_in_epoch, new.global_step = run.epoch, run.step_in_epoch, run.global_step
    return new
