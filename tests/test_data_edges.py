"""The edges of the data stage: image folders with too few or empty classes, Parquet data
sets whose files disagree, messages that say what is wrong (whole words, every bad label, no
far-fetched suggestion), a run of the default config on other data named after it, and the
README/docs agreeing with the code they describe."""

import inspect
import re
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import jaxtrain
from jaxtrain.cli.main import main
from jaxtrain.config.data import CleanConfig, DataConfig
from jaxtrain.config.schema import load_config
from jaxtrain.data import load_dataset
from jaxtrain.data.user_input import unseen_labels_message
from jaxtrain.util.errors import DataError

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--set", "train.epochs=1", "--set", "parallel.data_axis_size=1"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Runs here never touch the user's cache (peak FLOP/s, compiled code, decoded images)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def test_the_image_cache_defaults_to_jaxtrain_s_one_cache_folder(tmp_path):
    from jaxtrain.data.images import cache_root
    assert cache_root(DataConfig(source="images", path="x")) == str(tmp_path / "xdg-cache" / "jaxtrain" / "images")


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---------------------------------------------------------------- image folders


def _digits_folder(root: Path, classes=(0, 1, 2), per_class=20) -> None:
    from image_folders import digits_uint8, write_folder
    x, y = digits_uint8()
    keep = np.concatenate([np.flatnonzero(y == c)[:per_class] for c in classes])
    write_folder(root, x[keep], y[keep])


def _images_cli(tmp_path, path, *more):
    return ["train", "--set", "data.source=images", "--set", f"data.path={path}",
            "--set", f"data.cache_dir={tmp_path / 'cache'}", *FAST, *more]


def test_one_class_folder_exits_2_not_a_perfect_run(tmp_path, capsys):
    _digits_folder(tmp_path / "one", classes=(4,))
    code, _, err = _cli(capsys, *_images_cli(tmp_path, tmp_path / "one"), "--workdir", tmp_path / "run")
    line = _one_line(err)
    assert code == 2 and str(tmp_path / "one") in line and "at least 2 classes" in line and "(4)" in line
    assert not (tmp_path / "run" / "summary.json").exists()


@pytest.mark.parametrize("content", ["empty", "notes", "corrupt"])
def test_a_class_folder_without_readable_images_exits_2_naming_it(tmp_path, capsys, content):
    _digits_folder(tmp_path / "imgs")
    extra = tmp_path / "imgs" / "zebra"
    extra.mkdir()
    if content == "notes":
        (extra / "README.txt").write_text("photos to come")
    if content == "corrupt":
        (extra / "00000.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    code, _, err = _cli(capsys, *_images_cli(tmp_path, tmp_path / "imgs"), "--workdir", tmp_path / "run")
    line = _one_line(err)
    assert code == 2 and str(extra) in line and not (tmp_path / "run" / "summary.json").exists()
    if content == "corrupt":        # the unreadable file itself is named first
        assert f"{extra / '00000.png'}: cannot read as an image" in line
    else:
        assert "class folder with no readable PNG or JPEG image" in line
        assert "data.clean.invalid_images=drop" in line


def test_drop_leaves_an_empty_class_out_with_a_line_and_counts_dropped_images(tmp_path, capsys):
    _digits_folder(tmp_path / "imgs")
    shutil.copytree(tmp_path / "imgs", tmp_path / "same")        # the answer: no extra folder at all
    empty = tmp_path / "imgs" / "0_empty"          # sorts between classes 0 and 1: the labels shift
    empty.mkdir()
    (empty / "00000.png").write_bytes(b"not a png")
    bad = tmp_path / "imgs" / "1" / "00099.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    drop = dict(cache_dir=str(tmp_path / "cache"), clean=CleanConfig(invalid_images="drop"))
    ds = load_dataset(DataConfig(source="images", path=str(tmp_path / "imgs"), **drop))
    want = load_dataset(DataConfig(source="images", path=str(tmp_path / "same"), cache_dir=str(tmp_path / "cache")))
    assert ds.num_classes == 3 and ds.stats.classes == ["0", "1", "2"] == want.stats.classes
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(ds, split).x, getattr(want, split).x)
        np.testing.assert_array_equal(getattr(ds, split).y, getattr(want, split).y)
    assert ds.report["invalid_images"]["classes_left_out"] == ["0_empty"]
    assert ds.report["invalid_images"]["files_skipped"] == 2
    code, out, _ = _cli(capsys, *_images_cli(tmp_path, tmp_path / "imgs"), "--set", "data.clean.invalid_images=drop",
                        "--workdir", tmp_path / "run")
    assert code == 0
    assert "2 unreadable images dropped" in out
    assert "class folders without a readable image left out: 0_empty" in out
    assert '"0_empty"' not in (tmp_path / "run" / "stats.json").read_text()


