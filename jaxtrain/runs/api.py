"""The Python API: train, evaluate. The CLI is a thin layer over these."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from flax import nnx

from jaxtrain import data as data_stage
from jaxtrain.config.schema import Config, load_config
from jaxtrain.data import user_input
from jaxtrain.model.metrics import compute_metrics
from jaxtrain.runs.lanes import train_lanes
from jaxtrain.runs.predict import read_user_input
from jaxtrain.runs.resume import resume_source
from jaxtrain.runs.trained import load_trained
from jaxtrain.training.hooks.protocol import Hook
from jaxtrain.util.clock import RunClock
from jaxtrain.util.errors import Arg, UserError, either
from jaxtrain.util.events import Console, check_verbose, format_metrics

def _config(config: Any, overrides: list[str] | dict[str, Any] | None, kw_overrides: dict) -> Config:
    over: dict[str, Any] = {}
    if isinstance(overrides, dict):
        over.update(overrides)
    over.update({k.replace("__", "."): v for k, v in kw_overrides.items()})
    if config is None and not isinstance(overrides, list):   # one load: the default named from its data
        return load_config(None, over or None)
    cfg = load_config(config, list(overrides) if isinstance(overrides, list) else None)
    return load_config(cfg, over) if over else cfg


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
    `clock` is the run's clock (`time.breakdown`); the CLI passes one that counts
    jaxtrain's start-up (from its import). `hooks` run after the config's own (a search's pruning).
    """
    clock = clock or RunClock()  # from here on: loading the config counts
    if resume is not None:
        config, workdir = resume_source(resume, config, workdir)
    cfg = _config(config, overrides, kw_overrides)
    return train_lanes([cfg], [workdir], model=model, dataset=dataset, console=console, verbose=verbose,
                       clock=clock, resuming=resume is not None, extra_hooks=[hooks])[0]


def resume(run_dir: str | Path, overrides: list[str] | dict[str, Any] | None = None, *, verbose: int = 1,
           **kw_overrides: Any) -> dict:
    """Continue the run in `run_dir` from its latest checkpoint; return the new summary."""
    return train(resume=run_dir, overrides=overrides, verbose=verbose, **kw_overrides)


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
                        f"{', '.join(splits)}: pass ", *either(Arg("split", s) for s in splits))
    target = splits[split]
    return trained.evaluator.evaluate(trained.params, trained.rest, target)


def _evaluate_file(run_dir: str | Path, path: str | Path, model: nnx.Module | None) -> dict[str, float]:
    """The metrics of the run's model on a labeled file, read as `predict` reads its input."""
    trained = load_trained(run_dir, with_data=False, model=model)
    stats = trained.stats
    data = read_user_input(trained, path, labels=True)
    in_csv = stats.is_table and Path(path).suffix != ".npz"
    where = f"{path} column '{trained.cfg.data.target}'" if in_csv else str(path)
    y = user_input.label_targets(stats, data.labels, where)
    return compute_metrics(stats.task, trained.outputs(data.x), y, stats.target_mean, stats.target_scale)
