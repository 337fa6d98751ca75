"""`jaxtrain export RUN_DIR --format onnx [--output FILE]`: the trained network as ONNX.

The exported graph takes the feature vector as jaxtrain encodes it *before*
normalization (raw pixels for images; for tables the numeric columns, after the
run's missing-value fills, log1p and clipping, then the one-hot and hashed-text
columns, in stats.json's feature order), applies the run's normalization, runs the
network in float32, and returns what `jaxtrain predict` prints: class probabilities,
or predictions in the target's original units. `FILE.json` beside the model states
that contract (input name, shape and features; output name and meaning). Written
with jax2onnx (the `export` extra) and checked by running it in onnxruntime.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtrain.data.featurestats import FeatureStats
from jaxtrain.runs.trained import check_python_model, load_run, model_from_stats, restore_model
from jaxtrain.util.errors import UserError
from jaxtrain.util.optional import require_installed

FORMATS = ("onnx",)


def exported_function(eval_def, params, rest, stats: FeatureStats) -> Callable[[jax.Array], jax.Array]:
    """encoded features (batch, *feature_shape) -> probabilities or predictions in target units."""
    shape = tuple(stats.feature_shape)
    size = int(np.prod(shape))
    width = stats.normalize.width or size
    arrays = stats.normalize.arrays()
    params, rest = jax.device_get((params, rest))

    def forward(x: jax.Array) -> jax.Array:
        flat = x.reshape(x.shape[0], size).astype(jnp.float32)
        if arrays is not None:
            shift, scale = (jnp.asarray(a, jnp.float32) for a in arrays)
            flat = jnp.concatenate([(flat[:, :width] - shift) / scale, flat[:, width:]], axis=1)
        out = nnx.merge(eval_def, params, rest)(flat.reshape(x.shape[0], *shape)).astype(jnp.float32)
        if stats.task == "classification":
            return jax.nn.softmax(out, axis=-1)
        return out * np.float32(stats.target_scale) + np.float32(stats.target_mean)

    return forward


def contract(stats: FeatureStats, run_dir: Path, input_name: str, output_name: str, num_outputs: int) -> dict[str, Any]:
    table = stats.is_table
    features = {"feature_names": list(stats.feature_names), "numeric_columns": list(stats.numeric_columns),
                "log1p_columns": list(stats.log_columns), "missing_fills": dict(stats.fills)} \
        if table else {"image_shape": stats.image_shape}
    if stats.task == "classification":
        output = {"name": output_name, "shape": ["batch", num_outputs], "meaning": "class probabilities",
                  "classes": [str(c) for c in (stats.classes or range(num_outputs))]}
    else:
        output = {"name": output_name, "shape": ["batch", num_outputs],
                  "meaning": "predictions in the target's original units"}
    return {
        "format": "onnx", "run": str(run_dir), "task": stats.task,
        "input": {"name": input_name, "dtype": "float32", "shape": ["batch", *stats.feature_shape],
                  "meaning": ("encoded table features before normalization: numeric columns (missing values "
                              "filled, log1p and clipping applied as the run does), then one-hot categories "
                              "and hashed text, in feature_names order") if table else
                             "raw pixel values (as in the training files), before normalization",
                  **features},
        "normalization": "folded into the model",
        "output": output,
    }


def export_onnx(run_dir: str | Path, output: str | Path | None = None,
                model: nnx.Module | None = None) -> tuple[Path, Path]:
    """Write RUN_DIR's network as ONNX (default RUN_DIR/model.onnx) and its contract (.json).
    A run trained with a Python `model` needs a new instance of it here."""
    require_installed("jax2onnx", "export", "jaxtrain export --format onnx")
    run = Path(run_dir)
    cfg, stats = load_run(run)
    check_python_model(run, model)
    if stats is None or not stats.feature_shape:
        raise UserError(f"run '{run}' has no stats.json with the feature shape; export needs a run "
                        "trained by `jaxtrain train`")
    output = Path(output) if output is not None else run / "model.onnx"
    if output.is_dir() or not output.parent.is_dir():
        raise UserError(f"{output}: --output must be a file path in an existing folder")
    # float32 whatever the run's precision: ONNX runtimes do bf16 matmuls unevenly.
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision="float32"))
    eval_def, params, rest = restore_model(run, cfg, model or model_from_stats(cfg, stats))
    forward = exported_function(eval_def, params, rest, stats)
    input_name = "features"
    output_name = "probabilities" if stats.task == "classification" else "predictions"
    num_outputs = jax.eval_shape(forward, jax.ShapeDtypeStruct((1, *stats.feature_shape), jnp.float32)).shape[-1]
    _convert(forward, stats, output, input_name, output_name, cfg.model.name)
    info = output.with_suffix(".json")
    info.write_text(json.dumps(contract(stats, run, input_name, output_name, num_outputs), indent=1) + "\n")
    return output, info


def _convert(forward, stats: FeatureStats, output: Path, input_name: str, output_name: str, model_name: str) -> None:
    # jax2onnx and onnx_ir log warnings about optional plugins and shape details; failures raise.
    for name in ("jax2onnx", "onnx_ir"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from jax2onnx import to_onnx
    try:
        proto = to_onnx(forward, inputs=[("batch", *stats.feature_shape)], model_name="jaxtrain",
                        input_names=[input_name], output_names=[output_name])
    except Exception as e:  # an operation jax2onnx has no converter for
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError(f"model '{model_name}' cannot be exported to ONNX: {type(e).__name__}: {first[:300]}") from None
    output.write_bytes(proto.SerializeToString())