def test_drop_that_leaves_one_class_is_still_exit_2(tmp_path, capsys):
    _digits_folder(tmp_path / "imgs", classes=(3,))
    (tmp_path / "imgs" / "zebra").mkdir()
    code, _, err = _cli(capsys, *_images_cli(tmp_path, tmp_path / "imgs"), "--set", "data.clean.invalid_images=drop",
                        "--workdir", tmp_path / "run")
    assert code == 2 and "at least 2 classes" in _one_line(err)


# ---------------------------------------------------------------- Parquet data sets


def _table(n=240, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    city = np.array(["north", "south", "east"], object)[rng.integers(0, 3, n)]
    y = (a > 0).astype(np.int64) + (city == "north")
    return pa.table({"a": a, "n": rng.integers(0, 9, n), "city": pa.array(city, pa.string()), "y": y})


def _two_files(d: Path, second) -> Path:
    t = _table()
    d.mkdir()
    pq.write_table(t.slice(0, 120), d / "part-0.parquet")
    pq.write_table(second(t.slice(120)), d / "part-1.parquet")
    return d


DISAGREE = {
    "missing": (lambda t: t.drop_columns(["city"]), "column 'city' of"),
    "extra": (lambda t: t.append_column("b", pa.array(np.ones(len(t)))), "column 'b': not in"),
    "type": (lambda t: t.set_column(1, "n", pa.array([str(v) for v in t.column("n").to_pylist()])),
             "column 'n': type string, but int64 in"),
}


@pytest.mark.parametrize("streaming", [False, True], ids=["memory", "streamed"])
@pytest.mark.parametrize("case", list(DISAGREE))
def test_parquet_files_that_disagree_exit_2_naming_file_and_column(tmp_path, capsys, case, streaming):
    change, words = DISAGREE[case]
    d = _two_files(tmp_path / "d", change)
    code, _, err = _cli(capsys, "train", "--set", "data.source=parquet", "--set", f"data.path={d}",
                        "--set", "data.target=y", "--set", "data.task=classification",
                        "--set", f"data.streaming={str(streaming).lower()}",
                        "--set", f"data.cache_dir={tmp_path / 'c'}",
                        *FAST, "--workdir", tmp_path / "run")
    line = _one_line(err)
    assert code == 2 and line.startswith(f"jaxtrain: error: {d / 'part-1.parquet'}") and words in line
    assert str(d / "part-0.parquet") in line
    assert not (tmp_path / "run" / "summary.json").exists()


def test_a_glob_of_parquet_files_is_checked_too(tmp_path):
    from jaxtrain.data.parquetfile import open_dataset
    d = _two_files(tmp_path / "d", DISAGREE["missing"][0])
    with pytest.raises(DataError, match=r"part-1\.parquet: column 'city' of .*part-0\.parquet is not there"):
        open_dataset(str(d / "*.parquet"))


def test_numbers_of_other_widths_and_an_all_null_column_agree(tmp_path):
    t = _table()
    d = tmp_path / "d"
    d.mkdir()
    first, second = t.slice(0, 120), t.slice(120)
    pq.write_table(first.set_column(0, "a", pa.array(np.round(first.column("a").to_numpy() * 100).astype(np.int64))),
                   d / "part-0.parquet")                                  # int64 here, double there
    pq.write_table(second.set_column(2, "city", pa.nulls(len(second), pa.null())), d / "part-1.parquet")
    whole = pa.concat_tables([
        first.set_column(0, "a", pa.array(np.round(first.column("a").to_numpy() * 100))),
        second.set_column(2, "city", pa.nulls(len(second), pa.string()))])
    pq.write_table(whole, tmp_path / "whole.parquet")
    kw = dict(source="parquet", target="y", task="classification")
    a = load_dataset(DataConfig(path=str(d), **kw))
    b = load_dataset(DataConfig(path=str(tmp_path / "whole.parquet"), **kw))
    assert a.report["missing"] == b.report["missing"] and a.stats.categories == b.stats.categories
    np.testing.assert_allclose(a.train.x, b.train.x, rtol=1e-6)
    np.testing.assert_array_equal(a.train.y, b.train.y)
    streamed = load_dataset(DataConfig(path=str(d), streaming=True, cache_dir=str(tmp_path / "not" / "yet"), **kw))
    assert streamed.report["missing"] == a.report["missing"] and streamed.stats == a.stats
    np.testing.assert_allclose(streamed.test.x, a.test.x, atol=1e-6)


def test_the_console_says_how_a_missing_category_was_filled(tmp_path):
    from jaxtrain.data import summary
    t = _table()
    city = t.column("city").to_pylist()
    for i in range(0, len(city), 7):
        city[i] = None
    pq.write_table(t.set_column(2, "city", pa.array(city, pa.string())), tmp_path / "t.parquet")
    ds = load_dataset(DataConfig(source="parquet", path=str(tmp_path / "t.parquet"), target="y",
                                 task="classification", val_fraction=0.0, test_fraction=0.0))
    values, counts = np.unique([c for c in city if c is not None], return_counts=True)
    assert ds.stats.fills["city"] == values[counts.argmax()]           # the fill is the most frequent value
    assert f"city {len(range(0, len(city), 7))}; imputed (median; text columns: most frequent)" in summary(ds)


def test_a_parquet_error_is_not_cut_mid_word(tmp_path, capsys):
    d = tmp_path / ("a_rather_long_folder_name_" * 4)
    d.mkdir()
    (d / "bad.parquet").write_text("this is not a parquet file")
    code, _, err = _cli(capsys, "train", "--set", "data.source=parquet", "--set", f"data.path={d / 'bad.parquet'}",
                        "--set", "data.target=y", *FAST, "--workdir", tmp_path / "run")
    line = _one_line(err)
    assert code == 2 and "magic bytes not found" in line, line      # the reason survives


def test_clip_words_keeps_whole_words():
    from jaxtrain.util.errors import clip_words
    text = " ".join(f"word{i:03d}" for i in range(100))
    clipped = clip_words(text, 50)
    assert len(clipped) <= 54 and clipped.endswith(" ...")
    words = clipped.removesuffix(" ...").split(" ")
    assert words == text.split(" ")[:len(words)] and len(words) == 6
    assert clip_words("short\nsecond line") == "short"


# ---------------------------------------------------------------- labels


def test_unseen_labels_name_all_and_suggest_only_close_ones():
    msg = unseen_labels_message(["cat", "hgih", "cat", "dog"], [str(k) for k in range(10)] + ["high"], "f.csv")
    assert "'cat', 'hgih' (closest: 'high'), 'dog'" in msg and "3 more" not in msg
    assert "'cat' (closest" not in msg and "'dog' (closest" not in msg
    many = unseen_labels_message([f"x{i}" for i in range(7)], ["a", "b"], "f.csv")
    assert all(f"'x{i}'" in many for i in range(5)) and "'x5'" not in many and "and 2 more" in many


def test_a_split_file_with_two_bad_labels_names_both(tmp_path, capsys):
    rows = "".join(f"{i * 0.1},{['high', 'low', 'mid'][i % 3]}\n" for i in range(90))
    (tmp_path / "t.csv").write_text("a,band\n" + rows)
    (tmp_path / "e.csv").write_text("a,band\n1,hgih\n2,low\n3,cat\n4,hgih\n")
    code, _, err = _cli(capsys, "train", "--set", "data.source=csv", "--set", f"data.path={tmp_path / 't.csv'}",
                        "--set", f"data.test_path={tmp_path / 'e.csv'}", "--set", "data.target=band",
                        "--set", "data.task=classification", *FAST, "--workdir", tmp_path / "run")
    line = _one_line(err)
    assert code == 2 and "label 'hgih'" in line and "closest known: 'high'" in line
    assert "3 such rows; also 'cat')" in line


def test_eval_given_the_idx_labels_file_says_to_pass_the_images(tmp_path, capsys):
    from test_data_sources import make_idx
    make_idx(tmp_path)
    code, _, _ = _cli(capsys, "train", "mnist_mlp", "--set", "data.source=idx", "--set", f"data.path={tmp_path}",
                      *FAST, "--workdir", tmp_path / "run")
    assert code == 0
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    for command in ("eval", "predict"):
        code, _, err = _cli(capsys, command, tmp_path / "run", "--input", labels)
        line = _one_line(err)
        assert code == 2 and f"{labels}: an IDX labels file, not images" in line
        assert "t10k-images-idx3-ubyte.gz" in line
    code, out, _ = _cli(capsys, "eval", tmp_path / "run", "--input", tmp_path / "t10k-images-idx3-ubyte.gz")
    assert code == 0 and "accuracy" in out


# ---------------------------------------------------------------- run names


@pytest.mark.parametrize("sets, name", [
    (["data.source=images", "data.path=/photos/flowers/"], "flowers_mlp"),
    (["data.source=parquet", "data.path=/d/housing.parquet", "data.target=y", "model.name=linear"], "housing_linear"),
    (["data.source=parquet", "data.path=data/part-*.parquet", "data.target=y"], "data_mlp"),
    (["data.batch_size=64", "model.name=cnn"], "digits_mlp"),           # the same data: the same name
    (["data.name=iris"], "iris_mlp"),
    (["data.source=images", "data.path=/photos/flowers", "name=mine"], "mine"),
])
def test_a_default_config_run_on_other_data_is_named_from_it(sets, name):
    assert load_config(None, sets).name == name


def test_the_python_api_names_a_default_config_run_from_its_data_too():
    from jaxtrain.runs.api import _config
    sets = {"data.source": "parquet", "data.path": "/d/housing.parquet", "data.target": "y"}
    assert _config(None, sets, {}).name == "housing_mlp"
    assert _config(None, None, {k.replace(".", "__"): v for k, v in sets.items()}).name == "housing_mlp"
    assert _config(None, ["data.source=images", "data.path=/p/flowers"], {}).name == "flowers_mlp"


def test_an_image_run_without_config_is_filed_under_its_folder(tmp_path, capsys, monkeypatch):
    _digits_folder(tmp_path / "flowers")
    monkeypatch.chdir(tmp_path)
    code, _, _ = _cli(capsys, *_images_cli(tmp_path, tmp_path / "flowers"))
    runs = list((tmp_path / "runs").iterdir())
    assert code == 0 and len(runs) == 1 and runs[0].name.endswith("-flowers_mlp")
    assert "name: flowers_mlp" in (runs[0] / "config.yaml").read_text()


# ---------------------------------------------------------------- README and docs against the code


def _pyproject_extras() -> set[str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return set(tomllib.load(f)["project"]["optional-dependencies"])


def test_readme_lists_every_extra():
    readme = (ROOT / "README.md").read_text()
    paragraph = readme[readme.index("Extras:"):readme.index("A missing extra exits 2")]
    assert set(re.findall(r"'\.\[([\w-]+)\]'", paragraph)) == _pyproject_extras()


def test_readme_quickstart_installs_the_report_extra_before_report():
    quick = (ROOT / "README.md").read_text().split("## Quickstart")[1].split("\n## ")[0]
    report = quick.index("jaxtrain report")
    assert re.search(r"pip install '\.\[[\w,]*report[\w,]*\]'", quick[:report])


@pytest.mark.parametrize("name", ["train", "evaluate", "resume"])
def test_readme_signatures_match_the_code(name):
    text = " ".join((ROOT / "README.md").read_text().split())
    documented = re.search(rf"`{name}\(([^`]*)\)`", text).group(1)
    want = []
    for p in inspect.signature(getattr(jaxtrain, name)).parameters.values():
        if p.kind is p.VAR_KEYWORD:
            want.append(f"**{p.name}")
            continue
        if p.kind is p.KEYWORD_ONLY and "*" not in want:
            want.append("*")
        want.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}")
    assert [s.strip() for s in documented.split(",")] == want


def test_docs_name_what_mlflow_ui_needs():
    with open(ROOT / "pyproject.toml", "rb") as f:
        extra = tomllib.load(f)["project"]["optional-dependencies"]["mlflow"]
    names = {re.split(r"[<>=!\[ ;]", r, maxsplit=1)[0] for r in extra}
    models = " ".join((ROOT / "docs" / "models.md").read_text().split())
    assert "mlflow ui" in models
    if "mlflow" not in names:        # the extra brings the client only: the docs must say what the UI needs
        assert "mlflow-skinny" in names
        ui = models.index("`mlflow ui` needs")
        assert "`pip install mlflow`" in models[ui:ui + 300]
