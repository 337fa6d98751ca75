"""Property tests on random tables (Hypothesis, a bounded number of examples): numbers with inf
and -inf, missing markers in any case (padded in number columns), categories with quotes and
delimiters inside, duplicated rows, any of the four delimiters.

- the CSV and the same table as Parquet give the same arrays and statistics;
- streamed equals in memory;
- `predict`'s reader (data/apply.py) encodes each row as training encoded it;
- onnxruntime on random raw rows (inf, -inf, missing, unseen categories) equals `predict`.
"""

import csv
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from jaxtrain.cli.main import main
from jaxtrain.config.data import CleanConfig, DataConfig
from jaxtrain.data import load_dataset
from jaxtrain.data import user_input as apply
from jaxtrain.data.csvfile import NULL_SPELLINGS

# No shrinking: a failure reports the example as found, in seconds rather than minutes.
SETTINGS = settings(max_examples=12, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])
CATEGORIES = ["red", "green", "blue, dark", 'say "hi"', "a;b|c"]

number = st.one_of(st.floats(-1e4, 1e4, allow_nan=False).map(lambda v: ("num", v)),
                   st.integers(-50, 50).map(lambda v: ("num", float(v))),
                   st.sampled_from([np.inf, -np.inf]).map(lambda v: ("num", v)),
                   st.tuples(st.sampled_from(NULL_SPELLINGS), st.sampled_from(["", " ", "  "]))
                   .map(lambda m: ("missing", m[1] + m[0] + m[1])))
category = st.one_of(st.sampled_from(CATEGORIES).map(lambda v: ("cat", v)),
                     st.sampled_from(NULL_SPELLINGS).map(lambda v: ("missing", v)))


def number_text(cell, style):
    kind, v = cell
    if kind == "missing":
        return v
    if np.isinf(v):
        return ["inf", "-inf"][v < 0] if style else ["Infinity", "-INF"][v < 0]
    return repr(v) if style else f"{v:.17g}"


@st.composite
def tables(draw):
    """(rows of cells, delimiter, number style); at least 30 distinct rows, each category seen."""
    n = draw(st.integers(30, 50))
    rows = [[draw(number), draw(number), draw(category)] for _ in range(n)]
    for i, c in enumerate(CATEGORIES):           # every category and some finite numbers present
        rows[i][2] = ("cat", c)
        rows[i][0] = rows[i][1] = ("num", float(i))
    rows = [r + [float(i)] for i, r in enumerate(rows)]            # target: the row's first index
    dupes = draw(st.lists(st.integers(0, n - 1), max_size=5))
    rows += [list(rows[i]) for i in dupes]
    return rows, draw(st.sampled_from([",", ";", "\t", "|"])), draw(st.booleans())


def write_csv(path, rows, delimiter, style):
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL)
        w.writerow(["a", "b", "c", "y"])
        for a, b, c, y in rows:
            w.writerow([number_text(a, style), number_text(b, style), c[1], repr(y)])


def write_parquet(path, rows):
    def num(cell):
        return None if cell[0] == "missing" else cell[1]
    pq.write_table(pa.table({"a": pa.array([num(r[0]) for r in rows], pa.float64()),
                             "b": pa.array([num(r[1]) for r in rows], pa.float64()),
                             "c": pa.array([None if r[2][0] == "missing" else r[2][1] for r in rows], pa.string()),
                             "y": pa.array([r[3] for r in rows], pa.float64())}), path, row_group_size=16)


def config(path, source, **kw):
    return DataConfig(source=source, path=str(path), target="y", task="regression", standardize_target=False,
                      columns={"a": "numeric", "b": "numeric", "c": "category"},
                      clean=CleanConfig(outliers="iqr"), **kw)


