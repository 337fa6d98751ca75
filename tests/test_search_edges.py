"""jaxtrain search off the happy path: one study per work directory, a study's base config,
trial folders never reused, masked storage URLs, what results.csv says after failures, one
console line per trial, the best by the metric's direction, and PostgreSQL shared by workers."""

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from run_files import read_results
from jaxtrain.cli.main import main
from jaxtrain.config.schema import load_config
from jaxtrain.util.secrets import mask_secrets

optuna = pytest.importorskip("optuna")

ROOT = Path(__file__).resolve().parents[1]
CFG = {"name": "tiny", "data": {"source": "synthetic", "name": "blobs", "synthetic_rows": 160, "batch_size": 32,
                                "val_fraction": 0.25},
       "model": {"hidden_sizes": [8]}, "optimizer": {"name": "adamw"},
       "train": {"epochs": 1}, "checkpoint": {"enabled": False}}
LR = ["--space", "optimizer.learning_rate=loguniform(1e-3,3e-1)"]


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(CFG))
    return str(path)


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes (folders included by their files' paths)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _journal_study(root: Path, name: str):
    from optuna.storages.journal import JournalFileBackend, JournalStorage
    return optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(root / "study.journal"))))


def _err_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_the_collision_sequence_leaves_the_first_study_byte_identical(config, tmp_path, capsys):
    """Issue 28's sequence: study A (4 trials), then study B into the same --workdir, 4 times;
    then A again with another base config. Every later try exits 2 naming the study (and the
    differing keys), asks no trial and writes nothing."""
    w = tmp_path / "w"
    assert main(["search", config, *LR, "--trials", "4", "--population", "4", "--workdir", str(w),
                 "--study", "A"]) == 0
    before = _tree(w)
    assert {"results.csv", "best.yaml", "search.json"} <= set(before) and len(read_results(w)) == 4
    assert sorted(p.name for p in w.glob("trial-*")) == [f"trial-{i:04d}" for i in range(4)]
    capsys.readouterr()
    b = ["search", config, "--space", "optimizer.learning_rate=uniform(1e-4,1e-1)", "--trials", "2",
         "--population", "2", "--workdir", str(w), "--study", "B"]
    for _ in range(4):
        assert main(b) == 2
        line = _err_line(capsys)
        assert "study 'A'" in line and "study 'B'" in line and "--workdir" in line, line
        assert _tree(w) == before
    assert optuna.get_all_study_names(_journal_study(w, "A")._storage) == ["A"]  # B was never created
    # The same study A with another base config: refused naming both differing keys.
    assert main(["search", config, *LR, "--trials", "6", "--population", "2", "--workdir", str(w), "--study", "A",
                 "--set", "train.epochs=2", "--set", "model.hidden_sizes=[16]"]) == 2
    line = _err_line(capsys)
    assert "study 'A'" in line and "train.epochs=1 (this search: 2)" in line, line
    assert "model.hidden_sizes=[8] (this search: [16])" in line, line
    assert _tree(w) == before
    assert len(_journal_study(w, "A").trials) == 4  # nothing asked
    # A work directory of an earlier jaxtrain (no search.json): the journal names its study.
    (w / "search.json").unlink()
    before = _tree(w)
    assert main(b) == 2
    line = _err_line(capsys)
    assert "study 'A'" in line and "study 'B'" in line, line
    assert _tree(w) == before


def test_another_search_without_a_workdir_gets_a_folder_of_its_own(config, tmp_path, monkeypatch):
    """The README's search after docs/search.md's (another space, the same config name): each
    in its own default work directory; the same command again continues its own."""
    monkeypatch.chdir(tmp_path)
    first = ["search", config, *LR, "--trials", "1", "--population", "1"]
    second = ["search", config, "--space", "optimizer.weight_decay=loguniform(1e-5,1e-1)", "--trials", "1",
              "--population", "1", "--set", "train.epochs=2"]
    assert main(first) == 0 and main(second) == 0
    folders = sorted(p for p in (tmp_path / "runs").iterdir())
    assert len(folders) == 2 and all(p.name.startswith("tiny-search-") for p in folders), folders
    assert sorted(len(read_results(p)) for p in folders) == [1, 1]
    assert main([*first[:-4], "--trials", "2", "--population", "1"]) == 0  # continues the first study
    assert sorted(len(read_results(p)) for p in (tmp_path / "runs").iterdir()) == [1, 2]


