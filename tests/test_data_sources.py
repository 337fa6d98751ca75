"""Sources (csv, idx, npz, builtin, synthetic) and bad input: every error names the file."""

import gzip
import struct

import numpy as np
import pytest

from jaxtrain.data import load_dataset
from jaxtrain.config.data import CleanConfig, DataConfig
from jaxtrain.util.errors import DataError, UserError


def write_idx(path, arr, gz=True):
    codes = {np.uint8: 0x08, np.int32: 0x0C}
    head = bytes([0, 0, codes[arr.dtype.type], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    body = arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    data = head + body
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def make_idx(d, n_train=30, n_test=10, shape=(4, 3), gz=True, test_shape=None, seed=0):
    rng = np.random.default_rng(seed)
    xtr = rng.integers(0, 256, (n_train, *shape)).astype(np.uint8)
    xte = rng.integers(0, 256, (n_test, *(test_shape or shape))).astype(np.uint8)
    ytr = (np.arange(n_train) % 10).astype(np.uint8)
    yte = (np.arange(n_test) % 10).astype(np.uint8)
    write_idx(d / "train-images-idx3-ubyte", xtr, gz)
    write_idx(d / "train-labels-idx1-ubyte", ytr, gz)
    write_idx(d / "t10k-images-idx3-ubyte", xte, gz)
    write_idx(d / "t10k-labels-idx1-ubyte", yte, gz)
    return xtr, ytr, xte, yte


@pytest.mark.parametrize("gz", [True, False])
def test_idx_values_and_global_minmax(tmp_path, gz):
    xtr, ytr, xte, yte = make_idx(tmp_path, gz=gz)
    ds = load_dataset(DataConfig(source="idx", path=str(tmp_path), val_fraction=0.0,
                                 normalize="minmax_sym", clean=CleanConfig(duplicates=False)))
    lo, hi = xtr.min(), xtr.max()          # global scope for images, fitted on train only
    np.testing.assert_allclose(ds.test.x, ((xte.reshape(10, -1) - lo) / (hi - lo) * 2 - 1), atol=1e-6)
    np.testing.assert_array_equal(ds.test.y, yte)
    assert ds.feature_shape == (12,) and ds.num_classes == 10 and len(ds.train) == 30
    # the train split is the source's own, in its own order
    np.testing.assert_array_equal(ds.train.y, ytr)


def test_idx_normalizer_is_fitted_on_the_training_images_only(tmp_path):
    """Training pixels span 40..160 and test pixels 0..255: a min-max fitted on the test split
    too would map the test images into [0, 1]; fitted on train they reach below 0 and above 1."""
    rng = np.random.default_rng(4)
    xtr = rng.integers(40, 161, (30, 4, 3)).astype(np.uint8)
    xte = rng.integers(0, 256, (10, 4, 3)).astype(np.uint8)
    xte[0, 0, 0], xte[1, 0, 0] = 0, 255
    for name, arr in (("train-images-idx3-ubyte", xtr), ("t10k-images-idx3-ubyte", xte),
                      ("train-labels-idx1-ubyte", (np.arange(30) % 10).astype(np.uint8)),
                      ("t10k-labels-idx1-ubyte", (np.arange(10) % 10).astype(np.uint8))):
        write_idx(tmp_path / name, arr)
    ds = load_dataset(DataConfig(source="idx", path=str(tmp_path), val_fraction=0.0, normalize="minmax",
                                 clean=CleanConfig(duplicates=False)))
    lo, hi = float(xtr.min()), float(xtr.max())
    np.testing.assert_allclose(ds.train.x, (xtr.reshape(30, -1) - lo) / (hi - lo), atol=1e-6)
    np.testing.assert_allclose(ds.test.x, (xte.reshape(10, -1) - lo) / (hi - lo), atol=1e-6)
    assert ds.test.x.min() < 0 and ds.test.x.max() > 1


def test_idx_wrong_image_shape_names_file(tmp_path):
    make_idx(tmp_path, test_shape=(4, 4))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz.*shape"):
        load_dataset(DataConfig(source="idx", path=str(tmp_path)))


def test_idx_truncated_and_missing(tmp_path):
    make_idx(tmp_path, gz=False)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-5])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*truncated"):
        load_dataset(DataConfig(source="idx", path=str(tmp_path)))
    p.unlink()
    with pytest.raises(DataError, match="train-images"):
        load_dataset(DataConfig(source="idx", path=str(tmp_path)))


