"""Direct tests of data/user_input.py, the reader of `predict` / `eval --input` files: NPZ, IDX,
Parquet and CSV inputs through a run's statistics (built here, no training), labels, and the
messages a user gets for a wrong file or wrong labels. Each answer is computed from the
inputs written (a plain-Python encoding of the rows, the arrays saved)."""

import os
import struct

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jaxtrain.config.data import DataConfig
from jaxtrain.data import user_input
from jaxtrain.data.featurestats import FeatureStats, Normalizer
from jaxtrain.util.errors import DataError

CITIES = ["blue", "green", "red"]
FILLS = {"a": 1.5, "c": 20.0, "b": "red"}


def _table_stats(numeric=("a", "c")):
    """A table run on numbers a, c and the category b (no log, clip or normalization)."""
    return FeatureStats(task="regression", numeric_columns=list(numeric), categories={"b": CITIES},
                        fills={k: v for k, v in FILLS.items() if k in numeric or k == "b"},
                        target_mean=100.0, target_scale=10.0)


def _encoded(rows, numeric=("a", "c")):
    """The model's inputs for raw rows {column: text or None}: missing numbers filled with the
    training fill, then b one-hot (an unseen or missing b: the fill / all zeros)."""
    out = []
    for r in rows:
        nums = [float(r[n]) if r.get(n) not in (None, "") else FILLS[n] for n in numeric]
        b = r["b"] if r.get("b") not in (None, "") else FILLS["b"]
        out.append(nums + [1.0 if b == c else 0.0 for c in CITIES])
    return np.array(out, np.float32)


CFG = DataConfig(source="csv", target="label")
ROWS = [{"a": "1", "b": "red", "c": "2", "label": "5", "id": "r1"},
        {"a": None, "b": "blue", "c": "3.5", "label": "7", "id": "r2"},
        {"a": "2", "b": "pink", "c": None, "label": "9", "id": "r3"}]


# ---------------------------------------------------------------- NPZ
def test_an_npz_x_is_encoded_and_its_y_read_as_the_labels(tmp_path):
    x = np.array([[1.0, 2.0, 0.0], [4.0, 5.0, 1.0]])
    np.savez(tmp_path / "in.npz", x=x, y=np.array([3.0, 4.0]))
    got = user_input.read_input(tmp_path / "in.npz", _table_stats(), CFG, labels=True)
    # b is given as a number: "0.0" / "1.0" are no training category, so all zeros
    np.testing.assert_array_equal(got.x, np.c_[x[:, :2], np.zeros((2, 3))].astype(np.float32))
    np.testing.assert_array_equal(got.labels, [3.0, 4.0])
    assert got.rows == 2
    assert user_input.read_input(tmp_path / "in.npz", _table_stats(), CFG).labels is None