def test_a_study_records_its_base_config_without_the_searched_keys(config, tmp_path):
    w = tmp_path / "w"
    assert main(["search", config, *LR, "--trials", "1", "--population", "1", "--workdir", str(w),
                 "--set", "train.epochs=2"]) == 0
    made_for = _journal_study(w, "tiny").user_attrs["made_for"]
    assert set(made_for) == {"space", "metric", "base"}  # one attribute, written in one call
    base = made_for["base"]
    resolved = yaml.safe_load((w / "trial-0000" / "config.yaml").read_text())  # a trial's resolved config
    assert "optimizer.learning_rate" not in base
    assert base["train.epochs"] == resolved["train"]["epochs"] == 2
    assert base["model.hidden_sizes"] == list(resolved["model"]["hidden_sizes"]) == [8]
    assert base["optimizer.weight_decay"] == resolved["optimizer"]["weight_decay"]
    assert base["data.synthetic_rows"] == 160
    # Continuing with the same base config (a different --set spelling of the same value) is accepted.
    assert main(["search", config, *LR, "--trials", "2", "--population", "1", "--workdir", str(w),
                 "--set", "train.epochs=2", "--set", "model.hidden_sizes=[8]"]) == 0
    assert [r["state"] for r in read_results(w)] == ["COMPLETE", "COMPLETE"]


def test_a_trial_folder_that_holds_a_run_is_never_reused_and_its_trials_are_told_fail(config, tmp_path, capsys):
    w = tmp_path / "w"
    args = ["search", config, *LR, "--population", "2", "--workdir", str(w)]
    assert main([*args, "--trials", "2"]) == 0
    planted = w / "trial-0002"
    planted.mkdir()
    (planted / "config.yaml").write_text("a run of its own\n")
    results = (w / "results.csv").read_bytes()
    capsys.readouterr()
    assert main([*args, "--trials", "4"]) == 2
    line = _err_line(capsys)
    assert "trial-0002" in line and "already holds a run" in line and "trials 2, 3 told FAIL" in line, line
    assert (planted / "config.yaml").read_text() == "a run of its own\n" and not (w / "trial-0003").exists()
    assert (w / "results.csv").read_bytes() == results
    study = _journal_study(w, "tiny")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "FAIL", "FAIL"]  # not RUNNING
    assert all("already holds a run" in t.user_attrs["abandoned"] for t in study.trials[2:])
    # The abandoned trials never trained: they do not count against --trials.
    (planted / "config.yaml").unlink()
    planted.rmdir()
    assert main([*args, "--trials", "4"]) == 0
    rows = read_results(w)
    assert [(r["number"], r["state"]) for r in rows] == [("0", "COMPLETE"), ("1", "COMPLETE"), ("2", "FAIL"),
                                                          ("3", "FAIL"), ("4", "COMPLETE"), ("5", "COMPLETE")]
    assert "already holds a run" in rows[2]["error"]


def test_a_refused_search_leaves_no_workdir_and_masks_the_storage_password(config, tmp_path, capsys):
    w = tmp_path / "new"
    url = "postgresql+psycopg2://user:secretpw@127.0.0.1:5999/optuna"
    assert main(["search", config, *LR, "--trials", "2", "--workdir", str(w), "--storage", url]) == 2
    captured = capsys.readouterr()
    assert "secretpw" not in captured.out + captured.err
    line = captured.err.strip()
    assert "postgresql+psycopg2://user:***@127.0.0.1:5999/optuna" in line and len(line.splitlines()) == 1, line
    assert not w.exists()
    # A bad space into a new workdir: nothing either.
    assert main(["search", config, "--space", "optimizer.learning_rate=loguniform(0,1)", "--trials", "2",
                 "--workdir", str(w)]) == 2
    assert not w.exists()


