"""`jaxtrain export RUN_DIR --format onnx [--output FILE]`: the whole prediction function as ONNX.

A table run's model takes the raw row, one input per column (`onnx_table.py` builds the
preprocessing graph: fills, log1p, clipping, one-hot); an image run's takes the raw pixels.
Then the run's normalization, the network in float32 (written by jax2onnx, the `export`
extra; convolutions as ONNX `Conv`), and what `jaxtrain predict` prints: class
probabilities, or predictions in the target's original units. `FILE.json` beside the
model states that contract: every input with its dtype and meaning, the output, the classes.
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

from jaxtrain.config.schema import Config
from jaxtrain.data.featurestats import FeatureStats
from jaxtrain.runs import onnx_table
from jaxtrain.runs.trained import check_python_model, load_run, model_from_stats, restore_model
from jaxtrain.util.errors import UserError
from jaxtrain.util.optional import require_installed

NETWORK_INPUT = "features"       # pixels, or a table's encoded features (behind the preprocessing graph)
NET_PREFIX = "jaxtrain.net/"


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


def contract(stats: FeatureStats, run_dir: Path, fill_rule: str, output_name: str,
             num_outputs: int) -> dict[str, Any]:
    """The model's inputs and output, as the file beside it states them."""
    if stats.is_table:
        inputs = onnx_table.input_contract(stats, fill_rule)
        extra = {"preprocessing": "in the graph: missing-value fills, log1p, clipping, one-hot, normalization",
                 "feature_names": list(stats.feature_names)}
    else:
        inputs = [{"name": NETWORK_INPUT, "dtype": "float32", "shape": ["batch", *stats.feature_shape],
                   "kind": "pixels", "image_shape": stats.image_shape,
                   "meaning": "raw pixel values (as in the training files, in the training shape), "
                              "before normalization"}]
        extra = {"preprocessing": "in the graph: normalization"}
    if stats.task == "classification":
        output = {"name": output_name, "dtype": "float32", "shape": ["batch", num_outputs],
                  "meaning": "class probabilities, in the order of `classes`",
                  "classes": [str(c) for c in (stats.classes or range(num_outputs))]}
    else:
        output = {"name": output_name, "dtype": "float32", "shape": ["batch", num_outputs],
                  "meaning": "predictions in the target's original units"}
    return {"format": "onnx", "run": str(run_dir), "task": stats.task, "inputs": inputs, **extra,
            "output": output}


def export_onnx(run_dir: str | Path, output: str | Path | None = None,
                model: nnx.Module | None = None) -> tuple[Path, Path]:
    """Write RUN_DIR's whole prediction function as ONNX (default RUN_DIR/model.onnx) and its
    contract (.json). A run trained with a Python `model` needs a new instance of it here."""
    require_installed("jax2onnx", "export", "jaxtrain export --format onnx")
    run = Path(run_dir)
    cfg, stats = load_run(run)
    check_python_model(run, model)
    if stats is None or not stats.feature_shape:
        raise UserError(f"run '{run}' has no stats.json with the feature shape; export needs a run "
                        "trained by `jaxtrain train`")
    output_name = "probabilities" if stats.task == "classification" else "predictions"
    if stats.is_table:
        onnx_table.check_exportable(stats, output_name)
    output = Path(output) if output is not None else run / "model.onnx"
    if output.is_dir() or not output.parent.is_dir():
        raise UserError(f"{output}: --output must be a file path in an existing folder")
    cfg = export_config(cfg)
    if model is None:
        model = model_from_stats(cfg, stats)
    forward = exported_function(*restore_model(run, cfg, model), stats)
    num_outputs = jax.eval_shape(forward, jax.ShapeDtypeStruct((1, *stats.feature_shape), jnp.float32)).shape[-1]
    proto = _convert(forward, stats, output_name, cfg.model.name)
    if stats.is_table:
        proto = _behind_preprocessing(proto, stats, output_name)
    output.write_bytes(proto.SerializeToString())
    info = output.with_suffix(".json")
    info.write_text(json.dumps(contract(stats, run, cfg.data.clean.missing, output_name, num_outputs),
                               indent=1) + "\n")
    return output, info


def export_config(cfg: Config) -> Config:
    """The run's config as the exported network computes: float32 whatever the run's precision
    (ONNX runtimes do bf16 matmuls unevenly), and XLA's convolution, which jax2onnx writes as
    ONNX `Conv` (on CPU the CNN trains with shifted slices and one matmul, model/kernels.py,
    which would export as those)."""
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision="float32"),
                               model=dataclasses.replace(cfg.model, conv_impl="xla"))


def _convert(forward, stats: FeatureStats, output_name: str, model_name: str):
    """The network as an ONNX model with input NETWORK_INPUT (features before normalization)."""
    # jax2onnx and onnx_ir log warnings about optional plugins and shape details; failures raise.
    for name in ("jax2onnx", "onnx_ir"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from jax2onnx import to_onnx
    try:
        return to_onnx(forward, inputs=[("batch", *stats.feature_shape)], model_name="jaxtrain",
                       input_names=[NETWORK_INPUT], output_names=[output_name])
    except Exception as e:  # an operation jax2onnx has no converter for
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError(f"model '{model_name}' cannot be exported to ONNX: {type(e).__name__}: {first[:300]}") from None


def _behind_preprocessing(net, stats: FeatureStats, output_name: str):
    """The network joined behind the table's preprocessing graph: one input per raw column."""
    import onnx.compose
    import onnx.helper
    net = onnx.compose.add_prefix(net, NET_PREFIX)      # its names apart from the column names
    opset = next(o.version for o in net.opset_import if o.domain in ("", "ai.onnx"))
    pre = onnx_table.table_graph(stats, "features", opset, net.ir_version)
    joined = onnx.compose.merge_models(pre, net, io_map=[(pre.graph.output[0].name, NET_PREFIX + NETWORK_INPUT)])
    for node in joined.graph.node:          # the output keeps its plain name
        node.output[:] = [output_name if o == NET_PREFIX + output_name else o for o in node.output]
    joined.graph.output[0].name = output_name
    unique = {o.domain: o.version for o in joined.opset_import}   # merge_models may list a domain twice
    del joined.opset_import[:]
    joined.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in unique.items())
    return joined