@SETTINGS
@given(table=tables())
def test_csv_parquet_streamed_and_predicts_reader_agree(tmp_path_factory, table):
    rows, delimiter, style = table
    d = tmp_path_factory.mktemp("table")
    write_csv(d / "t.csv", rows, delimiter, style)
    write_parquet(d / "t.parquet", rows)
    memory = load_dataset(config(d / "t.csv", "csv"))
    parquet = load_dataset(config(d / "t.parquet", "parquet"))
    assert parquet.stats == memory.stats
    # duplicates are dropped from the training split (a row of val/test may repeat one of train);
    # the target is the row's first index, so a copy left in training repeats a target
    assert len(set(memory.train.y.tolist())) == len(memory.train.y)
    assert sum(memory.report["rows_out"].values()) + memory.report["duplicates"]["rows_dropped"] == len(rows)
    for a, b in ((memory.train, parquet.train), (memory.val, parquet.val), (memory.test, parquet.test)):
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)
    streamed = load_dataset(config(d / "t.csv", "csv", streaming=True, cache_dir=str(d / "cache")))
    assert streamed.stats == memory.stats and streamed.num_train == len(memory.train)
    ax, ay, am = map(np.concatenate, zip(*memory.train_batches(8, 1, 0)))
    bx, by, bm = map(np.concatenate, zip(*streamed.train_batches(8, 1, 0)))
    np.testing.assert_allclose(bx, ax, atol=1e-6)
    np.testing.assert_array_equal(by, ay)
    np.testing.assert_array_equal(bm, am)
    # predict's reader, on the training file itself: each row encoded as training encoded it
    # (the target is the row's index, so each training row names its line)
    for path in (d / "t.csv", d / "t.parquet"):
        given_rows = apply.read_input(path, memory.stats, config(path, "csv"))
        assert given_rows.x.shape[0] == len(rows)
        for split in (memory.train, memory.val, memory.test):
            np.testing.assert_allclose(given_rows.x[split.y.astype(int)], split.x, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- ONNX against predict
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A regression run on a (log column), b, c, outliers clipped; exported to ONNX."""
    pytest.importorskip("jax2onnx")
    pytest.importorskip("onnxruntime")
    d = tmp_path_factory.mktemp("onnx")
    rng = np.random.default_rng(1)
    n = 200
    a, b = rng.lognormal(3, 0.7, n), rng.normal(0, 5, n)
    c = rng.choice(CATEGORIES, n)
    y = np.log1p(a) * 3 + b + (c == "red") * 4 + rng.normal(0, 0.1, n)
    with open(d / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["a", "b", "c", "y"])
        w.writerows([["" if i % 9 == 0 else f"{a[i]:.4f}", f"{b[i]:.4f}", "" if i % 7 == 0 else c[i], f"{y[i]:.4f}"]
                     for i in range(n)])
    run = d / "run"
    assert main(["train", "--workdir", str(run), "--set", "train.steps_per_call=epoch",
                 "--set", "parallel.data_axis_size=1", "--set", "logging.progress=none",
                 "--set", "data.source=csv", "--set", f"data.path={d / 'train.csv'}", "--set", "data.target=y",
                 "--set", "data.task=regression", "--set", "data.log_columns=[a]",
                 "--set", "data.clean.outliers=iqr", "--set", "model.hidden_sizes=[8]",
                 "--set", "train.epochs=2"]) == 0
    assert main(["export", str(run), "--format", "onnx", "--output", str(d / "m.onnx")]) == 0
    import onnxruntime as ort
    contract = json.loads((d / "m.json").read_text())
    return run, ort.InferenceSession(str(d / "m.onnx")), contract["output"]["name"]


log_number = st.one_of(st.floats(0, 1e6, allow_nan=False).map(lambda v: ("num", v)),
                       st.sampled_from([np.inf, -np.inf]).map(lambda v: ("num", v)),
                       st.sampled_from(["", "NA", "nan", "NULL", "n/a"]).map(lambda v: ("missing", v)))
# Unpadded: predict trims a category's spaces as training did, the graph matches exactly (its
# contract says so; ONNX has no standard operator that trims a string).
raw_category = st.one_of(category, st.sampled_from(["purple", "Red", "GREEN", "blue"]).map(lambda v: ("cat", v)))


@SETTINGS
@given(rows=st.lists(st.tuples(log_number, number, raw_category), min_size=1, max_size=12))
def test_onnxruntime_equals_predict_on_random_raw_rows(exported, tmp_path_factory, rows):
    from jaxtrain.runs.predict import predict
    run, session, output = exported
    d = tmp_path_factory.mktemp("rows")
    with open(d / "new.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["a", "b", "c"])
        w.writerows([[number_text(a, True), number_text(b, True), c[1]] for a, b, c in rows])
    header, predicted = predict(run, d / "new.csv")[:2]
    want = np.array([[float(r[header.index("predicted")])] for r in predicted])

    def floats(cells):
        return np.array([[np.nan if k == "missing" else v] for k, v in cells], np.float32)
    feeds = {"a": floats([r[0] for r in rows]), "b": floats([r[1] for r in rows]),
             "c": np.array([[r[2][1]] for r in rows], object)}
    got = session.run([output], feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.one_of(st.none(), st.text(max_size=6)), max_size=12), start=st.integers(0, 3))
def test_a_strings_row_hash_is_its_own_whatever_surrounds_it(values, start):
    """Streaming finds duplicates by these hashes, block by block: a value's hash must not depend on
    its neighbours (a value followed by empty or missing ones at a block's end lost its last
    byte, so streaming kept duplicates that in-memory loading dropped)."""
    from jaxtrain.data.csvstream import string_hashes
    column = pa.array(["x"] * start + values, pa.string()).slice(start)   # an offset, as in a block
    alone = [string_hashes(pa.array([v], pa.string()))[0] for v in values]
    assert string_hashes(column).tolist() == alone
    if len(set(values)) == len(values):
        assert len(set(alone)) == len(alone)             # and distinct values, distinct hashes