@pytest.mark.parametrize("text, masked", [
    ("postgresql://user:secretpw@host/db", "postgresql://user:***@host/db"),
    ("postgresql+psycopg2://u:secretpw@127.0.0.1:5999/optuna", "postgresql+psycopg2://u:***@127.0.0.1:5999/optuna"),
    ("cannot open mysql://root:se@cr/et@db:3306/x (refused)", "cannot open mysql://root:***@db:3306/x (refused)"),
    ("postgresql://postgres:@/postgres?host=/tmp/pg", "postgresql://postgres:***@/postgres?host=/tmp/pg"),
    ("postgresql://u@/d?host=/x&password=secretpw", "postgresql://u@/d?host=/x&password=***"),
    ("sqlite:///runs/search.db", "sqlite:///runs/search.db"),
    ("journal:/shared/study.journal", "journal:/shared/study.journal"),
    ("postgresql://user@host/db", "postgresql://user@host/db"),
])
def test_mask_secrets(text, masked):
    assert mask_secrets(text) == masked


HOUSES = {"name": "houses", "data": {"source": "synthetic", "name": "house_prices", "synthetic_rows": 200,
                                    "batch_size": 32, "val_fraction": 0.25},
          "model": {"hidden_sizes": [8]}, "optimizer": {"name": "adamw"}, "train": {"epochs": 2},
          "checkpoint": {"enabled": False}}


def test_after_the_non_finite_fallback_results_say_what_happened_and_failed_trials_count(tmp_path, capsys):
    """SGD with learning rates up to 1e9 on a regression population of 4: the large rates
    diverge, the population is retrained one trial at a time. Rows say population 1, FAIL rows
    name only folders that are there, and --trials 4 trains 4 trials (failed ones counted, as
    the console says)."""
    path = tmp_path / "sgd.yaml"
    path.write_text(yaml.safe_dump({**HOUSES, "optimizer": {"name": "sgd"}, "train": {"epochs": 1}}))
    w = tmp_path / "w"
    assert main(["search", str(path), "--space", "optimizer.learning_rate=loguniform(1e-3,1e9)", "--trials", "4",
                 "--population", "4", "--sampler", "random", "--seed", "5", "--workdir", str(w)]) == 0
    out = capsys.readouterr().out
    rows = read_results(w)
    assert len(rows) == 4 and "training them one at a time" in out
    failed = [r for r in rows if r["state"] == "FAIL"]
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    assert failed and complete, rows
    assert max(float(r["optimizer.learning_rate"]) for r in complete) < \
        min(float(r["optimizer.learning_rate"]) for r in failed)  # the large rates diverged
    assert [r["population"] for r in rows] == ["1"] * 4  # each trained alone after the fallback
    for r in rows:
        assert not r["workdir"] or Path(r["workdir"]).is_dir(), r
        if r["state"] == "COMPLETE":
            summary = json.loads((Path(r["workdir"]) / "summary.json").read_text())
            assert "vectorized_points" not in summary["execution"]  # trained as a plain run
            assert float(r["val.mse"]) == pytest.approx(summary["val"]["mse"], rel=1e-12)
            assert float(r["time_s"]) == round(summary["time"]["total_s"], 3)  # the trial's own run time
        else:
            assert "non-finite" in r["error"] and not (Path(r["workdir"]) / "summary.json").exists(), r
            # the console's line for it gives the error's first clause
            assert f"search: trial {r['number']} FAIL: {r['error'].split(';')[0]} (" in out, out
    assert f"4 of 4 trials: {len(complete)} complete, 0 pruned, {len(failed)} failed" in out
    assert len(_journal_study(w, "houses").trials) == 4  # none asked to replace a failed one


def test_one_console_line_per_trial_and_no_test_split_in_the_trials(config, tmp_path, capsys):
    w = tmp_path / "w"
    assert main(["search", config, *LR, "--trials", "4", "--population", "2", "--workdir", str(w),
                 "--set", "train.epochs=3", "--prune"]) == 0
    lines = capsys.readouterr().out.splitlines()
    per_trial = [l for l in lines if l.startswith("search: trial ")]
    assert sorted(int(l.split()[2]) for l in per_trial) == [0, 1, 2, 3], lines
    # besides: the opening line, a line per batch (2), the counts, the choice, the files, the plots
    assert len(lines) <= len(per_trial) + 7, lines
    assert all(l.startswith("search: ") for l in lines), lines  # no trial's run prints its epochs
    for row in read_results(w):
        records = [json.loads(l) for l in (Path(row["workdir"]) / "metrics.jsonl").read_text().splitlines()]
        assert not [r for r in records if r.get("split") == "test"], row  # never evaluated on test
        assert json.loads((Path(row["workdir"]) / "summary.json").read_text())["test"] == {}
    best = load_config(w / "best.yaml")
    assert best.train.evaluate_test is True  # training the chosen config again reports its test figure
    # verbose 2: every trial's run prints its lines too
    assert main(["search", config, *LR, "--trials", "2", "--population", "2", "--workdir", str(tmp_path / "v"),
                 "--verbose", "2"]) == 0
    out = capsys.readouterr().out
    assert "trial-0000: epoch 1" in out and "| number | state |" in out, out