def test_an_npz_of_test_arrays_reads_x_test_and_y_test(tmp_path):
    np.savez(tmp_path / "in.npz", x_test=np.array([[1.0, 2.0, 0.0]]), y_test=np.array([8.0]))
    got = user_input.read_input(tmp_path / "in.npz", _table_stats(), CFG, labels=True)
    np.testing.assert_array_equal(got.x, [[1.0, 2.0, 0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(got.labels, [8.0])


def test_an_npz_without_x_or_without_y_names_what_it_found(tmp_path):
    np.savez(tmp_path / "a.npz", inputs=np.zeros((1, 3)), z=np.zeros(1))
    with pytest.raises(DataError) as e:
        user_input.read_input(tmp_path / "a.npz", _table_stats(), CFG)
    assert str(e.value) == f"{tmp_path / 'a.npz'}: needs an array 'x' of inputs; found: inputs, z"
    np.savez(tmp_path / "b.npz", x_test=np.zeros((1, 3)), w=np.zeros(1))
    with pytest.raises(DataError) as e:
        user_input.read_input(tmp_path / "b.npz", _table_stats(), CFG, labels=True)
    assert str(e.value) == (f"{tmp_path / 'b.npz'}: needs an array 'y_test' of labels beside 'x_test' to be "
                            "scored; found: x_test, w")


def test_an_npz_of_the_wrong_width_names_the_training_columns(tmp_path):
    np.savez(tmp_path / "in.npz", x=np.zeros((2, 4)))
    with pytest.raises(DataError) as e:
        user_input.read_input(tmp_path / "in.npz", _table_stats(), CFG)
    assert str(e.value) == (f"{tmp_path / 'in.npz'}: array 'x' has shape (2, 4), but the model takes 3 "
                            "columns: a, c, b")


def test_keep_of_an_npz_is_an_error(tmp_path):
    np.savez(tmp_path / "in.npz", x=np.zeros((1, 3)))
    with pytest.raises(DataError, match="--keep copies columns of a CSV; an .npz or IDX file has none"):
        user_input.read_input(tmp_path / "in.npz", _table_stats(), CFG, keep=["id"])


# ---------------------------------------------------------------- IDX
def _write_idx(path, array):
    """An IDX file (MNIST's format) of uint8 values, written from its definition."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _image_stats():
    """A run on 2x2 grey images, scaled by 1/255."""
    return FeatureStats(task="classification", num_classes=3, feature_shape=[2, 2, 1], image_shape=[2, 2, 1],
                        normalize=Normalizer(kind="minmax", scope="global", shift=[0.0], scale=[255.0], width=4))


def test_an_idx_images_file_is_read_with_its_labels_file_beside_it(tmp_path):
    imgs = np.arange(12, dtype=np.uint8).reshape(3, 2, 2) * 20
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", imgs)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([2, 0, 1]))
    got = user_input.read_input(tmp_path / "t10k-images-idx3-ubyte", _image_stats(), CFG, labels=True)
    np.testing.assert_allclose(got.x, imgs.reshape(3, 2, 2, 1) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(got.labels, [2, 0, 1])
    assert user_input.read_input(tmp_path / "t10k-images-idx3-ubyte", _image_stats(), CFG).labels is None


def test_a_file_named_idx_is_read_as_idx(tmp_path):
    imgs = np.arange(8, dtype=np.uint8).reshape(2, 2, 2)
    _write_idx(tmp_path / "digits.idx", imgs)
    got = user_input.read_input(tmp_path / "digits.idx", _image_stats(), CFG)
    np.testing.assert_allclose(got.x, imgs.reshape(2, 2, 2, 1) / 255.0, rtol=1e-6)


def test_an_idx_labels_file_as_input_names_the_images_file_to_pass(tmp_path):
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([2, 0, 1]))
    with pytest.raises(DataError) as e:
        user_input.read_input(tmp_path / "t10k-labels-idx1-ubyte", _image_stats(), CFG)
    assert str(e.value) == (f"{tmp_path / 't10k-labels-idx1-ubyte'}: an IDX labels file, not images; pass "
                            "--input the images file (t10k-images-idx3-ubyte): `eval` reads its labels from "
                            "this file beside it")


def test_scoring_idx_images_without_their_labels_file_names_the_file_it_looked_for(tmp_path):
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((1, 2, 2)))
    with pytest.raises(DataError) as e:
        user_input.read_input(tmp_path / "t10k-images-idx3-ubyte", _image_stats(), CFG, labels=True)
    assert str(e.value) == (f"{tmp_path / 't10k-images-idx3-ubyte'}: scoring an IDX images file needs its labels "
                            "file beside it (t10k-labels-idx1-ubyte); none found")


# ---------------------------------------------------------------- Parquet and CSV
def _write_parquet(path, rows, columns=("a", "b", "c", "label", "id")):
    numeric = {"a", "c"}
    pq.write_table(pa.table({n: pa.array([None if r[n] is None else float(r[n]) if n in numeric else r[n]
                                          for r in rows], pa.float64() if n in numeric else pa.string())
                             for n in columns}), path)


def test_a_parquet_input_gives_the_encoded_rows_its_labels_and_kept_columns(tmp_path):
    _write_parquet(tmp_path / "in.parquet", ROWS)
    got = user_input.read_input(tmp_path / "in.parquet", _table_stats(), CFG, keep=["id"], labels=True)
    np.testing.assert_array_equal(got.x, _encoded(ROWS))
    assert list(got.labels) == [r["label"] for r in ROWS]
    assert got.kept == {"id": [r["id"] for r in ROWS]}
    assert got.unseen == {"b": ["pink"]}
    assert got.counts.missing == {"a": 1, "c": 1}


def test_a_parquet_input_without_its_target_cannot_be_scored(tmp_path):
    _write_parquet(tmp_path / "in.parquet", ROWS, ("a", "b", "c"))
    with pytest.raises(DataError, match="missing column\\(s\\): label"):
        user_input.read_input(tmp_path / "in.parquet", _table_stats(), CFG, labels=True)
    got = user_input.read_input(tmp_path / "in.parquet", _table_stats(), CFG)
    np.testing.assert_array_equal(got.x, _encoded(ROWS))


def _write_csv(path, rows, columns):
    lines = [",".join(columns)] + [",".join(r[n] or "" for n in columns) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def test_a_csv_input_gives_the_encoded_rows_and_its_labels_as_text(tmp_path):
    _write_csv(tmp_path / "in.csv", ROWS, ["a", "b", "c", "label", "id"])
    got = user_input.read_input(tmp_path / "in.csv", _table_stats(), CFG, keep=["id"], labels=True)
    np.testing.assert_array_equal(got.x, _encoded(ROWS))
    assert list(got.labels) == [r["label"] for r in ROWS]
    assert got.kept == {"id": [r["id"] for r in ROWS]}


def test_a_csv_input_of_category_columns_only(tmp_path):
    _write_csv(tmp_path / "in.csv", ROWS, ["b"])
    got = user_input.read_input(tmp_path / "in.csv", _table_stats(numeric=()), CFG)
    np.testing.assert_array_equal(got.x, _encoded(ROWS, numeric=()))


def test_a_word_in_a_numeric_csv_column_names_its_line(tmp_path):
    rows = [dict(ROWS[0]), dict(ROWS[1], c="many"), dict(ROWS[2])]
    _write_csv(tmp_path / "in.csv", rows, ["a", "b", "c"])
    with pytest.raises(DataError) as e:
        user_input.read_input(tmp_path / "in.csv", _table_stats(), CFG)
    assert str(e.value) == (f"{tmp_path / 'in.csv'} line 3 column 'c': 'many' is not a number in a numeric "
                            "column; fix the value, write it as empty/NA to mark it missing")


# ---------------------------------------------------------------- labels
def test_regression_labels_given_as_text_are_standardized_with_the_runs_target_scaling():
    stats = _table_stats()
    got = user_input.label_targets(stats, np.array(["105", "90.5", "1e2"], object), "in.csv")
    np.testing.assert_allclose(got, (np.array([105, 90.5, 100]) - 100.0) / 10.0, rtol=1e-6)


def test_regression_labels_missing_or_not_numbers_are_named_with_their_rows():
    labels = np.array(["1.5", None, "abc", "2", "inf"], object)
    with pytest.raises(DataError) as e:
        user_input.label_targets(_table_stats(), labels, "in.csv")
    assert str(e.value) == ("in.csv: 3 row(s) have no numeric target to score against "
                            "(rows 1, 2, 4: missing, 'abc', 'inf'); fix or remove them")


def test_numbered_classes_read_labels_written_as_floats_or_numbers():
    stats = FeatureStats(task="classification", num_classes=3, categories={"b": CITIES})
    labels = np.array(["2.0", "1", 0.0, 2], object)
    np.testing.assert_array_equal(user_input.label_targets(stats, labels, "in.csv"), [2, 1, 0, 2])


def test_named_classes_take_labels_as_written():
    stats = FeatureStats(task="classification", num_classes=2, classes=["1.0", "cat"], categories={"b": CITIES})
    np.testing.assert_array_equal(user_input.label_targets(stats, np.array(["cat", "1.0"], object), "f"), [1, 0])
    with pytest.raises(DataError, match="f: 1 row\\(s\\) have labels the run never saw in training: '1'"):
        user_input.label_targets(stats, np.array(["1"], object), "f")


@pytest.mark.parametrize("n", [user_input.UNSEEN_EXAMPLES, user_input.UNSEEN_EXAMPLES + 2])
def test_unseen_labels_message_counts_those_it_does_not_show(n):
    unseen = [f"zz{i}" for i in range(n)]
    msg = user_input.unseen_labels_message(unseen + [unseen[0]], ["cat", "dog"], "f")
    shown = ", ".join(f"'{u}'" for u in unseen[:user_input.UNSEEN_EXAMPLES])
    more = f" and {n - user_input.UNSEEN_EXAMPLES} more" if n > user_input.UNSEEN_EXAMPLES else ""
    assert msg == (f"f: {n + 1} row(s) have labels the run never saw in training: {shown}{more}; its labels "
                   "are cat, dog: fix the labels, or score only rows with known labels")


def test_numbered_classes_take_a_fractional_label_as_no_class():
    stats = FeatureStats(task="classification", num_classes=3, categories={"b": CITIES})
    with pytest.raises(DataError) as e:
        user_input.label_targets(stats, np.array(["1", "1.5"], object), "in.csv")
    assert str(e.value) == ("in.csv: 1 row(s) have labels the run never saw in training: '1.5'; its labels are "
                            "0, 1, 2: fix the labels, or score only rows with known labels")


# ---------------------------------------------------------------- wrong files and messages
def test_missing_and_unexpected_columns_are_both_named(tmp_path):
    _write_csv(tmp_path / "in.csv", ROWS, ["a", "b", "id"])
    with pytest.raises(DataError) as e:
        user_input.read_input(tmp_path / "in.csv", _table_stats(), CFG)
    assert str(e.value) == (f"{tmp_path / 'in.csv'}: columns do not match the training data (missing column(s): "
                            "c; unexpected column(s): id); the input needs exactly the training columns: a, c, b "
                            "(--keep COLUMN copies other columns to the output)")


def test_a_csv_for_an_image_run_is_an_error_naming_what_it_takes(tmp_path):
    _write_csv(tmp_path / "in.csv", ROWS, ["a", "b", "c"])
    with pytest.raises(DataError) as e:
        user_input.read_input(tmp_path / "in.csv", _image_stats(), CFG)
    assert str(e.value) == (f"{tmp_path / 'in.csv'}: this run was trained on images, not table columns; image "
                            "runs take an IDX images file, an .npz with an array 'x' of images or PNG/JPEG "
                            "images, not a CSV")


def test_an_npz_value_below_minus_one_in_a_log_column_names_the_file(tmp_path):
    stats = _table_stats()
    stats.log_columns = ["c"]
    np.savez(tmp_path / "in.npz", x=np.array([[1.0, 3.0, 0.0], [1.0, -4.0, 0.0]]))
    with pytest.raises(DataError) as e:
        user_input.read_input(tmp_path / "in.npz", stats, CFG)
    assert str(e.value) == (f"{tmp_path / 'in.npz'} column 'c': value -4 <= -1 has no log1p; remove the column "
                            "from data.log_columns")


def test_a_word_in_a_numeric_parquet_column_names_its_row(tmp_path):
    rows = [dict(ROWS[0]), dict(ROWS[1]), dict(ROWS[2], c="lots")]
    pq.write_table(pa.table({"a": [1.0, None, 2.0], "b": [r["b"] for r in rows], "c": [r["c"] for r in rows]}),
                   tmp_path / "in.parquet")
    with pytest.raises(DataError) as e:
        user_input.read_input(tmp_path / "in.parquet", _table_stats(), CFG)
    # rows counted from 0, as training's reader of the same file counts them
    assert str(e.value) == (f"{tmp_path / 'in.parquet'} row 2 column 'c': 'lots' is not a number in a numeric "
                            "column; fix the value, write it as empty/NA to mark it missing")


def test_read_parquet_input_reads_no_labels_unless_asked(tmp_path):
    _write_parquet(tmp_path / "in.parquet", ROWS, ("a", "b", "c"))
    got = user_input.read_parquet_input(str(tmp_path / "in.parquet"), _table_stats(), CFG)
    np.testing.assert_array_equal(got.x, _encoded(ROWS))
    assert got.labels is None


# ---------------------------------------------------------------- image folders
def _grey_stats():
    return FeatureStats(task="classification", num_classes=2, classes=["cat", "dog"], feature_shape=[2, 2, 1],
                        image_shape=[2, 2],
                        normalize=Normalizer(kind="minmax", scope="global", shift=[0.0], scale=[255.0], width=4))


def _write_png(path, pixels):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8), "L").save(path)


def test_an_image_folder_gives_its_pixels_names_and_class_folders_as_labels(tmp_path):
    pictures = {os.path.join("cat", "a.png"): (np.array([[0, 50], [100, 150]]), "cat"),
                os.path.join("dog", "b.png"): (np.array([[255, 0], [10, 20]]), "dog")}
    for name, (pixels, _) in pictures.items():
        _write_png(tmp_path / "imgs" / name, pixels)
    got = user_input.read_input(tmp_path / "imgs", _grey_stats(), CFG, labels=True)
    order = got.kept["file"]
    assert sorted(order) == sorted(pictures)
    np.testing.assert_allclose(got.x, np.stack([pictures[n][0] for n in order]).reshape(2, 2, 2, 1) / 255.0,
                               rtol=1e-6)
    assert list(got.labels) == [pictures[n][1] for n in order]
    np.testing.assert_array_equal(user_input.label_targets(_grey_stats(), got.labels, "imgs"),
                                  [["cat", "dog"].index(pictures[n][1]) for n in order])


def test_scoring_an_image_folder_with_a_loose_image_names_it(tmp_path):
    _write_png(tmp_path / "imgs" / "cat" / "a.png", np.zeros((2, 2)))
    _write_png(tmp_path / "imgs" / "loose.png", np.zeros((2, 2)))
    assert user_input.read_input(tmp_path / "imgs", _grey_stats(), CFG).rows == 2     # fine without labels
    with pytest.raises(DataError) as e:
        user_input.read_input(tmp_path / "imgs", _grey_stats(), CFG, labels=True)
    assert str(e.value) == (f"{tmp_path / 'imgs'}: scoring images needs a folder with one sub-folder per class, "
                            "named as the run's classes; loose.png is in no sub-folder")
