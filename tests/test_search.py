"""jaxtrain search: Optuna trials trained as vectorized populations, pruned, shared through storage."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from run_files import read_results
from jaxtrain.cli.main import main
from jaxtrain.config.schema import load_config
from jaxtrain.runs.api import train
from jaxtrain.runs.space import parse_space
from jaxtrain.util.errors import ConfigError
from jaxtrain.util.events import Console

ROOT = Path(__file__).resolve().parents[1]
CFG = {"name": "tiny", "data": {"source": "synthetic", "name": "blobs", "synthetic_rows": 240, "batch_size": 32,
                                "val_fraction": 0.2},
       "model": {"hidden_sizes": [16]}, "optimizer": {"name": "adamw"},
       "train": {"epochs": 2}, "checkpoint": {"enabled": False}}
SPACE = ["--space", "optimizer.learning_rate=loguniform(1e-3,3e-1)",
         "--space", "optimizer.weight_decay=loguniform(1e-5,1e-1)"]


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(CFG))
    return str(path)


def _summary(row: dict) -> dict:
    return json.loads((Path(row["workdir"]) / "summary.json").read_text())


def test_population_search_writes_results_and_a_best_yaml_that_trains(config, tmp_path, capsys):
    root = tmp_path / "s"
    args = ["search", config, *SPACE, "--trials", "16", "--population", "8", "--workdir", str(root)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "train as one population" in out
    rows = read_results(root)
    assert len(rows) == 16 and {r["state"] for r in rows} == {"COMPLETE"}
    assert sorted(int(r["number"]) for r in rows) == list(range(16))
    for row in rows:  # every figure of results.csv is the trial's own summary.json's
        summary = _summary(row)
        assert float(row["val.accuracy"]) == pytest.approx(summary["val"]["accuracy"], abs=1e-12)
        assert int(row["epochs"]) == summary["train"]["epochs"] == 2
        cfg = load_config(Path(row["workdir"]) / "config.yaml")
        assert cfg.optimizer.learning_rate == pytest.approx(float(row["optimizer.learning_rate"]))
    best = max(rows, key=lambda r: float(r["val.accuracy"]))
    best_cfg = load_config(root / "best.yaml")
    assert float(best["val.accuracy"]) == max(float(r["val.accuracy"]) for r in rows)
    chosen = [r for r in rows if float(r["optimizer.learning_rate"]) == best_cfg.optimizer.learning_rate]
    assert chosen and float(chosen[0]["val.accuracy"]) == float(best["val.accuracy"])
    assert main(["train", str(root / "best.yaml"), "--workdir", str(tmp_path / "best")]) == 0
    retrained = json.loads((tmp_path / "best" / "summary.json").read_text())
    assert abs(retrained["val"]["loss"] - _summary(chosen[0])["val"]["loss"]) <= 1e-5
    # The same command again: the study already has its 16 trials, none is added.
    assert main(args) == 0
    assert len(read_results(root)) == 16
    assert sorted(p.name for p in root.glob("trial-*")) == [f"trial-{i:04d}" for i in range(16)]


def test_a_population_gives_each_trial_the_result_of_training_it_alone(config, tmp_path):
    from jaxtrain.runs.search import search
    out = search(config, SPACE[1::2], trials=3, population=3, workdir=tmp_path / "s", console=Console("none"))
    assert {r["population"] for r in out["rows"]} == {3}
    for row in out["rows"]:
        alone = train(Path(row["workdir"]) / "config.yaml", workdir=tmp_path / f"alone-{row['number']}",
                      console=Console("none"))
        together = _summary(row)
        assert together["test"] == {}  # a trial is chosen on validation: its run leaves the test split alone
        assert abs(together["val"]["loss"] - alone["val"]["loss"]) <= 1e-5, row


def test_prune_stops_the_bottom_trials_at_a_rung_and_survivors_match_their_runs_alone(config, tmp_path, capsys):
    root = tmp_path / "p"
    assert main(["search", config, *SPACE, "--trials", "6", "--population", "6", "--prune",
                 "--set", "train.epochs=3", "--workdir", str(root)]) == 0
    rows = read_results(root)
    pruned = [r for r in rows if r["state"] == "PRUNED"]
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    # Rung 1 (epochs 1, then 3, 9, ...): 6 trials, the top third (2) goes on.
    assert len(pruned) == 4 and len(complete) == 2
    first_val = {}  # each trial's rank at the rung: val accuracy, ties broken by the lower val loss
    for row in rows:
        records = [json.loads(line) for line in (Path(row["workdir"]) / "metrics.jsonl").read_text().splitlines()]
        trained = [r for r in records if r.get("event") == "train"]
        val = next(r for r in records if r.get("event") == "eval" and r["split"] == "val")
        first_val[row["number"]] = (-val["accuracy"], val["loss"])
        assert len(trained) == (1 if row["state"] == "PRUNED" else 3)      # pruned: stopped training
        assert int(row["epochs"]) == len(trained)
    assert max(first_val[r["number"]] for r in complete) < min(first_val[r["number"]] for r in pruned)
    # After the rung the survivors trained as a rebuilt population of 2: same as alone.
    for row in complete:
        alone = train(Path(row["workdir"]) / "config.yaml", workdir=tmp_path / f"alone-{row['number']}",
                      console=Console("none"))
        assert abs(_summary(row)["val"]["loss"] - alone["val"]["loss"]) <= 1e-5


def test_a_survivor_of_two_rungs_reports_the_flops_of_each_population_it_trained_in(config, tmp_path):
    """9 trials, 5 epochs, rungs after 1 and 3: 3 trials train epochs 2-3 together, 1 trains
    epochs 4-5 alone. Its perf averages the two programs' FLOPs over its steady epochs (2-5),
    each program counting the examples of all its points."""
    root = tmp_path / "p"
    assert main(["search", config, *SPACE, "--trials", "9", "--population", "9", "--prune",
                 "--set", "train.epochs=5", "--workdir", str(root)]) == 0
    (winner,) = [r for r in read_results(root) if r["state"] == "COMPLETE"]
    perf, summary = _summary(winner)["perf"], _summary(winner)
    one_point = perf["flops_per_example"] * summary["batch"]["global"]  # a step of 1 point
    assert summary["execution"]["vectorized_points"] == 1  # it ended alone
    # epochs 2-3 of 3 points, epochs 4-5 of 1 point (the same steps per epoch): 2 points on average
    assert perf["flops_per_step"] == pytest.approx(2 * one_point, rel=0.05)
    assert perf["tflops_per_sec"] == pytest.approx(perf["flops_per_step"] / perf["step_time_ms"] / 1e9)


def test_two_processes_sharing_a_journal_storage_train_no_trial_twice(config, tmp_path):
    storage = f"journal:{tmp_path / 'shared.journal'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_NUM_CPU_DEVICES": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "jaxtrain", "search", config, *SPACE, "--trials", "6",
                               "--population", "2", "--storage", storage, "--study", "shared",
                               "--workdir", str(tmp_path / w)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for w in ("a", "b")]
    for p in procs:
        out, _ = p.communicate(timeout=900)
        assert p.returncode == 0, out
    trained = [d for w in ("a", "b") for d in (tmp_path / w).glob("trial-*") if (d / "summary.json").exists()]
    numbers = [int(d.name.split("-")[1]) for d in trained]
    assert len(numbers) == len(set(numbers)) == 6, trained
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage
    study = optuna.load_study(study_name="shared",
                              storage=JournalStorage(JournalFileBackend(str(tmp_path / "shared.journal"))))
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert sorted(t.number for t in done) == sorted(numbers)


def test_trials_that_cannot_share_a_program_train_one_after_another_and_say_why(config, tmp_path, capsys):
    assert main(["search", config, "--space", "model.hidden_sizes=choice([8],[16,8])",
                 "--trials", "2", "--population", "2", "--set", "train.epochs=1", "--sampler", "random",
                 "--workdir", str(tmp_path / "s")]) == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if "groups" in l]
    assert len(lines) == 1 and "differ in model.hidden_sizes" in lines[0], lines
    rows = read_results(tmp_path / "s")
    assert [load_config(Path(r["workdir"]) / "config.yaml").model.hidden_sizes for r in rows] == \
        [tuple(yaml.safe_load(r["model.hidden_sizes"])) for r in rows]


@pytest.mark.parametrize("spec, words", [
    ("optimizer.learning_rate=loguniform(0,1)", "above 0"),
    ("optimizer.learning_rate=normal(1,2)", "loguniform(a,b), uniform(a,b), int(a,b) or choice"),
    ("optimizer.learning_rat=uniform(0.1,0.2)", "learning_rat"),
    ("train.epochs=int(1.5,3)", "whole numbers"),
    ("optimizer.learning_rate", "section.key=SPEC"),
])
def test_bad_space_exits_2_in_one_line(config, tmp_path, capsys, spec, words):
    assert main(["search", config, "--space", spec, "--trials", "2", "--workdir", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


def test_space_forms():
    space = parse_space(["a.b=loguniform(1e-4, 0.1)", "a.c=int(1,4)", "a.d=choice(sgd, 0.5, [1,2])"])
    assert (space["a.b"].kind, space["a.b"].low, space["a.b"].high) == ("loguniform", 1e-4, 0.1)
    assert space["a.d"].choices == ("sgd", 0.5, "[1,2]")
    with pytest.raises(ConfigError):
        parse_space(["a.b=uniform(2,1)"])


def test_search_without_optuna_exits_2_naming_the_extra(monkeypatch, capsys, config, tmp_path):
    monkeypatch.setitem(sys.modules, "optuna", None)
    assert main(["search", config, *SPACE, "--trials", "2", "--workdir", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "optuna" in err and "pip install 'jaxtrain[search]'" in err


def test_trials_left_running_by_a_killed_search_do_not_count(config, tmp_path):
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage
    from jaxtrain.runs.search import STUDY_FILE, _worker, search
    root = tmp_path / "s"
    root.mkdir()
    study = optuna.create_study(study_name="tiny", direction="maximize",
                                storage=JournalStorage(JournalFileBackend(str(root / STUDY_FILE))))
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = study.ask()  # as a search killed while training it leaves it: RUNNING, its process gone
    stale.set_user_attr("worker", _worker().rpartition(":")[0] + ":" + ended.stdout.strip())
    out = search(config, SPACE[1::2], trials=2, population=2, workdir=root, console=Console("none"))
    assert [(r["number"], r["state"]) for r in out["rows"]] == [(0, "FAIL"), (1, "COMPLETE"), (2, "COMPLETE")]


def test_python_search_with_verbose_0_prints_nothing_and_its_errors_name_python_arguments(config, tmp_path,
                                                                                            capsys):
    import jaxtrain
    from jaxtrain.util.errors import UserError
    space = {"optimizer.learning_rate": "loguniform(1e-3,3e-1)"}
    found = jaxtrain.search(config, space=space, trials=2, population=2, workdir=tmp_path / "s", verbose=0)
    captured = capsys.readouterr()
    assert captured.out == "" and len(read_results(tmp_path / "s")) == 2
    assert Path(found["best_yaml"]).is_file()
    with pytest.raises(UserError) as e:
        jaxtrain.search(config, space=space, trials=0, workdir=tmp_path / "t", verbose=0)
    assert "trials=0" in str(e.value) and "--trials" not in str(e.value)


def test_a_search_loads_its_data_once_for_the_objective_and_every_trial(config, tmp_path, monkeypatch):
    """The data set is read once per search process: the objective learns the task from it and
    every trial (a population of two, then one alone) trains on it; a trial whose data options
    differ loads its own."""
    from jaxtrain import data as data_stage
    loads, real = [], data_stage.load_dataset
    monkeypatch.setattr(data_stage, "load_dataset", lambda cfg, **kw: loads.append(cfg) or real(cfg, **kw))
    assert main(["search", config, *SPACE, "--trials", "3", "--population", "2", "--set", "train.epochs=1",
                 "--workdir", str(tmp_path / "s")]) == 0
    assert len(loads) == 1 and {r["state"] for r in read_results(tmp_path / "s")} == {"COMPLETE"}
    loads.clear()
    assert main(["search", config, "--space", "data.val_fraction=choice(0.2,0.3)", "--sampler", "random",
                 "--trials", "1", "--population", "1", "--set", "train.epochs=1", "--seed", "1",
                 "--workdir", str(tmp_path / "d")]) == 0
    (row,) = read_results(tmp_path / "d")
    assert len(loads) == (1 if float(row["data.val_fraction"]) == 0.2 else 2)