def test_a_regression_search_chooses_the_lowest_val_mse(tmp_path):
    """best.yaml is the results.csv row with the lowest val.mse, computed here from the rows
    and checked against each trial's own summary.json."""
    path = tmp_path / "houses.yaml"
    path.write_text(yaml.safe_dump(HOUSES))
    w = tmp_path / "w"
    assert main(["search", str(path), "--space", "optimizer.learning_rate=loguniform(1e-4,3e-1)", "--trials", "5",
                 "--population", "5", "--sampler", "random", "--workdir", str(w)]) == 0
    rows = [r for r in read_results(w) if r["state"] == "COMPLETE"]
    assert len(rows) == 5
    for r in rows:
        summary = json.loads((Path(r["workdir"]) / "summary.json").read_text())
        assert float(r["val.mse"]) == pytest.approx(summary["val"]["mse"], abs=1e-12)
    mses = [float(r["val.mse"]) for r in rows]
    assert max(mses) > min(mses) and all(math.isfinite(m) for m in mses)
    lowest = min(rows, key=lambda r: float(r["val.mse"]))
    assert load_config(w / "best.yaml").optimizer.learning_rate == pytest.approx(
        float(lowest["optimizer.learning_rate"]), rel=1e-12)


def _pgserver():
    try:
        import pgserver
        import psycopg  # noqa: F401  (SQLAlchemy 2.1's driver for postgresql://)
    except ImportError as e:
        pytest.skip(f"no PostgreSQL for the test: {e.name} is not installed (pip install '.[test]')")
    return pgserver


def test_two_workers_share_a_real_postgresql_server_and_train_every_trial_once(config, tmp_path, monkeypatch):
    """The server's data folder is outside pytest's temporary root: running as root, pgserver
    runs PostgreSQL as its own user, which must reach the folder, and a concurrent pytest
    session resets that root to mode 0700."""
    folder = Path(tempfile.mkdtemp(prefix="jaxtrain-pg-"))
    # pgserver's lock file (read when it is imported; only this process touches it): not the user's
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "runtime"))
    pgserver = _pgserver()
    server = pgserver.get_server(folder / "pg", cleanup_mode="stop")
    try:
        uri = server.get_uri()
        assert uri.startswith("postgresql://")
        server.psql("ALTER USER postgres PASSWORD 'secretpw';")
        # the URL as docs/search.md shows it, with a password: local socket, so any password is let in
        url = uri.replace("postgresql://postgres:@", "postgresql://postgres:secretpw@", 1)
        assert "secretpw" in url
        env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_NUM_CPU_DEVICES": "1"}
        procs = [subprocess.Popen([sys.executable, "-m", "jaxtrain", "search", config, *LR, "--trials", "6",
                                   "--population", "2", "--storage", url, "--study", "shared",
                                   "--workdir", str(tmp_path / w)], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for w in ("a", "b")]
        outs = []
        for p in procs:
            out, _ = p.communicate(timeout=900)
            assert p.returncode == 0, out
            outs.append(out)
        assert "secretpw" not in "".join(outs) and "postgres:***@" in outs[0], outs[0]
        trained = [d for w in ("a", "b") for d in (tmp_path / w).glob("trial-*") if (d / "summary.json").exists()]
        numbers = [int(d.name.split("-")[1]) for d in trained]
        assert len(numbers) == len(set(numbers)) == 6, trained
        study = optuna.load_study(study_name="shared", storage=uri)
        assert sorted(t.number for t in study.trials if t.state.name == "COMPLETE") == sorted(numbers)
        written = [p.read_text() for w in ("a", "b") for p in (tmp_path / w).glob("*") if p.suffix in (".csv", ".json")]
        assert written and not [t for t in written if "secretpw" in t]
        assert "secretpw" not in json.dumps(study.user_attrs) + json.dumps([t.user_attrs for t in study.trials])
    finally:
        server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)
