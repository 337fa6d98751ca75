"""A table run's preprocessing as an ONNX graph: one input per raw column in, the encoded
features (before normalization) out, joined in front of the network by `export`.

The steps are `jaxtrain.data.encoder.encode_table`'s, in float32: a numeric column's NaN
or infinite values take the training fill, `log_columns` get log(1 + x), and the values
are clipped to the fitted outlier bounds (when the rule clips); a category column is
looked up in the training categories (ai.onnx.ml LabelEncoder: the missing-value
spellings map to the fill's category, any other value to none, so that an unseen value
encodes as all zeros) and one-hot encoded with standard ops. Inputs follow skl2onnx's
convention: `[batch, 1]`, float32 for numbers, string for categories. Free-text columns
are refused: their bag-of-words hashing (CRC32 of each token) has no ONNX operator.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxtrain.data.csvfile import NULL_SPELLINGS
from jaxtrain.data.featurestats import FeatureStats
from jaxtrain.util.errors import UserError

ML_DOMAIN, ML_OPSET = "ai.onnx.ml", 3        # LabelEncoder with keys_strings/values_int64s (version 2)
PREFIX = "jaxtrain.pre/"                     # internal value names, apart from the column names
FILLS = {"mean": "the training mean", "median": "the training median", "drop": "the training median",
         "most_frequent": "the most frequent training value", "constant": "data.clean.fill_value"}


def check_exportable(stats: FeatureStats, output_name: str) -> None:
    """One line when a table cannot become a graph with the same results as `predict`."""
    if stats.text_columns:
        name = stats.text_columns[0]
        raise UserError(f"column '{name}' is free text, hashed as a bag of words (CRC32 of each token), "
                        "which no ONNX operator computes, so an exported model would predict differently; "
                        f"to export, retrain with data.drop_columns=[{name}] or data.columns.{name}=category")
    if output_name in stats.feature_columns():
        raise UserError(f"column '{output_name}' has the name of the exported model's output; rename the "
                        "column to export")


class _Graph:
    """Nodes and constants of a graph under construction, with unique internal names."""

    def __init__(self):
        self.nodes: list = []
        self.constants: list = []

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper
        self.constants.append(numpy_helper.from_array(np.asarray(value), PREFIX + name))
        return PREFIX + name

    def op(self, op_type: str, inputs: list[str], out: str, domain: str = "", **attrs: Any) -> str:
        from onnx import helper
        name = out if out.startswith(PREFIX) else PREFIX + out
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, domain=domain, **attrs))
        return name


def _numeric(g: _Graph, stats: FeatureStats, j: int) -> str:
    """Column j of the numeric block: filled, log1p'd, clipped; (batch, 1) float32."""
    name = stats.numeric_columns[j]
    at = f"{name}/"
    missing = g.op("Or", [g.op("IsNaN", [name], at + "nan"), g.op("IsInf", [name], at + "inf")], at + "missing")
    x = g.op("Where", [missing, g.const(at + "fill", np.float32(stats.fills[name])), name], at + "filled")
    if name in stats.log_columns:
        x = g.op("Log", [g.op("Add", [x, g.const(at + "one", np.float32(1))], at + "plus_one")], at + "log1p")
    rule = stats.outliers
    if rule.bounds is not None and rule.action == "clip":
        low, high = (np.float32(b) for b in rule.bounds[j])
        x = g.op("Max", [x, g.const(at + "low", low)], at + "above_low")
        x = g.op("Min", [x, g.const(at + "high", high)], at + "clipped")
    return x


def category_codes(categories: list[str], fill: str | None) -> tuple[list[str], list[int]]:
    """LabelEncoder's keys and codes: each category its position; each missing-value spelling
    the fill's position (as `predict` fills before encoding), or -1 when the fill is no category."""
    missing = categories.index(fill) if fill in categories else -1
    spellings = [s for s in NULL_SPELLINGS if s not in categories]
    return list(categories) + spellings, list(range(len(categories))) + [missing] * len(spellings)


def _one_hot(g: _Graph, name: str, categories: list[str], fill: str | None) -> str:
    """A category column as (batch, len(categories)) float32 one-hot; unknown values all zeros."""
    at = f"{name}/"
    keys, codes = category_codes(categories, fill)
    code = g.op("LabelEncoder", [name], at + "code", domain=ML_DOMAIN, keys_strings=keys,
                values_int64s=codes, default_int64=-1)
    positions = g.const(at + "positions", np.arange(len(categories), dtype=np.int64))
    from onnx import TensorProto
    return g.op("Cast", [g.op("Equal", [code, positions], at + "is")], at + "one_hot", to=TensorProto.FLOAT)


def table_graph(stats: FeatureStats, features: str, opset: int, ir_version: int):
    """The ONNX model from the raw columns to the encoded features, named `features`."""
    from onnx import TensorProto, helper
    g, inputs, pieces = _Graph(), [], []
    for j, name in enumerate(stats.numeric_columns):
        inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 1]))
        pieces.append(_numeric(g, stats, j))
    for name, categories in stats.categories.items():
        inputs.append(helper.make_tensor_value_info(name, TensorProto.STRING, ["batch", 1]))
        pieces.append(_one_hot(g, name, categories, stats.fills.get(name)))
    g.op("Concat", pieces, features, axis=1)
    width = len(stats.feature_names)
    graph = helper.make_graph(g.nodes, "jaxtrain_preprocessing", inputs,
                              [helper.make_tensor_value_info(PREFIX + features, TensorProto.FLOAT,
                                                             ["batch", width])], g.constants)
    return helper.make_model(graph, ir_version=ir_version, opset_imports=[
        helper.make_opsetid("", opset), helper.make_opsetid(ML_DOMAIN, ML_OPSET)])


def input_contract(stats: FeatureStats, fill_rule: str) -> list[dict[str, Any]]:
    """What each graph input is, for the contract file."""
    rule = stats.outliers
    out = []
    for j, name in enumerate(stats.numeric_columns):
        steps = [f"NaN or infinite = missing, filled with {stats.fills[name]:g} ({FILLS.get(fill_rule, fill_rule)})"]
        if name in stats.log_columns:
            steps.append("then log(1 + x)")
        if rule.bounds is not None and rule.action == "clip":
            steps.append(f"then clipped to [{rule.bounds[j][0]:g}, {rule.bounds[j][1]:g}]")
        out.append({"name": name, "dtype": "float32", "shape": ["batch", 1], "kind": "numeric",
                    "meaning": f"numeric column '{name}': " + ", ".join(steps)})
    for name, categories in stats.categories.items():
        fill = stats.fills.get(name)
        out.append({"name": name, "dtype": "string", "shape": ["batch", 1], "kind": "category",
                    "categories": list(categories),
                    "meaning": f"category column '{name}', one-hot over `categories` (matched exactly, "
                               f"no trimming); empty, NA, NaN, null, None or N/A (any case) = missing, "
                               f"filled with '{fill}'; any other value was not seen in training and "
                               "encodes as all zeros"})
    return out
