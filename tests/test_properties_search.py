"""search: whatever the objective's direction, best.yaml is the best row of results.csv, the best
found here from the rows alone (max for accuracy, min for a loss or an error), and the run
directory it names trained those parameters. (tests/test_escapes.py covers val.mse.)"""

import csv
from pathlib import Path

import pytest
import yaml

from jaxtrain.cli.main import main
from jaxtrain.config.schema import load_config

CASES = {  # objective -> (data section, which row is best)
    "val.accuracy": ({"name": "blobs", "val_fraction": 0.2}, max),
    "train.loss": ({"name": "blobs", "val_fraction": 0.0}, min),
}


@pytest.mark.parametrize("metric", sorted(CASES))
def test_best_yaml_is_the_best_row_of_results_csv_in_either_direction(tmp_path, metric):
    data, best_of = CASES[metric]
    cfg = {"name": "dir", "data": {"source": "synthetic", "synthetic_rows": 200, "batch_size": 32, **data},
           "model": {"hidden_sizes": [4]}, "optimizer": {"name": "sgd"}, "train": {"epochs": 1},
           "checkpoint": {"enabled": False}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    root = tmp_path / "s"
    assert main(["search", str(tmp_path / "c.yaml"), "--space", "optimizer.learning_rate=loguniform(1e-4,3.0)",
                 "--trials", "4", "--population", "4", "--workdir", str(root)]) == 0
    with open(root / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    values = [float(r[metric]) for r in rows]
    assert len(rows) == 4 and len(set(values)) >= 2          # not all equal: the direction decides
    chosen = load_config(root / "best.yaml").optimizer.learning_rate
    [row] = [r for r in rows if float(r["optimizer.learning_rate"]) == pytest.approx(chosen, rel=1e-12)]
    assert float(row[metric]) == best_of(values)
    assert load_config(Path(row["workdir"]) / "config.yaml").optimizer.learning_rate == chosen