def test_idx_label_out_of_range(tmp_path):
    make_idx(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([0] * 29 + [12], np.uint8))
    with pytest.raises(DataError, match=r"\S+ train example 29: label 12 is out of range \[0, 10\)"):
        load_dataset(DataConfig(source="idx", path=str(tmp_path), val_fraction=0.0))


def test_npz_single_and_splits(tmp_path):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(50, 3)), rng.integers(0, 3, 50)
    np.savez(tmp_path / "a.npz", x=x, y=y)
    ds = load_dataset(DataConfig(source="npz", path=str(tmp_path / "a.npz"), val_fraction=0.2, test_fraction=0.2))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (30, 10, 10)
    xtr, xte = rng.normal(size=(40, 3)) * 5 + 2, rng.normal(size=(7, 3))
    np.savez(tmp_path / "b.npz", x_train=xtr, y_train=rng.integers(0, 3, 40), x_test=xte,
             y_test=rng.integers(0, 3, 7))
    ds = load_dataset(DataConfig(source="npz", path=str(tmp_path / "b.npz"), val_fraction=0.0))
    np.testing.assert_allclose(ds.test.x, (xte - xtr.mean(0)) / xtr.std(0), atol=1e-5)


@pytest.mark.parametrize("shape", [(3,), (2, 3)], ids=["table", "images"])
@pytest.mark.parametrize("normalize", ["zscore", "minmax"])
def test_npz_normalizer_is_fitted_on_train_not_on_val_or_test(tmp_path, normalize, shape):
    """Train, val and test come from different distributions: only the training split's
    statistics (NumPy; per column for a table, over all pixels for images) may shape the
    normalized values of every split."""
    rng = np.random.default_rng(2)
    xtr = rng.normal(size=(40, *shape))
    xva, xte = rng.normal(size=(9, *shape)) * 4 - 3, rng.normal(size=(7, *shape)) * 3 + 5
    np.savez(tmp_path / "c.npz", x_train=xtr, y_train=rng.integers(0, 3, 40), x_val=xva,
             y_val=rng.integers(0, 3, 9), x_test=xte, y_test=rng.integers(0, 3, 7))
    ds = load_dataset(DataConfig(source="npz", path=str(tmp_path / "c.npz"), normalize=normalize))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (40, 9, 7)
    axis = 0 if len(shape) == 1 else None
    if normalize == "zscore":
        shift, scale = xtr.mean(axis), xtr.std(axis)
    else:
        shift, scale = xtr.min(axis), xtr.max(axis) - xtr.min(axis)
    for got, raw in ((ds.train.x, xtr), (ds.val.x, xva), (ds.test.x, xte)):
        expected = (raw - shift) / scale
        np.testing.assert_allclose(got, expected.reshape(len(raw), -1), rtol=1e-5, atol=1e-5)


def test_npz_bad_inputs(tmp_path):
    np.savez(tmp_path / "s.npz", x_train=np.zeros((5, 3)), y_train=np.zeros(5), x_test=np.zeros((2, 4)),
             y_test=np.zeros(2))
    with pytest.raises(DataError, match=r"s\.npz.*x_test.*shape"):
        load_dataset(DataConfig(source="npz", path=str(tmp_path / "s.npz")))
    np.savez(tmp_path / "k.npz", a=np.zeros(3))
    with pytest.raises(DataError, match=r"k\.npz.*needs arrays 'x' and 'y'"):
        load_dataset(DataConfig(source="npz", path=str(tmp_path / "k.npz")))


# ---------------------------------------------------------------- csv


