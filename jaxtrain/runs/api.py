"""The Python API: train, evaluate. The CLI is a thin layer over these."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from jaxtrain import data as data_stage
from jaxtrain.data.featurestats import FeatureStats
from jaxtrain.dist import distributed
from jaxtrain.engine.compilation import enable_persistent_cache
from jaxtrain.dist.watchdog import ProgressWatchdog
from jaxtrain.ckpt.checkpoint import has_checkpoint
from jaxtrain.ckpt.params import restore_params
from jaxtrain.config.schema import Config, dump_yaml, load_config
from jaxtrain.util.errors import NonFiniteError, Preempted, UserError
from jaxtrain.training.guard import NonFiniteGuard
from jaxtrain.training.preflight import check_before_training
from jaxtrain.training.signals import PreemptionHook
from jaxtrain.util.workdir import WorkdirLock, check_writable, explain_os_error
from jaxtrain.ckpt.finetune import init_from
from jaxtrain.training import profiling
from jaxtrain.training.accounting import breakdown, closing_lines
from jaxtrain.util.time_account import TimeAccount
from jaxtrain.training.hooks import strategy_hooks
from jaxtrain.training.hooks.tensorboard import logging_hooks
from jaxtrain.util.events import Console, JsonlWriter
from jaxtrain.training.loop import COMPUTE_DTYPES, Evaluator, RunContext, fit, setup
from jaxtrain.model.imported import import_root
from jaxtrain.model.models import build_model
from jaxtrain.runs.resume import check_device_count, resume_run, resume_source, saved_stats
from jaxtrain.engine import memory
from jaxtrain.engine.step import split_model


PYTHON_MODEL_FILE = "python_model.json"  # written by a run trained with train(model=...)


def default_workdir(cfg: Config, suffix: str = "") -> Path:
    """runs/<time>-<config name><suffix>: where a run writes unless given a --workdir."""
    return Path("runs") / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{cfg.name}{suffix}"


def prepare_workdir(path: str | Path) -> Path:
    workdir = Path(path)
    if (workdir / "config.yaml").exists():
        # Never overwrite a run's results by accident.
        raise UserError(f"work directory '{workdir}' already holds a run; pass a new --workdir "
                        f"(or resume it with --resume)")
    return check_writable(workdir)


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


def write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, default=float) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)  # atomic: a reader never sees half a file


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
    over: dict[str, Any] = {}
    if isinstance(overrides, dict):
        over.update(overrides)
    over.update({k.replace("__", "."): v for k, v in kw_overrides.items()})
    if resume is not None:
        config, workdir = resume_source(resume, config, workdir)
    cfg = load_config(config, list(overrides) if isinstance(overrides, list) else None)
    if over:
        cfg = load_config(cfg, over)
    if model is None:
        cfg = with_import_root(cfg)
    distributed.initialize(cfg.parallel.distributed)  # a multi-process run joins before any JAX use
    enable_persistent_cache(cfg.train.compilation_cache)  # before the first compile (the model's init)
    lead = distributed.is_lead()  # process 0 writes logs and summaries; all take part in checkpoints
    if resume is None:
        workdir = distributed.same_on_all(str(workdir or default_workdir(cfg)))
    # What the directory held before this call: a run rejected before training undoes its writes.
    existing = set(p.name for p in Path(workdir).iterdir()) if Path(workdir).is_dir() else None
    workdir = Path(workdir) if resume is not None or not lead else prepare_workdir(workdir)
    # One live run per directory (exit 2 otherwise); the kernel frees it if this process dies.
    lock = WorkdirLock(workdir).acquire() if lead else None
    console = console or Console(cfg.logging.progress if lead else "none")
    if lead and resume is None:  # a resume rewrites it only once its checkpoint fits (below)
        write_text_atomic(workdir / "config.yaml", dump_yaml(cfg))  # a kill never leaves half of it
    events = JsonlWriter(workdir / "metrics.jsonl" if lead else None)
    hooks: list = []
    abandoned = False
    watchdog = None
    try:
        with account.part("data"):
            if dataset is None:
                dataset = data_stage.load_dataset(cfg.data, stats=saved_stats(workdir) if resume else None)
            if lead:
                data_stage.write_artifacts(dataset, workdir)   # stats.json + preprocess_report.json
        console.line(data_stage.summary(dataset))
        if model is None:
            model = make_model(cfg, dataset)
        elif lead:  # eval, report and predict need this model again: say which it was
            write_json(workdir / PYTHON_MODEL_FILE, {"class": f"{type(model).__module__}.{type(model).__qualname__}"})
        if cfg.model.init_from:  # fine-tuning: matching parameters from a trained run
            init_from(model, cfg.model.init_from, console, events)
        estimate = check_before_training(cfg, model, dataset, workdir)  # options vs data, memory, disk
        if resume is not None:
            check_device_count(workdir / "checkpoints", cfg)
        watchdog = ProgressWatchdog(cfg.parallel.distributed.collective_timeout_s, jax.process_index(),
                                    jax.process_count(), phase="setting up the run (compiling, restoring)")
        run = setup(cfg, model, dataset, RunContext(console=console, events=events, workdir=workdir,
                                                    account=account, watchdog=watchdog))
        guard = NonFiniteGuard(cfg.train.on_nonfinite)
        hooks = strategy_hooks(cfg, workdir, stateful=[guard])  # early stopping, checkpoints
        hooks += profiling.hooks_for(cfg, workdir)  # train.profile: step-time breakdown and trace
        hooks += logging_hooks(cfg, workdir if lead else None)  # TensorBoard
        if resume is not None:
            resume_run(run, workdir / "checkpoints", [guard, *hooks])
            if lead:  # the overrides (say, more epochs) are now part of the run
                write_text_atomic(workdir / "config.yaml", dump_yaml(cfg))
        # The guard goes first (nothing non-finite is saved), the preemption hook last (after the save).
        hooks = [guard, *hooks, PreemptionHook()]
        summary = fit(run, hooks=hooks)
        summary["memory"] = memory.report(run.state, run.engine.executable(), estimate)
        summary["status"] = "completed"
        summary["workdir"] = str(workdir)
        total_s, parts = breakdown(account)
        summary["time"].update(data_s=parts["data"], total_s=total_s, breakdown=parts)
        if lead:
            write_json(workdir / "summary.json", summary)
        events.write("summary", **{k: v for k, v in summary.items() if k in ("test", "train", "time", "perf")})
        console.line(f"wrote {workdir}/summary.json")
        console.line(next_steps(workdir, cfg.checkpoint.enabled, python_model=python_model_class(workdir)))
        for line in closing_lines(summary["perf"], total_s, parts):
            console.line(line)
        return summary
    except (NonFiniteError, Preempted) as e:
        # No summary.json: it would look like a result. The reason goes into metrics.jsonl.
        events.write("failed" if isinstance(e, NonFiniteError) else "preempted", message=str(e))
        raise
    except OSError as e:  # disk full or permissions while saving: one line, exit 2
        raise (explain_os_error(e, workdir, "writing the run") or e) from None
    except UserError:
        # Rejected before anything was trained (bad data, options that clash): remove what
        # this call wrote, so that fixing the mistake and running the same command again
        # works. Nothing is lost: that is only the rejected config and empty logs.
        abandoned = resume is None and lead and not has_checkpoint(workdir / "checkpoints")
        raise
    finally:
        # However training ended: a checkpoint save in flight finishes (it holds a good state)
        # and the signal handlers are put back.
        for hook in hooks:
            getattr(hook, "close", lambda: None)()
        if watchdog is not None:
            watchdog.close()
        events.close()
        if lock is not None:
            lock.release()
        if abandoned:
            _undo_writes(workdir, existing)


def resume(run_dir: str | Path, overrides: list[str] | dict[str, Any] | None = None,
           **kw_overrides: Any) -> dict:
    """Continue the run in `run_dir` from its latest checkpoint; return the new summary."""
    return train(resume=run_dir, overrides=overrides, **kw_overrides)


def _undo_writes(workdir: Path, existing: set[str] | None) -> None:
    """Remove what a rejected run added to `workdir` (all of it, if the run created it)."""
    if existing is None:
        shutil.rmtree(workdir, ignore_errors=True)
        return
    for path in workdir.iterdir():
        if path.name in existing:
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


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
