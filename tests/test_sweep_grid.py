"""Grid sweeps: every point is a normal run, results.csv mirrors each point's summary.json."""

import json
import math

import pytest

from jaxtrain.cli.main import main
from jaxtrain.config.schema import load_config
from jaxtrain.util.errors import ConfigError
from jaxtrain.util.events import Console
from jaxtrain.runs.sweep import grid_points, parse_grid, point_config, run_sweep
from run_files import read_results

CFG = {"name": "tiny", "data": {"source": "synthetic", "name": "blobs", "synthetic_rows": 200, "batch_size": 16},
       "model": {"hidden_sizes": [8]}, "optimizer": {"name": "sgd", "learning_rate": 0.05},
       "train": {"epochs": 2}, "parallel": {"data_axis_size": 1}}


def test_grid_expands_to_the_cartesian_product():
    grid = parse_grid(["optimizer.learning_rate=0.1,0.01,0.001", "data.batch_size=64,128"])
    points = grid_points(grid)
    assert len(points) == 6
    assert points[0] == {"optimizer.learning_rate": "0.1", "data.batch_size": "64"}
    assert {(p["optimizer.learning_rate"], p["data.batch_size"]) for p in points} == {
        (lr, bs) for lr in ("0.1", "0.01", "0.001") for bs in ("64", "128")}
    with pytest.raises(ConfigError):
        parse_grid(["optimizer.learning_rate="])


def test_grid_list_values_keep_their_commas():
    grid = parse_grid(["model.hidden_sizes=[32, 16],[16],[]", "optimizer.learning_rate=0.1"])
    assert grid["model.hidden_sizes"] == ["[32, 16]", "[16]", "[]"]
    # each value reaches the config as YAML, as `--set` would give it
    cfgs = [point_config({}, [], p) for p in grid_points(grid)]
    assert [c.model.hidden_sizes for c in cfgs] == [
        load_config({}, [f"model.hidden_sizes={v}"]).model.hidden_sizes for v in ("[32, 16]", "[16]", "[]")]


def test_results_csv_rows_match_each_points_summary(tmp_path):
    rows = run_sweep(CFG, ["optimizer.learning_rate=0.2,0.02", "data.batch_size=16,32"],
                     workdir=tmp_path, console=Console("none"))
    on_disk = read_results(tmp_path)
    assert len(rows) == len(on_disk) == 4
    seen = set()
    for row in on_disk:
        run_dir = tmp_path / row["point"]
        summary = json.loads((run_dir / "summary.json").read_text())
        config = (run_dir / "config.yaml").read_text()
        # the point's values really reached its config
        assert f"learning_rate: {row['optimizer.learning_rate']}" in config
        assert f"batch_size: {row['data.batch_size']}" in config
        assert summary["batch"]["global"] == int(row["data.batch_size"])
        for section in ("test", "val"):
            for k, v in summary[section].items():
                assert math.isclose(float(row[f"{section}.{k}"]), v, rel_tol=1e-12)
        assert math.isclose(float(row["train.loss"]), summary["train"]["loss"], rel_tol=1e-12)
        seen.add((row["optimizer.learning_rate"], row["data.batch_size"]))
    assert len(seen) == 4
    # the returned rows hold each value as the config read it: numbers, not text
    for row in rows:
        cfg = load_config(tmp_path / row["point"] / "config.yaml")
        assert type(row["optimizer.learning_rate"]) is float and type(row["data.batch_size"]) is int
        assert (row["optimizer.learning_rate"], row["data.batch_size"]) == (cfg.optimizer.learning_rate,
                                                                            cfg.data.batch_size)
    md = (tmp_path / "results.md").read_text()
    assert all(r["point"] in md for r in on_disk)
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_sweep_bad_grid_key_exits_2(tmp_path, capsys):
    code = main(["sweep", "--grid", "optimizer.learnig_rate=0.1,0.2", "--workdir", str(tmp_path / "s")])
    assert code == 2
    assert "learnig_rate" in capsys.readouterr().err
