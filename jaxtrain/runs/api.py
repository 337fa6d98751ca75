"""The Python API: train, evaluate. The CLI is a thin layer over these."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from jaxtrain import data as data_stage
from jaxtrain.data.featurestats import FeatureStats
from jaxtrain.ckpt.checkpoint import has_checkpoint
from jaxtrain.ckpt.params import restore_params
from jaxtrain.ckpt.finetune import init_from
from jaxtrain.config.schema import Config, load_config
from jaxtrain.dist import distributed
from jaxtrain.dist.watchdog import ProgressWatchdog
from jaxtrain.engine import memory
from jaxtrain.engine.compilation import enable_persistent_cache
from jaxtrain.engine.step import split_model
from jaxtrain.model.imported import import_root
from jaxtrain.model.models import build_model
from jaxtrain.runs.resume import (check_device_count, resume_run, resume_source, saved_hyperparams_in_state,
                                  saved_stats)
from jaxtrain.runs.rundir import RunDirectory, default_workdir, write_json
from jaxtrain.training.accounting import breakdown, call_hooks, closing_lines
from jaxtrain.training.evaluator import Evaluator
from jaxtrain.training.hooks import build_hooks
from jaxtrain.training.preflight import check_before_training
from jaxtrain.training.setup import COMPUTE_DTYPES, setup
from jaxtrain.training.loop import fit
from jaxtrain.training.view import RunContext
from jaxtrain.util.errors import NonFiniteError, Preempted, UserError
from jaxtrain.util.events import Console
from jaxtrain.util.time_account import TimeAccount
from jaxtrain.util.workdir import explain_os_error


PYTHON_MODEL_FILE = "python_model.json"  # written by a run trained with train(model=...)


def make_model(cfg: Config, dataset: data_stage.Dataset) -> nnx.Module:
    return _build(cfg, dataset.feature_shape, dataset.image_shape, dataset.num_outputs)


def _build(cfg: Config, feature_shape, image_shape, num_outputs: int) -> nnx.Module:
    return build_model(cfg.model, tuple(feature_shape), num_outputs, seed=cfg.train.seed,
                       image_shape=tuple(image_shape) if image_shape else None,
                       compute_dtype=COMPUTE_DTYPES[cfg.train.precision])


def with_import_root(cfg: Config) -> Config:
    """An imported model's config with the directory its module comes from (model.import_root),
    so that eval, predict and --resume rebuild it from any working directory."""
    if not cfg.model.imported:
        return cfg
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, import_root=import_root(cfg.model)))


def _config(config: Any, overrides: list[str] | dict[str, Any] | None, kw_overrides: dict) -> Config:
    over: dict[str, Any] = {}
    if isinstance(overrides, dict):
        over.update(overrides)
    over.update({k.replace("__", "."): v for k, v in kw_overrides.items()})
    cfg = load_config(config, list(overrides) if isinstance(overrides, list) else None)
    return load_config(cfg, over) if over else cfg


def train(config: str | Path | dict | Config | None = None, *, workdir: str | Path | None = None,
          model: nnx.Module | None = None, dataset: data_stage.Dataset | None = None,
          overrides: list[str] | dict[str, Any] | None = None, console: Console | None = None,
          resume: str | Path | None = None, account: TimeAccount | None = None, **kw_overrides: Any) -> dict:
    """Train and return the run's summary (also written to WORKDIR/summary.json).

    `config` is a YAML path, a config name from configs/, a dict or a Config.
    Keyword overrides use double underscores for dots: `optimizer__learning_rate=0.1`.
    A Python user may pass any `nnx.Module` as `model` and a prepared `dataset`.
    `resume=DIR` continues the run in DIR from its latest checkpoint (see `resume`).
    `account` splits the wall time into parts (`time.breakdown`); the CLI passes one that
    counts the process's start-up.
    """
    account = account or TimeAccount()
    if resume is not None:
        config, workdir = resume_source(resume, config, workdir)
    cfg = _config(config, overrides, kw_overrides)
    if model is None:
        cfg = with_import_root(cfg)
    distributed.initialize(cfg.parallel.distributed)  # a multi-process run joins before any JAX use
    enable_persistent_cache(cfg.train.compilation_cache)  # before the first compile (the model's init)
    lead = distributed.is_lead()  # process 0 writes logs and summaries; all take part in checkpoints
    if resume is None:
        workdir = distributed.same_on_all(str(workdir or default_workdir(cfg)))
    with RunDirectory(cfg, workdir, resuming=resume is not None, lead=lead, console=console,
                      account=account) as rundir:
        try:
            summary = _train_in(rundir, model, dataset)
        except (NonFiniteError, Preempted) as e:
            # No summary.json: it would look like a result. The reason goes into metrics.jsonl.
            rundir.ctx.events.write("failed" if isinstance(e, NonFiniteError) else "preempted", message=str(e))
            raise
        except OSError as e:  # disk full or permissions while saving: one line, exit 2
            rundir.keep = True
            raise (explain_os_error(e, rundir.workdir, "writing the run") or e) from None
        finish_summary(rundir, summary)
    return summary


def finish_summary(rundir: RunDirectory, summary: dict) -> None:
    """The time breakdown into the summary; summary.json written; the closing lines."""
    total_s, parts = breakdown(rundir.ctx.account)
    summary["time"].update(data_s=parts["data"], total_s=total_s, breakdown=parts)
    rundir.write_summary(summary)
    console = rundir.ctx.console
    console.line(f"wrote {rundir.workdir}/summary.json")
    console.line(next_steps(rundir.workdir, rundir.cfg.checkpoint.enabled,
                            python_model=python_model_class(rundir.workdir)))
    for line in closing_lines(summary["perf"], total_s, parts):
        console.line(line)


def load_data(cfg: Config, ctx: RunContext, dataset: data_stage.Dataset | None = None, *,
              stats: FeatureStats | None = None, lead: bool = True) -> data_stage.Dataset:
    """The run's data set (loaded unless given; its time is the account's 'data' part), its
    preprocessing artifacts written to the work directory."""
    with ctx.account.part("data"):
        if dataset is None:
            dataset = data_stage.load_dataset(cfg.data, stats=stats)
        if lead:
            data_stage.write_artifacts(dataset, ctx.workdir)   # stats.json + preprocess_report.json
    ctx.console.line(data_stage.summary(dataset))
    return dataset


def _train_in(rundir: RunDirectory, model: nnx.Module | None, dataset: data_stage.Dataset | None) -> dict:
    """Data, model, checks, setup, hooks, a resume if asked for, and the fit."""
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
    estimate = check_before_training(cfg, model, dataset, rundir.workdir)  # options vs data, memory, disk
    in_state: tuple[str, ...] = ()
    if rundir.resuming:
        check_device_count(checkpoints, cfg)
        # A vectorized sweep's point keeps some optimizer hyperparameters in its state: resume it alike.
        in_state = saved_hyperparams_in_state(checkpoints)
    ctx.watchdog = ProgressWatchdog(cfg.parallel.distributed.collective_timeout_s, jax.process_index(),
                                    jax.process_count(), phase="setting up the run (compiling, restoring)")
    hooks = []
    try:
        run = setup(cfg, model, dataset, ctx, hyperparams_in_state=in_state)
        hooks = build_hooks(cfg, rundir.workdir, stats=dataset.stats, lead=lead, hyperparams_in_state=in_state)
        if rundir.resuming:
            resume_run(run, checkpoints, hooks)
            rundir.write_config(cfg)  # the overrides (say, more epochs) are now part of the run
        summary = fit(run, hooks=hooks)
        summary["memory"] = memory.report(run.state, run.engine.executable(), estimate)
    finally:
        # However training ended: a checkpoint save in flight finishes (it holds a good state)
        # and the signal handlers are put back.
        call_hooks(ctx.account, hooks, "close")
        ctx.watchdog.close()
    summary.update(status="completed", workdir=str(rundir.workdir))
    return summary


def resume(run_dir: str | Path, overrides: list[str] | dict[str, Any] | None = None,
           **kw_overrides: Any) -> dict:
    """Continue the run in `run_dir` from its latest checkpoint; return the new summary."""
    return train(resume=run_dir, overrides=overrides, **kw_overrides)


def load_run(run_dir: str | Path) -> tuple[Config, FeatureStats | None]:
    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise UserError(f"'{run}' is not a jaxtrain run directory (no config.yaml); "
                        f"pass the --workdir of a finished training run")
    cfg = load_config(run / "config.yaml")
    stats = saved_stats(run)
    return cfg, stats


@dataclasses.dataclass
class TrainedRun:
    """A finished run reloaded: its config, data (with the saved preprocessing), model
    parameters on the devices, and an Evaluator to run the model over any inputs."""
    cfg: Config
    stats: FeatureStats | None
    dataset: data_stage.Dataset | None   # None when loaded for predictions only
    evaluator: Evaluator
    params: Any
    rest: Any

    def outputs(self, x: np.ndarray) -> np.ndarray:
        """The model's outputs (logits, or standardized predictions) for preprocessed inputs."""
        return self.evaluator.outputs(self.params, self.rest, x)


