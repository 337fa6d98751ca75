"""The Python API: train, evaluate. The CLI is a thin layer over these."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Sequence

import jax
from flax import nnx

from jaxtrain import data as data_stage
from jaxtrain.data.featurestats import FeatureStats
from jaxtrain.ckpt.finetune import init_from
from jaxtrain.config.schema import Config, load_config
from jaxtrain.parallel import distributed
from jaxtrain.parallel.watchdog import ProgressWatchdog
from jaxtrain.engine import memory
from jaxtrain.engine.compilation import enable_persistent_cache
from jaxtrain.data import apply as apply_stats
from jaxtrain.model.metrics import compute_metrics
from jaxtrain.runs.predict import read_user_input
from jaxtrain.engine.plan import make_plan
from jaxtrain.runs.report import write_report
from jaxtrain.runs.resume import (check_device_count, nothing_left, resume_run, resume_source,
                                  saved_hyperparams_in_state, saved_stats)
from jaxtrain.runs.rundir import RunDirectory, default_workdir
from jaxtrain.runs.trained import (PYTHON_MODEL_FILE, fit_model_stats, load_trained, make_model,
                                   python_model_class, with_import_root)
from jaxtrain.training.accounting import closing_lines, time_section
from jaxtrain.training.hooks.dispatch import close_all
from jaxtrain.training.hooks import build_hooks
from jaxtrain.training.hooks.trackers import TrackerHook
from jaxtrain.training.preflight import check_before_training
from jaxtrain.training.setup import setup
from jaxtrain.training.loop import fit
from jaxtrain.training.hooks.protocol import Hook, RunContext
from jaxtrain.util.errors import NonFiniteError, Preempted, UserError, python_api
from jaxtrain.util.events import Console, format_metrics
from jaxtrain.util.files import write_json
from jaxtrain.util.clock import RunClock
from jaxtrain.util.workdir import explain_os_error

def _config(config: Any, overrides: list[str] | dict[str, Any] | None, kw_overrides: dict) -> Config:
    over: dict[str, Any] = {}
    if isinstance(overrides, dict):
        over.update(overrides)
    over.update({k.replace("__", "."): v for k, v in kw_overrides.items()})
    cfg = load_config(config, list(overrides) if isinstance(overrides, list) else None)
    return load_config(cfg, over) if over else cfg


@python_api
def train(config: str | Path | dict | Config | None = None, *, workdir: str | Path | None = None,
          model: nnx.Module | None = None, dataset: data_stage.Dataset | None = None,
          overrides: list[str] | dict[str, Any] | None = None, verbose: int = 1, console: Console | None = None,
          resume: str | Path | None = None, clock: RunClock | None = None,
          hooks: Sequence[Hook] = (), **kw_overrides: Any) -> dict:
    """Train and return the run's summary (also written to WORKDIR/summary.json).

    `verbose`: 0 prints nothing, 1 a line per epoch and the results, 2 progress too (the
    CLI's); a given `console` decides instead.

    `config` is a YAML path, a config name from configs/, a dict or a Config.
    Keyword overrides use double underscores for dots: `optimizer__learning_rate=0.1`.
    A Python user may pass any `nnx.Module` as `model` and a prepared `dataset`.
    `resume=DIR` continues the run in DIR from its latest checkpoint (see `resume`).
    `clock` is the run's clock (`time.breakdown`); the CLI passes one that counts the
    process's start-up. `hooks` run after the config's own (a search's pruning).
    """
    clock = clock or RunClock()
    if resume is not None:
        config, workdir = resume_source(resume, config, workdir)
    cfg = _config(config, overrides, kw_overrides)
    if model is None:
        cfg = with_import_root(cfg)
    distributed.initialize(cfg.parallel.distributed)  # a multi-process run joins before any JAX use
    enable_persistent_cache(cfg.train.compilation_cache)  # before the first compile (the model's init)
    lead = distributed.is_lead()  # process 0 writes logs and summaries; all take part in checkpoints
    console = console or Console(cfg.logging.progress if lead else "none", verbose=check_verbose(verbose))
    if resume is None:
        workdir = distributed.same_on_all(str(workdir or default_workdir(cfg)))
    with RunDirectory(cfg, workdir, resuming=resume is not None, lead=lead, console=console,
                      clock=clock) as rundir:
        try:
            summary, hooks = _train_in(rundir, model, dataset, hooks)
        except (NonFiniteError, Preempted) as e:
            # No summary.json: it would look like a result. The reason goes into metrics.jsonl.
            rundir.ctx.events.write("failed" if isinstance(e, NonFiniteError) else "preempted", message=str(e))
            raise
        except OSError as e:  # disk full or permissions while saving: one line, exit 2
            rundir.keep = True
            raise (explain_os_error(e, rundir.workdir, "writing the run") or e) from None
        if summary.get("status") == "unchanged":
            rundir.ctx.console.line(f"{rundir.workdir}/summary.json unchanged: nothing was trained")
            return saved_summary(rundir.workdir) or summary
        finish_summary(rundir, summary, hooks)
    return summary


def saved_summary(workdir: Path) -> dict | None:
    """The summary.json a run wrote, or None."""
    try:
        return json.loads((Path(workdir) / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def finish_summary(rundir: RunDirectory, summary: dict, hooks: list[Hook] = ()) -> None:
    """The time breakdown into the summary; summary.json written; the experiment trackers
    among `hooks` finished; the closing lines."""
    summary["time"] = time_section(rundir.ctx.clock)
    rundir.write_summary(summary)
    console = rundir.ctx.console
    console.line(f"wrote {rundir.workdir}/summary.json")
    finish_trackers(hooks, summary, rundir.workdir, console)
    console.line(next_steps(rundir.workdir, rundir.cfg.checkpoint.enabled,
                            python_model=python_model_class(rundir.workdir)))
    for line in closing_lines(summary["perf"], summary["time"]["total_s"], summary["time"]["breakdown"]):
        console.line(line)


def load_data(cfg: Config, ctx: RunContext, dataset: data_stage.Dataset | None = None, *,
              stats: FeatureStats | None = None, lead: bool = True) -> data_stage.Dataset:
    """The run's data set (loaded unless given; its time is the clock's 'data' phase), its
    preprocessing artifacts written to the work directory."""
    with ctx.clock.phase("data"):
        if dataset is None:
            dataset = data_stage.load_dataset(cfg.data, stats=stats)
        fit_model_stats(cfg, dataset)   # into stats.json: the bin edges of model.numeric_embedding
        if lead:
            data_stage.write_artifacts(dataset, ctx.workdir)   # stats.json + preprocess_report.json
    ctx.console.line(data_stage.summary(dataset))
    return dataset


def _train_in(rundir: RunDirectory, model: nnx.Module | None, dataset: data_stage.Dataset | None,
              extra_hooks: Sequence[Hook] = ()) -> tuple[dict, list[Hook]]:
    """Data, model, checks, setup, hooks, a resume if asked for, and the fit: the summary, and
    the hooks (the experiment trackers finish after summary.json is written)."""
    cfg, ctx, lead = rundir.cfg, rundir.ctx, rundir.lead
    checkpoints = rundir.workdir / "checkpoints"
    dataset = load_data(cfg, ctx, dataset, stats=saved_stats(rundir.workdir) if rundir.resuming else None,
                        lead=lead)
    if model is None:
        model = make_model(cfg, dataset)
    elif lead:  # eval, report and predict need this model again: say which it was
        write_json(rundir.workdir / PYTHON_MODEL_FILE,
                   {"class": f"{type(model).__module__}.{type(model).__qualname__}"})
    if cfg.model.init_from:  # fine-tuning: matching parameters from a trained run
        init_from(model, cfg.model.init_from, ctx.console, ctx.events)
    plan = make_plan(cfg, dataset)  # steps, batches, K, on-device: every part reads them from here
    estimate = check_before_training(cfg, model, dataset, rundir.workdir, plan)  # options vs data, memory, disk
    in_state: tuple[str, ...] = ()
    if rundir.resuming:
        check_device_count(checkpoints, cfg, plan)
        # A vectorized sweep's point keeps some optimizer hyperparameters in its state: resume it alike.
        in_state = saved_hyperparams_in_state(checkpoints)
    ctx.watchdog = ProgressWatchdog(cfg.parallel.distributed.collective_timeout_s, jax.process_index(),
                                    jax.process_count(), phase="setting up the run (compiling, restoring)")
    hooks, trained = [], False
    try:
        run = setup(cfg, model, dataset, ctx, hyperparams_in_state=in_state, plan=plan)
        hooks = build_hooks(cfg, rundir.workdir, stats=dataset.stats, lead=lead, hyperparams_in_state=in_state)
        hooks += extra_hooks
        if rundir.resuming:
            resume_run(run, checkpoints, hooks)
            rundir.write_config(cfg)  # the overrides (say, more epochs) are now part of the run
        unchanged = rundir.resuming and nothing_left(run)
        summary = fit(run, hooks=hooks)
        if unchanged:  # the summary.json of the finished run stays as it was
            return {**summary, "status": "unchanged"}, hooks
        summary["memory"] = memory.report(run.state, run.engine.executable(), estimate)
        trained = True
    finally:
        # However training ended: a checkpoint save in flight finishes (it holds a good state)
        # and the signal handlers are put back. After a normal end the trackers stay open
        # until summary.json and the report are written (finish_summary).
        close_all(ctx.clock, [h for h in hooks if not (trained and isinstance(h, TrackerHook))])
        ctx.watchdog.close()
    summary.update(status="completed", workdir=str(rundir.workdir))
    return summary, hooks


def finish_trackers(hooks: list, summary: dict, workdir: Path, console: Console) -> None:
    """Hand the experiment trackers the summary, summary.json and the report's plots (the
    report is written here; it needs matplotlib and, for a Python model, that model)."""
    trackers = [h for h in hooks if isinstance(h, TrackerHook)]
    if not trackers:
        return
    files = [workdir / "summary.json"]
    if importlib.util.find_spec("matplotlib") is None:
        console.line("trackers: no report plots without matplotlib (pip install 'jaxtrain[report]')")
    elif python_model_class(workdir):
        console.line("trackers: no report plots for a run trained with a Python model; "
                     "jaxtrain.runs.report.write_report(DIR, model=...) writes them")
    else:
        files += [path for path in write_report(workdir) if path.suffix == ".png"]
    for tracker in trackers:
        tracker.finish(summary, files)


def check_verbose(verbose: int) -> int:
    if verbose not in (0, 1, 2):
        raise UserError(f"verbose={verbose!r}: pass 0 (silent), 1 (a line per epoch) or 2 (progress too)")
    return verbose


@python_api
def resume(run_dir: str | Path, overrides: list[str] | dict[str, Any] | None = None, *, verbose: int = 1,
           **kw_overrides: Any) -> dict:
    """Continue the run in `run_dir` from its latest checkpoint; return the new summary."""
    return train(resume=run_dir, overrides=overrides, verbose=verbose, **kw_overrides)


def next_steps(workdir: Path, kept_checkpoints: bool, python_model: str | None) -> str:
    """The line printed after training: where the run is and what to do with it."""
    if python_model:
        return (f"run saved in {workdir}; from Python: jaxtrain.evaluate('{workdir}', model=...), and "
                f"report/predict with the same model")
    steps = [f"jaxtrain report {workdir}"] + ([f"jaxtrain eval {workdir}", f"jaxtrain predict {workdir} "
                                              f"--input FILE"] if kept_checkpoints else [])
    return f"run saved in {workdir}; next: " + ", ".join(steps)


@python_api
def evaluate(run_dir: str | Path, split: str | None = None, model: nnx.Module | None = None, *,
             input: str | Path | None = None, verbose: int = 1) -> dict[str, float]:
    """Re-evaluate a finished run's saved parameters on a split of its data (default test),
    or on a labeled file `input` (CSV, .npz, IDX), with its saved preprocessing. A run
    trained with a Python `model` needs a new instance of it here. `verbose`: 1 prints the
    metrics as one line, 0 nothing."""
    check_verbose(verbose)
    if input is not None:
        if split is not None:
            raise UserError("evaluate takes a split or an input file, not both")
        name, metrics = "input", _evaluate_file(run_dir, input, model)
    else:
        name, metrics = split or "test", _evaluate_split(run_dir, split or "test", model)
    Console("plain", verbose=verbose).line(f"{name} " + format_metrics(metrics))
    return metrics


def _evaluate_split(run_dir: str | Path, split: str, model: nnx.Module | None) -> dict[str, float]:
    trained = load_trained(run_dir, model=model)
    dataset = trained.dataset
    splits = {name: part for name, part in (("test", dataset.test), ("val", dataset.val),
                                             ("train", dataset.train)) if part is not None and len(part)}
    if split not in splits:
        raise UserError(f"split '{split}' is not available for run '{run_dir}'; it has "
                        f"{', '.join(splits)}: pass --split {' or --split '.join(splits)}")
    target = splits[split]
    return trained.evaluator.evaluate(trained.params, trained.rest, target)


def _evaluate_file(run_dir: str | Path, path: str | Path, model: nnx.Module | None) -> dict[str, float]:
    """The metrics of the run's model on a labeled file, read as `predict` reads its input."""
    trained = load_trained(run_dir, with_data=False, model=model)
    stats = trained.stats
    data = read_user_input(trained, path, labels=True)
    in_csv = stats.is_table and Path(path).suffix != ".npz"
    where = f"{path} column '{trained.cfg.data.target}'" if in_csv else str(path)
    y = apply_stats.label_targets(stats, data.labels, where)
    return compute_metrics(stats.task, trained.outputs(data.x), y, stats.target_mean, stats.target_scale)
