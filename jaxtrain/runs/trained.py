"""A run's model and a finished run reloaded: built from the config and the data's shapes,
restored from its checkpoint (shared by train, eval, report, predict and export)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from jaxtrain import data as data_stage
from jaxtrain.ckpt.checkpoint import has_checkpoint
from jaxtrain.ckpt.params import restore_params
from jaxtrain.config.schema import Config, load_config
from jaxtrain.data.bins import fit_bin_edges
from jaxtrain.data.featurestats import FeatureStats
from jaxtrain.engine.step import split_model
from jaxtrain.model.imported import import_root
from jaxtrain.model.models import build_model
from jaxtrain.model.tabular import TableLayout
from jaxtrain.parallel import placement
from jaxtrain.runs.resume import saved_stats
from jaxtrain.training.evaluator import Evaluator
from jaxtrain.training.setup import COMPUTE_DTYPES
from jaxtrain.util.errors import UserError

PYTHON_MODEL_FILE = "python_model.json"  # written by a run trained with train(model=...)


def make_model(cfg: Config, dataset: data_stage.Dataset) -> nnx.Module:
    fit_model_stats(cfg, dataset)
    return _build(cfg, dataset.feature_shape, dataset.image_shape, dataset.num_outputs, dataset.stats,
                  dataset.task)


def fit_model_stats(cfg: Config, dataset: data_stage.Dataset) -> None:
    """What the model fits on the training split into the run's statistics (before stats.json
    is written): the piecewise-linear encoding's bin edges."""
    if cfg.model.numeric_embedding == "piecewise_linear":
        fit_bin_edges(dataset, cfg.model.bins)


def table_layout(stats: FeatureStats | None) -> TableLayout | None:
    """Where a table's columns sit in the features the encoder writes (None: not a table)."""
    if stats is None or not stats.is_table:
        return None
    edges = tuple(tuple(e) for e in stats.bin_edges) if stats.bin_edges is not None else None
    return TableLayout(len(stats.numeric_columns), tuple(len(c) for c in stats.categories.values()),
                       len(stats.text_columns) * stats.hash_dim, edges)


def _build(cfg: Config, feature_shape, image_shape, num_outputs: int, stats: FeatureStats | None,
           task: str) -> nnx.Module:
    return build_model(cfg.model, tuple(feature_shape), num_outputs, seed=cfg.train.seed,
                       image_shape=tuple(image_shape) if image_shape else None,
                       compute_dtype=COMPUTE_DTYPES[cfg.train.precision], platform=placement.platform(),
                       layout=table_layout(stats), task=task)


def with_import_root(cfg: Config) -> Config:
    """An imported model's config with the directory its module comes from (model.import_root),
    so that eval, predict and --resume rebuild it from any working directory."""
    if not cfg.model.imported:
        return cfg
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, import_root=import_root(cfg.model)))


def load_run(run_dir: str | Path) -> tuple[Config, FeatureStats | None]:
    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise UserError(f"'{run}' is not a jaxtrain run directory (no config.yaml); "
                        f"pass the --workdir of a finished training run")
    cfg = load_config(run / "config.yaml")
    stats = saved_stats(run)
    return cfg, stats


def model_from_stats(cfg: Config, stats: FeatureStats) -> nnx.Module:
    """The run's model, shaped by its saved statistics instead of its data set."""
    outputs = stats.num_classes if stats.task == "classification" else 1
    return _build(cfg, stats.feature_shape, stats.image_shape, int(outputs), stats, stats.task)


def checkpoint_dir(run_dir: str | Path) -> Path:
    """The run's checkpoints/; one line when it holds no saved parameters."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    if not has_checkpoint(ckpt_dir):
        raise UserError(f"run '{run_dir}' has no saved parameters in checkpoints/; "
                        f"train it with checkpoint.enabled: true")
    return ckpt_dir


def python_model_class(run_dir: str | Path) -> str | None:
    """The class of the `nnx.Module` a run was trained with from Python (`train(model=...)`), if any."""
    path = Path(run_dir) / PYTHON_MODEL_FILE
    return json.loads(path.read_text())["class"] if path.is_file() else None


def check_python_model(run_dir: str | Path, model: nnx.Module | None) -> None:
    """A run trained with `train(model=...)` is rebuilt only from a new instance of that model."""
    trained_with = python_model_class(run_dir)
    if model is None and trained_with:
        raise UserError(f"run '{run_dir}' was trained with a Python model ({trained_with}); pass a new "
                        f"instance of it from Python: jaxtrain.evaluate(DIR, model=...), predict or report alike")


def restore_model(run_dir: str | Path, cfg: Config, model: nnx.Module) -> tuple[Any, Any, Any]:
    """(eval graphdef, params, rest) of `model` with the run's saved parameters and statistics."""
    _, eval_def, params, rest = split_model(model)
    # With train.ema_decay the run evaluated its moving average: eval and predict use it too.
    part = "params" if cfg.train.ema_decay is None else "ema"
    params, rest = restore_params(checkpoint_dir(run_dir), params, part, rest)
    return eval_def, params, rest


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


def load_trained(run_dir: str | Path, with_data: bool = True, model: nnx.Module | None = None) -> TrainedRun:
    """Reload a finished run's saved parameters and preprocessing (shared by eval, report, predict).

    `with_data=False` skips reloading the run's data set: the model's shape comes from the
    saved statistics, which is all `predict` needs (reloading MNIST costs seconds). `model`:
    a fresh instance of the Python model the run was trained with (its parameters are restored)."""
    from jaxtrain.parallel import placement
    cfg, stats = load_run(run_dir)
    checkpoint_dir(run_dir)   # before reloading the data
    check_python_model(run_dir, model)
    dataset = None
    if with_data or stats is None or not stats.feature_shape:
        dataset = data_stage.load_dataset(cfg.data, stats=stats)
        stats = dataset.stats
    if model is None:
        model = make_model(cfg, dataset) if dataset is not None else model_from_stats(cfg, stats)
    eval_def, params, rest = restore_model(run_dir, cfg, model)
    mesh = placement.make_mesh(cfg.parallel)
    evaluator = Evaluator(eval_def, mesh, cfg.data.eval_batch_size, dataset)
    params, rest = jax.device_put((params, rest), placement.replicated(mesh))
    return TrainedRun(cfg=cfg, stats=stats, dataset=dataset, evaluator=evaluator, params=params, rest=rest)