def next_steps(workdir: Path, kept_checkpoints: bool, python_model: str | None) -> str:
    """The line printed after training: where the run is and what to do with it."""
    if python_model:
        return (f"run saved in {workdir}; from Python: jaxtrain.evaluate('{workdir}', model=...), and "
                f"report/predict with the same model")
    steps = [f"jaxtrain report {workdir}"] + ([f"jaxtrain eval {workdir}", f"jaxtrain predict {workdir} "
                                              f"--input FILE"] if kept_checkpoints else [])
    return f"run saved in {workdir}; next: " + ", ".join(steps)


def python_model_class(run_dir: str | Path) -> str | None:
    """The class of the `nnx.Module` a run was trained with from Python (`train(model=...)`), if any."""
    path = Path(run_dir) / PYTHON_MODEL_FILE
    return json.loads(path.read_text())["class"] if path.is_file() else None


def load_trained(run_dir: str | Path, with_data: bool = True, model: nnx.Module | None = None) -> TrainedRun:
    """Reload a finished run's saved parameters and preprocessing (shared by eval, report, predict).

    `with_data=False` skips reloading the run's data set: the model's shape comes from the
    saved statistics, which is all `predict` needs (reloading MNIST costs seconds). `model`:
    a fresh instance of the Python model the run was trained with (its parameters are restored)."""
    from jaxtrain.dist import parallel
    cfg, stats = load_run(run_dir)
    ckpt_dir = Path(run_dir) / "checkpoints"
    if not has_checkpoint(ckpt_dir):
        raise UserError(f"run '{run_dir}' has no saved parameters in checkpoints/; "
                        f"train it with checkpoint.enabled: true")
    trained_with = python_model_class(run_dir)
    if model is None and trained_with:
        raise UserError(f"run '{run_dir}' was trained with a Python model ({trained_with}); pass a new "
                        f"instance of it from Python: jaxtrain.evaluate(DIR, model=...), predict or report alike")
    dataset = None
    if with_data or stats is None or not stats.feature_shape:
        dataset = data_stage.load_dataset(cfg.data, stats=stats)
        stats = dataset.stats
    if model is None and dataset is not None:
        model = make_model(cfg, dataset)
    elif model is None:
        outputs = stats.num_classes if stats.task == "classification" else 1
        model = _build(cfg, stats.feature_shape, stats.image_shape, int(outputs))
    _, eval_def, params, rest = split_model(model)
    # With train.ema_decay the run evaluated its moving average: eval and predict use it too.
    params, rest = restore_params(ckpt_dir, params, "params" if cfg.train.ema_decay is None else "ema", rest)
    mesh = parallel.make_mesh(cfg.parallel)
    evaluator = Evaluator(eval_def, mesh, cfg.data.eval_batch_size, dataset)
    params, rest = jax.device_put((params, rest), parallel.replicated(mesh))
    return TrainedRun(cfg=cfg, stats=stats, dataset=dataset, evaluator=evaluator, params=params, rest=rest)


def evaluate(run_dir: str | Path, split: str = "test", model: nnx.Module | None = None) -> dict[str, float]:
    """Re-evaluate a finished run's saved parameters on a split, with its saved preprocessing.
    A run trained with a Python `model` needs a new instance of it here."""
    trained = load_trained(run_dir, model=model)
    dataset = trained.dataset
    splits = {name: part for name, part in (("test", dataset.test), ("val", dataset.val),
                                             ("train", dataset.train)) if part is not None and len(part)}
    if split not in splits:
        raise UserError(f"split '{split}' is not available for run '{run_dir}'; it has "
                        f"{', '.join(splits)}: pass --split {' or --split '.join(splits)}")
    target = splits[split]
    return trained.evaluator.evaluate(trained.params, trained.rest, target)
