"""runs/onnx_table.py: the refusal of free text and the input contract's words, built from the
run's statistics (what mutmut's surviving mutants showed unchecked: docs/testing.md)."""

import pytest

from jaxtrain.data.featurestats import FeatureStats, OutlierRule
from jaxtrain.runs import onnx_table
from jaxtrain.util.errors import UserError


def houses(action: str = "clip", bounds=((1.0, 9.0), (0.0, 2.5))) -> FeatureStats:
    return FeatureStats(task="regression", numeric_columns=["rooms", "age"],
                        categories={"color": ["blue", "red"]}, fills={"rooms": 3.5, "age": 40.0, "color": "red"},
                        log_columns=["age"],
                        outliers=OutlierRule(method="iqr", action=action,
                                             bounds=None if bounds is None else [list(b) for b in bounds]))


def test_a_free_text_column_is_refused_naming_it_why_and_both_ways_out():
    stats = FeatureStats(task="regression", numeric_columns=["rooms"], text_columns=["notes", "title"])
    with pytest.raises(UserError) as e:
        onnx_table.check_exportable(stats, "prediction")
    message = str(e.value)
    assert "\n" not in message and message.startswith("column 'notes' is free text")
    assert "which no ONNX operator computes, so an exported model would predict differently; to export, " \
           "retrain with data.drop_columns=[notes] or data.columns.notes=category" in message


def test_an_output_named_like_a_column_is_refused_and_any_other_name_passes():
    with pytest.raises(UserError, match="^column 'rooms' has the name of the exported model's output"):
        onnx_table.check_exportable(houses(), "rooms")
    onnx_table.check_exportable(houses(), "price")


@pytest.mark.parametrize("rule, words", [("median", "the training median"), ("mean", "the training mean"),
                                         ("constant", "data.clean.fill_value")])
def test_the_contract_says_each_numeric_inputs_fill_log_and_clip_bounds(rule, words):
    stats = houses()
    meanings = {entry["name"]: entry["meaning"] for entry in onnx_table.input_contract(stats, rule)}
    for j, name in enumerate(stats.numeric_columns):
        low, high = stats.outliers.bounds[j]
        steps = [f"NaN or infinite = missing, filled with {stats.fills[name]:g} ({words})"]
        steps += ["then log(1 + x)"] if name in stats.log_columns else []
        steps += [f"then clipped to [{low:g}, {high:g}]"]
        assert meanings[name] == f"numeric column '{name}': " + ", ".join(steps)
    assert meanings["rooms"].endswith("(" + words + "), then clipped to [1, 9]")


@pytest.mark.parametrize("action, bounds", [("drop", ((1.0, 9.0), (0.0, 2.5))), ("clip", None)])
def test_no_clip_step_when_outliers_are_dropped_in_training_or_have_no_bounds(action, bounds):
    contract = onnx_table.input_contract(houses(action, bounds), "median")
    assert [e["meaning"] for e in contract[:2]] == [
        "numeric column 'rooms': NaN or infinite = missing, filled with 3.5 (the training median)",
        "numeric column 'age': NaN or infinite = missing, filled with 40 (the training median), then log(1 + x)"]
    assert contract[2]["categories"] == ["blue", "red"] and "filled with 'red'" in contract[2]["meaning"]