def write(tmp_path, text, name="d.csv"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def csv_cfg(path, **kw):
    return DataConfig(source="csv", path=path, target=kw.pop("target", "y"), **kw)


def test_csv_numeric_text_missing_and_drop_columns(tmp_path):
    rows = ["id,a,city,y"] + [f"{i},{'' if i == 3 else i * 1.5},{'A' if i % 2 else 'B'},{i * 10.0}"
                              for i in range(20)]
    rows[5] = "4,NA,null,40.0"        # missing numeric and text
    path = write(tmp_path, "\n".join(rows) + "\n")
    ds = load_dataset(csv_cfg(path, drop_columns=("id",), val_fraction=0.0, test_fraction=0.0,
                              normalize="none", standardize_target=False))
    assert ds.stats.feature_names == ["a", "city=A", "city=B"]
    assert ds.report["missing"]["per_column"] == {"a": 2, "city": 1}
    a = np.array([i * 1.5 for i in range(20) if i not in (3, 4)])
    x = ds.train.x[np.argsort(ds.train.y)]
    np.testing.assert_allclose(x[[3, 4], 0], np.median(a))       # imputed with the train median
    cities = [r.split(",")[2] for r in rows[1:]]
    most = max(("A", "B"), key=cities.count)                     # A 10 times, B 9 (one is null)
    assert cities.count(most) > max(cities.count(c) for c in ("A", "B") if c != most)
    assert x[4, 1:].tolist() == [float(c == most) for c in ("A", "B")]  # missing city: the most frequent
    np.testing.assert_allclose(ds.to_original_units(np.sort(ds.train.y)), np.arange(20) * 10.0)


def test_csv_quoted_and_free_text_hashing(tmp_path):
    from jaxtrain.data.csvfile import read_all, read_layout
    from jaxtrain.data.transforms import hash_text
    words = ["good fine great", "bad awful poor terrible", "so so, maybe fine", "really great movie ok"]
    rows = ["review,i,y"] + [f'"{words[i % 4]} {i}",{i},{i % 2}' for i in range(40)]
    path = write(tmp_path, "\n".join(rows))
    ds = load_dataset(csv_cfg(path, hash_dim=16, columns={"review": "text"}, normalize="none",
                              val_fraction=0.0, test_fraction=0.0))
    assert ds.task == "classification" and ds.feature_shape == (17,)
    x = ds.train.x[np.argsort(ds.train.x[:, 0])]           # column i: the row's number
    texts = np.array([f"{words[i % 4]} {i}" for i in range(40)], dtype=object)
    np.testing.assert_allclose(x[:, 0], np.arange(40))
    np.testing.assert_allclose(x[:, 1:], hash_text(texts, 16), rtol=1e-6)
    table = read_all(read_layout(path), set())     # the quoted field with a comma is one value
    assert [table.column(c)[2].as_py() for c in ("review", "i", "y")] == ["so so, maybe fine 2", "2", "0"]


BAD_CSV = [
    ("", "empty"),
    ("a,b,y\n", "only a header"),
    ("a,b,y\n1,2,3\n4,5\n", r"line 3: 2 fields, but the header has 3"),
    ("a,b,y\n" + "1,2,3\n" * 5 + "1,x7,3\n", r"line 7 column 'b': 'x7' is not a number"),
    ("a,b,y\n" + "1,,3\n2,NA,4\n", r"column 'b': every value is missing"),
    ("a,b,c\n1,2,3\n", r"target column 'y' not in the header"),
]


@pytest.mark.parametrize("text,msg", BAD_CSV)
def test_csv_bad_input_names_file(tmp_path, text, msg):
    path = write(tmp_path, text, "bad.csv")
    with pytest.raises(DataError, match=msg) as e:
        load_dataset(csv_cfg(path))
    assert "bad.csv" in str(e.value) and "\n" not in str(e.value)
    assert isinstance(e.value, UserError)          # the CLI turns it into exit 2


def test_csv_label_out_of_range_names_line_and_column(tmp_path):
    rows = ["a,y"] + [f"{i},{i % 3}" for i in range(10)] + ["5,7"]
    path = write(tmp_path, "\n".join(rows), "lab.csv")
    with pytest.raises(DataError, match=r"lab\.csv line 12 column 'y': label 7 is out of range \[0, 3\)"):
        load_dataset(csv_cfg(path, task="classification", num_classes=3, val_fraction=0.0, test_fraction=0.0))
    ds = load_dataset(csv_cfg(path, task="classification", num_classes=3, val_fraction=0.0,
                              test_fraction=0.0, clean=CleanConfig(invalid_labels="drop")))
    assert len(ds.train) == 10 and ds.report["invalid_labels"]["rows_dropped"] == 1


def test_missing_file_and_unknown_names(tmp_path):
    with pytest.raises(DataError, match="nope.csv"):
        load_dataset(csv_cfg(str(tmp_path / "nope.csv")))
    with pytest.raises(DataError, match="no builtin data set"):
        load_dataset(DataConfig(name="nope"))


def test_builtin_digits_and_synthetic():
    ds = load_dataset(DataConfig())
    assert ds.feature_shape == (64,) and ds.num_classes == 10
    total = len(ds.train) + len(ds.val) + len(ds.test)
    assert total == 1797 and ds.report["rows_out"]["train"] == len(ds.train)
    hp = load_dataset(DataConfig(source="synthetic", name="house_prices"))
    rep = hp.report
    assert rep["duplicates"]["rows_dropped"] > 0 and sum(rep["missing"]["per_column"].values()) > 0
    assert rep["rows_in"]["train"] - rep["duplicates"]["rows_dropped"] == rep["rows_out"]["train"]
    assert abs(hp.train.y.mean()) < 1e-5 and abs(hp.train.y.std() - 1) < 1e-5
    bl = load_dataset(DataConfig(source="synthetic", name="blobs", num_classes=4))
    assert bl.num_classes == 4 and set(np.unique(bl.train.y)) == {0, 1, 2, 3}


def test_a_split_that_rounds_to_no_test_rows_is_an_error(tmp_path):
    np.savez(tmp_path / "tiny.npz", x=np.arange(6.0).reshape(3, 2), y=np.array([0, 1, 0]))
    with pytest.raises(DataError, match=r"tiny\.npz.*test split is empty"):
        load_dataset(DataConfig(source="npz", path=str(tmp_path / "tiny.npz"), val_fraction=0.0,
                                test_fraction=0.1))


# ---------------------------------------------------------------- folders of images


def _images_cfg(tmp_path, path, **kw):
    return DataConfig(source="images", path=str(path), cache_dir=str(tmp_path / "cache"), **kw)


def _gray_folder(tmp_path, n=40, shape=(5, 4), seed=0):
    from image_folders import write_folder
    rng = np.random.default_rng(seed)
    x, y = rng.integers(0, 256, (n, *shape)).astype(np.uint8), rng.integers(0, 3, n)
    paths = write_folder(tmp_path / "imgs", x, y, names=["ant", "bee", "cat"])
    return x, y, paths


def test_image_folder_gives_the_same_dataset_as_the_same_pixels_in_an_npz(tmp_path):
    from image_folders import folder_order
    x, y, _ = _gray_folder(tmp_path)
    order = folder_order(y)
    np.savez(tmp_path / "same.npz", x=x[order], y=y[order])
    arrays = load_dataset(DataConfig(source="npz", path=str(tmp_path / "same.npz")))
    first = load_dataset(_images_cfg(tmp_path, tmp_path / "imgs"))
    again = load_dataset(_images_cfg(tmp_path, tmp_path / "imgs"))
    for ds in (first, again):
        for split in ("train", "val", "test"):
            np.testing.assert_array_equal(getattr(ds, split).x, getattr(arrays, split).x)
            np.testing.assert_array_equal(getattr(ds, split).y, getattr(arrays, split).y)
        assert ds.stats.classes == ["ant", "bee", "cat"] and ds.image_shape == (5, 4)
    assert first.report["images"]["folders"]["path"]["cache_reused"] is False
    assert again.report["images"]["folders"]["path"]["cache_reused"] is True
    assert first.report["images"]["folders"]["path"]["decoded"] == 40


def test_a_changed_file_is_decoded_again(tmp_path):
    from PIL import Image
    x, y, paths = _gray_folder(tmp_path)
    load_dataset(_images_cfg(tmp_path, tmp_path / "imgs", val_fraction=0.0, test_fraction=0.0))
    Image.fromarray(255 - x[0]).save(paths[0])          # same name, new pixels (and size/mtime)
    ds = load_dataset(_images_cfg(tmp_path, tmp_path / "imgs", val_fraction=0.0, test_fraction=0.0,
                                  normalize="none", clean=CleanConfig(duplicates=False)))
    assert ds.report["images"]["folders"]["path"]["cache_reused"] is False
    rows = ds.train.x.reshape(-1, 5, 4)
    assert any(np.array_equal(r, 255 - x[0]) for r in rows) and not any(np.array_equal(r, x[0]) for r in rows)


def test_mixed_sizes_name_two_files_unless_image_size_resizes(tmp_path):
    from PIL import Image
    _, _, paths = _gray_folder(tmp_path)
    big = np.arange(6 * 8, dtype=np.uint8).reshape(6, 8)
    Image.fromarray(big).save(paths[7])
    with pytest.raises(DataError) as e:
        load_dataset(_images_cfg(tmp_path, tmp_path / "imgs"))
    msg = str(e.value)
    assert "\n" not in msg and str(paths[7]) in msg and "6x8" in msg and "data.image_size" in msg
    first = sorted(paths, key=lambda p: (p.parent.name, p.name))[0]
    assert str(first) in msg and "5x4" in msg
    ds = load_dataset(_images_cfg(tmp_path, tmp_path / "imgs", image_size=(3, 2), normalize="none",
                                  val_fraction=0.0, test_fraction=0.0, clean=CleanConfig(duplicates=False)))
    assert ds.image_shape == (3, 2) and ds.feature_shape == (6,) and len(ds.train) == 40


def test_colour_images_rgb_and_gray_by_the_luma_formula(tmp_path):
    from image_folders import folder_order, write_folder
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 256, (12, 4, 6, 3)).astype(np.uint8), np.arange(12) % 2
    write_folder(tmp_path / "rgb", x, y)
    kw = dict(normalize="none", val_fraction=0.0, test_fraction=0.0, clean=CleanConfig(duplicates=False))
    ds = load_dataset(_images_cfg(tmp_path, tmp_path / "rgb", flatten=False, **kw))
    from jaxtrain.data.preprocess import split_indices
    want = x[folder_order(y)][split_indices(12, 0.0, 0.0, 0)[0]]     # the split's seeded shuffle
    assert ds.image_shape == (4, 6, 3)                  # default channels: 3, the images are colour
    np.testing.assert_array_equal(ds.train.x, want)
    gray = load_dataset(_images_cfg(tmp_path, tmp_path / "rgb", channels=1, flatten=False, **kw))
    luma = want.astype(np.float64) @ np.array([299, 587, 114]) / 1000      # ITU-R 601-2 luma
    assert gray.image_shape == (4, 6)
    np.testing.assert_allclose(gray.train.x, luma, atol=1.0)
    from PIL import Image
    mixed = tmp_path / "mixed"                          # the first image gray, the others colour
    write_folder(mixed, x, y)
    Image.fromarray(x[0, ..., 1]).save(mixed / "0" / "00000.png")
    both = load_dataset(_images_cfg(tmp_path, mixed, flatten=False, **kw))
    first = x.copy()
    first[0] = x[0, ..., 1:2]                           # gray as RGB: the same value thrice
    assert both.image_shape == (4, 6, 3)
    np.testing.assert_array_equal(both.train.x, first[folder_order(y)][split_indices(12, 0.0, 0.0, 0)[0]])
    write_folder(tmp_path / "jpeg", x, y, suffix=".jpg", quality=100, subsampling=0)
    jpeg = load_dataset(_images_cfg(tmp_path, tmp_path / "jpeg", flatten=False, **kw))
    assert jpeg.image_shape == (4, 6, 3) and np.abs(jpeg.train.x - want).mean() < 3


