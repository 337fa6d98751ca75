"""What the data stage leaves in a run directory: stats.json and preprocess_report.json."""

from __future__ import annotations

import json
import os
from typing import Any

from jaxtrain.data.dataset import Dataset
from jaxtrain.data.featurestats import FeatureStats
from jaxtrain.util.errors import DataError
from jaxtrain.util.files import write_json

STATS_FILE = "stats.json"
REPORT_FILE = "preprocess_report.json"


def write_artifacts(dataset: Dataset, workdir: str | os.PathLike) -> None:
    """Write `stats.json` (fitted statistics, reused by eval/predict) and
    `preprocess_report.json` (what cleaning did) into `workdir`. A Dataset built in Python
    without fitted statistics writes no stats.json."""
    os.makedirs(workdir, exist_ok=True)
    files = [(REPORT_FILE, dataset.report)] + ([(STATS_FILE, dataset.stats.to_dict())] if dataset.stats else [])
    for name, obj in files:
        write_json(os.path.join(workdir, name), obj, indent=1)


def load_stats(workdir: str | os.PathLike) -> FeatureStats:
    """The statistics a run saved, for `load_dataset(cfg, stats=...)`."""
    path = os.path.join(workdir, STATS_FILE)
    try:
        with open(path) as f:
            return FeatureStats.from_dict(json.load(f), path)
    except FileNotFoundError:
        raise DataError(f"{path}: not found; the run directory has no saved preprocessing statistics "
                        "(was it written by `jaxtrain train`?)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read the saved statistics ({e})") from None


def summary(dataset: Dataset) -> str:
    """A few human lines: rows in and out per split, and what each rule did."""
    r = dataset.report
    rin, rout = r.get("rows_in", {}), r.get("rows_out", {})
    lines = [f"data {r.get('name', dataset.name)} ({r.get('task', dataset.task)}, {r.get('features')} features): "
             + ", ".join(f"{s} {rin.get(s, 0)}->{rout.get(s, 0)}" for s in rin)]
    parts = []
    if r.get("duplicates", {}).get("rows_dropped"):
        parts.append(f"{r['duplicates']['rows_dropped']} duplicate rows dropped")
    m = r.get("missing", {})
    if m.get("per_column"):
        cols = ", ".join(f"{k} {v}" for k, v in m["per_column"].items())
        text = [k for k in m["per_column"] if dataset.stats and k not in dataset.stats.numeric_columns]
        how = m["policy"] if not text or m["policy"] in ("most_frequent", "constant") \
            else f"{m['policy']}; text columns: most frequent"     # text fills are never a median
        done = f"{m['rows_dropped']} rows dropped" if m.get("policy") == "drop" else f"imputed ({how})"
        parts.append(f"missing in train: {cols}; {done}")
    if m.get("per_column_eval"):
        parts.append("missing in eval imputed: " + ", ".join(f"{s} {sum(v.values())}"
                                                              for s, v in m["per_column_eval"].items()))
    o = r.get("outliers", {})
    if o.get("per_column"):
        cols = ", ".join(f"{k} {v}" for k, v in o["per_column"].items())
        done = f"{o.get('rows_dropped', 0)} rows dropped" if o["action"] == "drop" else "clipped"
        parts.append(f"outliers ({o['method']}): {cols}; {done}")
    invalid = r.get("invalid_images", {})
    if invalid.get("files_skipped"):
        parts.append(f"{invalid['files_skipped']} unreadable images dropped (listed in {REPORT_FILE})")
    if invalid.get("classes_left_out"):
        parts.append("class folders without a readable image left out: " + ", ".join(invalid["classes_left_out"]))
    if r.get("invalid_labels", {}).get("rows_dropped"):
        parts.append(f"{r['invalid_labels']['rows_dropped']} rows with invalid labels dropped")
    for s, cols in r.get("unseen_categories", {}).items():
        parts.append(f"unseen categories in {s}: " + ", ".join(f"{k} {v}" for k, v in cols.items()))
    if parts:
        lines.append("  " + "; ".join(parts))
    return "\n".join(lines)