def test_truncated_png_is_an_error_naming_it_or_a_counted_drop(tmp_path, capsys):
    from jaxtrain.cli.main import main
    _, _, paths = _gray_folder(tmp_path, n=60, shape=(16, 16))
    data = paths[5].read_bytes()
    paths[5].write_bytes(data[:len(data) // 2])
    (tmp_path / "imgs" / "bee" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError) as e:
        load_dataset(_images_cfg(tmp_path, tmp_path / "imgs"))
    assert "\n" not in str(e.value) and str(e.value).startswith(f"{paths[5]}: cannot read as an image")
    assert "data.clean.invalid_images=drop" in str(e.value)
    ds = load_dataset(_images_cfg(tmp_path, tmp_path / "imgs", clean=CleanConfig(invalid_images="drop")))
    assert ds.report["invalid_images"]["files_skipped"] == 1
    assert ds.report["invalid_images"]["files"][0].startswith(str(paths[5]))
    assert sum(ds.report["rows_in"].values()) == 59
    assert ds.report["images"]["folders"]["path"]["other_files_ignored"] == 1
    code = main(["train", "--set", "data.source=images", "--set", f"data.path={tmp_path / 'imgs'}",
                 "--set", f"data.cache_dir={tmp_path / 'cache'}", "--workdir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"{paths[5]}: cannot read as an image" in err


def test_separate_test_folder_is_the_test_split(tmp_path):
    from image_folders import folder_order, write_folder
    x, y, _ = _gray_folder(tmp_path)
    rng = np.random.default_rng(9)
    xt, yt = rng.integers(0, 256, (9, 5, 4)).astype(np.uint8), np.array([0, 2, 2, 0, 2, 0, 0, 2, 2])
    write_folder(tmp_path / "test", xt, yt, names=["ant", "bee", "cat"])     # no 'bee' folder: fine
    ds = load_dataset(_images_cfg(tmp_path, tmp_path / "imgs", test_path=str(tmp_path / "test"),
                                  normalize="none", val_fraction=0.25, test_fraction=0.5))
    order = folder_order(yt)
    np.testing.assert_array_equal(ds.test.x, xt[order].reshape(9, -1))
    np.testing.assert_array_equal(ds.test.y, yt[order])
    assert len(ds.train) + len(ds.val) == 40 and len(ds.val) == 10      # test_fraction no longer applies
    write_folder(tmp_path / "other", xt[:2], np.array([0, 1]), names=["ant", "dog"])
    with pytest.raises(DataError, match=r"other: class folder\(s\) dog not among the training folder's"):
        load_dataset(_images_cfg(tmp_path, tmp_path / "imgs", test_path=str(tmp_path / "other")))
    write_folder(tmp_path / "wide", rng.integers(0, 256, (2, 5, 5)).astype(np.uint8), np.array([0, 1]),
                 names=["ant", "bee"])
    with pytest.raises(DataError, match=r"wide/ant/00000\.png: 5x5 pixels .* but \S+ is 5x4"):
        load_dataset(_images_cfg(tmp_path, tmp_path / "imgs", test_path=str(tmp_path / "wide")))

def test_separate_val_folder_is_the_val_split_and_normalization_fits_the_training_folder(tmp_path, capsys):
    """Training pixels span 50..200, validation pixels 0..255: a min-max fitted on the val
    folder too would keep its pixels in [0, 1]; fitted on the training folder they leave it."""
    from image_folders import folder_order, write_folder
    from jaxtrain.cli.main import main
    rng = np.random.default_rng(5)
    x, y = rng.integers(50, 201, (40, 5, 4)).astype(np.uint8), rng.integers(0, 3, 40)
    write_folder(tmp_path / "imgs", x, y, names=["ant", "bee", "cat"])
    xv, yv = rng.integers(0, 256, (7, 5, 4)).astype(np.uint8), np.array([2, 0, 0, 2, 2, 0, 2])
    xv[0, 0, 0], xv[1, 0, 0] = 0, 255
    write_folder(tmp_path / "val", xv, yv, names=["ant", "bee", "cat"])     # no 'bee' folder: fine
    xt, yt = rng.integers(50, 201, (6, 5, 4)).astype(np.uint8), np.array([1, 0, 2, 1, 0, 2])
    write_folder(tmp_path / "test", xt, yt, names=["ant", "bee", "cat"])
    kw = dict(normalize="minmax", val_fraction=0.25, test_fraction=0.5, clean=CleanConfig(duplicates=False))
    ds = load_dataset(_images_cfg(tmp_path, tmp_path / "imgs", val_path=str(tmp_path / "val"),
                                  test_path=str(tmp_path / "test"), **kw))
    lo, hi = float(x.min()), float(x.max())
    order = folder_order(yv)
    np.testing.assert_allclose(ds.val.x, (xv[order].reshape(7, -1) - lo) / (hi - lo), atol=1e-6)
    np.testing.assert_array_equal(ds.val.y, yv[order])
    assert ds.val.x.min() < 0 and ds.val.x.max() > 1
    np.testing.assert_allclose(ds.test.x, (xt[folder_order(yt)].reshape(6, -1) - lo) / (hi - lo), atol=1e-6)
    assert len(ds.train) == 40                          # both fractions replaced: all of data.path trains
    assert ds.report["rows_in"] == {"train": 40, "val": 7, "test": 6}
    assert ds.report["split_files"] == {"val": str(tmp_path / "val"), "test": str(tmp_path / "test")}
    assert ds.report["images"]["folders"]["val_path"]["decoded"] == 7
    alone = load_dataset(_images_cfg(tmp_path, tmp_path / "imgs", val_path=str(tmp_path / "val"), **kw))
    np.testing.assert_array_equal(alone.val.x, ds.val.x)
    assert len(alone.test) == 20 and len(alone.train) == 20     # test_fraction 0.5 of the training folder
    write_folder(tmp_path / "odd", xv[:3], np.array([0, 1, 2]), names=["ant", "dog", "eel"])
    code = main(["train", "--set", "data.source=images", "--set", f"data.path={tmp_path / 'imgs'}",
                 "--set", f"data.val_path={tmp_path / 'odd'}", "--set", f"data.cache_dir={tmp_path / 'cache'}",
                 "--workdir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "class folder(s) dog, eel not among" in err
    assert str(tmp_path / "odd") in err
    broken = tmp_path / "val" / "cat" / "00000.png"                  # never dropped, even with drop
    broken.write_bytes(broken.read_bytes()[:40])
    with pytest.raises(DataError) as e:
        load_dataset(_images_cfg(tmp_path, tmp_path / "imgs", val_path=str(tmp_path / "val"),
                                 clean=CleanConfig(invalid_images="drop")))
    assert str(e.value).startswith(f"{broken}: cannot read as an image")
    assert "val images are never skipped" in str(e.value) and "invalid_images=drop" not in str(e.value)


def test_exif_orientation_turns_a_jpeg_upright_in_training_and_in_predict(tmp_path):
    """A JPEG stored 16x24 with EXIF Orientation 6 (a viewer turns it a quarter clockwise) or 8
    (anticlockwise) is the 24x16 image the viewer shows; a plain 24x16 PNG beside them fits
    that size. 8x8 blocks of one colour survive JPEG at quality 100 nearly unchanged."""
    from PIL import Image
    from jaxtrain.data.images import read_image_inputs
    from jaxtrain.data.preprocess import split_indices
    rng = np.random.default_rng(6)
    stored = [np.kron(rng.integers(0, 256, (2, 3, 3)), np.ones((8, 8, 1))).astype(np.uint8) for _ in range(2)]
    shown = [np.rot90(stored[0], k=-1), np.rot90(stored[1], k=1)]         # k=-1: clockwise
    for name, pixels, orientation in (("a", stored[0], 6), ("b", stored[1], 8)):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(pixels).save(tmp_path / "imgs" / name / "photo.jpg", quality=100, subsampling=0, exif=exif)
    plain = rng.integers(0, 256, (24, 16, 3)).astype(np.uint8)
    (tmp_path / "imgs" / "c").mkdir()
    Image.fromarray(plain).save(tmp_path / "imgs" / "c" / "plain.png")
    ds = load_dataset(_images_cfg(tmp_path, tmp_path / "imgs", flatten=False, normalize="none", val_fraction=0.0,
                                  test_fraction=0.0, clean=CleanConfig(duplicates=False)))
    assert ds.image_shape == (24, 16, 3)
    got = np.empty_like(ds.train.x)
    got[split_indices(3, 0.0, 0.0, 0)[0]] = ds.train.x                 # back to folder order
    np.testing.assert_array_equal(got[2], plain)
    for i in range(2):
        error = np.abs(got[i] - shown[i].astype(np.float64))
        assert error.mean() < 2 and error.max() < 16
        wrong_way = np.abs(got[i] - np.rot90(stored[i], k=1 if i == 0 else -1).astype(np.float64))
        assert wrong_way.mean() > 20                                     # turned, and the right way
    new, names = read_image_inputs(tmp_path / "imgs", (24, 16, 3), False, 1)
    assert names == ["a/photo.jpg", "b/photo.jpg", "c/plain.png"]
    np.testing.assert_array_equal(new, got)


def test_gunzip_into_one_buffer_equals_gzip_and_refuses_truncation(tmp_path):
    from jaxtrain.data.sources import gunzip
    payload = np.random.default_rng(0).integers(0, 9, 3_000_000, dtype=np.uint8).tobytes()
    one, two = tmp_path / "one.gz", tmp_path / "two.gz"
    one.write_bytes(gzip.compress(payload))
    two.write_bytes(gzip.compress(payload[:1000]) + gzip.compress(payload[1000:]))   # two members
    assert bytes(gunzip(str(one))) == payload and bytes(gunzip(str(two))) == payload
    cut = tmp_path / "cut.gz"
    cut.write_bytes(one.read_bytes()[:-5000])
    with pytest.raises((EOFError, OSError)):
        gunzip(str(cut))
