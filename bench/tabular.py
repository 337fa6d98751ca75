"""jaxtrain's table recipe beside gradient boosting and a linear model, on real tables.

    python bench/tabular.py                       # the three tables, 3 seeds, out to /tmp/jaxtrain-tabular
    python bench/tabular.py --tables diamonds --seeds 1
    python bench/tabular.py --tables my.csv:price --quick     # any CSV with its target column

Each table is split once, 80/20, with `sklearn.model_selection.train_test_split(test_size=0.2,
random_state=0)` (stratified on the target for classes), and both parts are written as CSV files
under `--out`. Every model learns from the 80% file only and is scored once on the 20% file:

- jaxtrain: `jaxtrain train tabular --set data.path=TRAIN --set data.test_path=TEST
  --set data.target=COL --set train.seed=S` (the recipe chooses on a validation split it carves
  from TRAIN); its wall time is the run's own `time.total_s` in summary.json (data, compile,
  training, evaluation), not the interpreter's start;
- LightGBM and XGBoost: 1000 trees at learning rate 0.05 (XGBoost depth 6, LightGBM's defaults
  otherwise), text columns as native categories, missing numbers left missing; the wall time is
  the whole fit;
- ridge / logistic regression (scikit-learn): median-filled, z-scored numbers and one-hot text.

The figure of each model is the median over `--seeds` seeds (metric and wall time taken
separately). Regression tables report test RMSE in the target's units, classification tables
test accuracy. The table is printed and written as tabular.md and tabular.json under `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

def default_data() -> Path:
    """`../shared/data` beside the repository (or beside a folder above it, for a worktree)."""
    for folder in Path(__file__).resolve().parents[1].parents:
        if (folder / "shared" / "data").is_dir():
            return folder / "shared" / "data"
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


TABLES = {  # name: (file under ../shared/data, target column)
    "california_housing": ("california_housing/housing.csv", "median_house_value"),
    "diamonds": ("diamonds/diamonds.csv", "price"),
    "letter_recognition": ("letter_recognition/letter_recognition.csv", "lettr"),
}
MODELS = ("jaxtrain", "lightgbm", "xgboost", "linear")
QUICK_TREES, TREES = 20, 1000


# ---------------------------------------------------------------- the split and the columns

def read_columns(path: Path) -> dict[str, np.ndarray]:
    """A CSV's columns: numbers as float64 (missing: NaN), text as an object array (missing: None)."""
    import pyarrow.csv as pcsv
    table = pcsv.read_csv(path)
    columns = {}
    for name in table.column_names:
        column = table.column(name)
        if column.type.equals("string") or str(column.type) in ("string", "large_string"):
            columns[name] = np.array(column.to_pylist(), dtype=object)
        else:
            columns[name] = np.array(column.cast("float64").to_pylist(), dtype=float)
    return columns


def is_classification(target: np.ndarray) -> bool:
    """Text targets are classes; numbers are a regression (the tables here need no other rule)."""
    return target.dtype == object


def split_indices(target: np.ndarray, classes: bool) -> tuple[np.ndarray, np.ndarray]:
    """The issue's fixed split: 80/20, random_state 0, stratified on the target for classes."""
    from sklearn.model_selection import train_test_split
    rows = np.arange(len(target))
    return train_test_split(rows, test_size=0.2, random_state=0, stratify=target if classes else None)


def write_split(path: Path, train: np.ndarray, test: np.ndarray, out: Path) -> tuple[Path, Path]:
    """The 80% and 20% files, with the source's own lines (quoting, empty fields) kept byte for byte."""
    lines = path.read_text().splitlines()
    header, rows = lines[0], lines[1:]
    paths = []
    for part, index in (("train", train), ("test", test)):
        file = out / f"{path.stem}_{part}.csv"
        file.write_text("\n".join([header] + [rows[i] for i in index]) + "\n")
        paths.append(file)
    return paths[0], paths[1]


def take(columns: dict[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
    return {name: values[index] for name, values in columns.items()}


def codes(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
    """Text as integer codes of the training split's values (missing or unseen: NaN)."""
    levels = sorted({v for v in train if v is not None})
    lookup = {v: float(i) for i, v in enumerate(levels)}
    encode = lambda values: np.array([lookup.get(v, np.nan) for v in values])
    return encode(train), encode(test), levels


def feature_matrices(train: dict, test: dict, target: str) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Train and test features (numbers as they are, text as codes), and the text columns' positions."""
    xs_train, xs_test, text = [], [], []
    for i, name in enumerate(n for n in train if n != target):
        a, b = train[name], test[name]
        if a.dtype == object:
            a, b, _ = codes(a, b)
            text.append(i)
        xs_train.append(a)
        xs_test.append(b)
    return np.column_stack(xs_train), np.column_stack(xs_test), text


def rmse(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(y, float) - np.asarray(pred, float)) ** 2)))


def accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean(np.asarray(y) == np.asarray(pred)))


# ---------------------------------------------------------------- the models

def fit_lightgbm(task: dict, seed: int, quick: bool) -> tuple[np.ndarray, float, float]:
    import lightgbm as lgb
    kwargs = dict(n_estimators=QUICK_TREES if quick else TREES, learning_rate=0.05, random_state=seed,
                  n_jobs=os.cpu_count(), verbose=-1)
    model = lgb.LGBMClassifier(**kwargs) if task["classes"] else lgb.LGBMRegressor(**kwargs)
    start, cpu = time.perf_counter(), time.process_time()
    model.fit(task["x_train"], task["y_train"], categorical_feature=task["text"] or "auto")
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return model.predict(task["x_test"]), wall, cpu


def fit_xgboost(task: dict, seed: int, quick: bool) -> tuple[np.ndarray, float, float]:
    import xgboost as xgb
    n = task["x_train"].shape[1]
    types = ["c" if i in task["text"] else "q" for i in range(n)]
    train = xgb.DMatrix(task["x_train"], label=task["y_train"], feature_types=types, enable_categorical=True)
    test = xgb.DMatrix(task["x_test"], feature_types=types, enable_categorical=True)
    params = {"eta": 0.05, "max_depth": 6, "tree_method": "hist", "seed": seed, "nthread": os.cpu_count()}
    if task["classes"]:
        params.update(objective="multi:softmax", num_class=task["num_classes"])
    start, cpu = time.perf_counter(), time.process_time()
    booster = xgb.train(params, train, num_boost_round=QUICK_TREES if quick else TREES)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return booster.predict(test), wall, cpu


def fit_linear(task: dict, seed: int, quick: bool) -> tuple[np.ndarray, float, float]:
    """Ridge or (multinomial) logistic regression on median-filled, z-scored numbers and one-hot text."""
    from sklearn.compose import make_column_transformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler
    n = task["x_train"].shape[1]
    numbers = [i for i in range(n) if i not in task["text"]]
    prep = make_column_transformer(
        (make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numbers),
        (make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")),
         task["text"]))
    head = LogisticRegression(max_iter=200 if quick else 2000, random_state=seed) if task["classes"] else Ridge()
    model = make_pipeline(prep, head)
    start, cpu = time.perf_counter(), time.process_time()
    model.fit(task["x_train"], task["y_train"])
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return model.predict(task["x_test"]), wall, cpu


def jaxtrain_command(task: dict, seed: int, workdir: Path, quick: bool) -> list[str]:
    sets = {"data.path": task["train_file"], "data.test_path": task["test_file"],
            "data.target": task["target"], "train.seed": seed}
    if quick:
        sets.update({"train.epochs": 3, "optimizer.warmup_epochs": 1})
    command = [sys.executable, "-m", "jaxtrain", "train", task["recipe"], "--workdir", str(workdir)]
    for key, value in sets.items():
        command += ["--set", f"{key}={value}"]
    return command


def fit_jaxtrain(task: dict, seed: int, quick: bool) -> tuple[np.ndarray, float, float]:
    """One `jaxtrain train` run; its test predictions come back from `jaxtrain predict` on the
    20% file, so that the metric is computed here exactly as for the other models."""
    workdir = task["out"] / "runs" / f"{task['name']}-seed{seed}"
    cpu = _children_cpu_s()
    done = subprocess.run(jaxtrain_command(task, seed, workdir, quick), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"jaxtrain train failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    cpu = _children_cpu_s() - cpu
    summary = json.loads((workdir / "summary.json").read_text())
    predictions = workdir / "test_predictions.csv"
    done = subprocess.run([sys.executable, "-m", "jaxtrain", "predict", str(workdir), "--input",
                           str(task["test_file"]), "--output", str(predictions)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"jaxtrain predict failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    column = read_columns(predictions)["predicted"]
    if task["classes"]:
        column = np.array([task["levels"].index(v) if v in task["levels"] else -1 for v in column])
    task.setdefault("jaxtrain_summaries", []).append(summary)
    return column, float(summary["time"]["total_s"]), cpu


def _children_cpu_s() -> float:
    """CPU seconds (user + system) of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


FITS = {"jaxtrain": fit_jaxtrain, "lightgbm": fit_lightgbm, "xgboost": fit_xgboost, "linear": fit_linear}


# ---------------------------------------------------------------- the bench

def prepare(spec: str, out: Path, recipe: str, data: Path) -> dict:
    """A table's task: its split files, feature matrices and targets. `spec` is a table's name
    above, or PATH.csv:TARGET for any CSV."""
    if spec in TABLES:
        name, (file, target) = spec, TABLES[spec]
        path = data / file
    else:
        file, _, target = spec.rpartition(":")
        path, name = Path(file), Path(file).stem
        if not file or not target:
            raise SystemExit(f"tabular.py: '{spec}' is neither a table ({', '.join(TABLES)}) nor PATH.csv:TARGET")
    columns = read_columns(path)
    classes = is_classification(columns[target])
    train_rows, test_rows = split_indices(columns[target], classes)
    train_file, test_file = write_split(path, train_rows, test_rows, out)
    train, test = take(columns, train_rows), take(columns, test_rows)
    x_train, x_test, text = feature_matrices(train, test, target)
    task = {"name": name, "target": target, "classes": classes, "train_file": train_file, "test_file": test_file,
            "x_train": x_train, "x_test": x_test, "text": text, "out": out, "recipe": recipe,
            "metric": "accuracy" if classes else "rmse", "rows": (len(train_rows), len(test_rows))}
    if classes:
        y_train, y_test, levels = codes(train[target], test[target])
        task.update(y_train=y_train.astype(int), y_test=y_test, levels=levels, num_classes=len(levels))
    else:
        task.update(y_train=train[target], y_test=test[target])
    return task


def score(task: dict, pred: np.ndarray) -> float:
    return accuracy(task["y_test"], pred) if task["classes"] else rmse(task["y_test"], pred)


def run_model(task: dict, model: str, seeds: list[int], quick: bool) -> dict:
    """A model's metric and wall time on one table, each the median over the seeds."""
    if model != "jaxtrain":
        seeds = seeds[:task["baseline_seeds"]]
    metrics, walls, cpus = [], [], []
    for seed in seeds:
        try:
            pred, wall, cpu = FITS[model](task, seed, quick)
        except ImportError as e:
            return {"status": "skipped", "reason": f"{type(e).__name__}: {e}"}
        except Exception as e:  # one model failing leaves the others' figures
            return {"status": "failed", "reason": f"{type(e).__name__}: {e}"[:2000]}
        metrics.append(score(task, pred))
        walls.append(wall)
        cpus.append(cpu)
        print(f"  {task['name']:<20} {model:<9} seed {seed}: {task['metric']} {metrics[-1]:.6g}, "
              f"{wall:.2f} s wall, {cpu:.2f} s CPU", flush=True)
    return {"status": "ok", "metric": statistics.median(metrics), "wall_s": statistics.median(walls),
            "cpu_s": statistics.median(cpus), "metrics": metrics, "walls_s": walls, "cpus_s": cpus}


def jaxtrain_details(task: dict) -> dict:
    """What the jaxtrain runs' summaries say beside the metric: their own test figure (a check on
    the one computed here from `jaxtrain predict`), epochs and the training part of the time."""
    summaries = task.get("jaxtrain_summaries", [])
    own = [s["test"].get("accuracy") if task["classes"] else float(np.sqrt(s["test"]["mse"])) for s in summaries]
    return {"summary_test": own, "epochs": [s["train"]["epochs"] for s in summaries],
            "train_s": [s["time"]["breakdown"].get("train") for s in summaries],
            "stopped_early": [bool(s.get("stopped_early")) for s in summaries]}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def markdown(results: dict, meta: dict) -> str:
    """The table: each model's median metric and wall time, and its wall time over LightGBM's."""
    lines = [f"| table | metric | {' | '.join(MODELS)} |", "| --- | --- |" + " --- |" * len(MODELS)]
    for table, row in results.items():
        lgb = row["models"].get("lightgbm", {}).get("wall_s")
        cells = []
        for model in MODELS:
            r = row["models"].get(model)
            if r is None or r["status"] != "ok":
                cells.append("—" if r is None else r["status"])
                continue
            value = f"{r['metric']:.4f}" if row["metric"] == "accuracy" else f"{r['metric']:,.0f}"
            ratio = f", {r['wall_s'] / lgb:.1f}x" if lgb else ""
            cells.append(f"{value} ({r['wall_s']:.1f} s{ratio}; {r['cpu_s']:.0f} CPU s)")
        metric = "test accuracy" if row["metric"] == "accuracy" else f"test RMSE ({row['target']})"
        lines.append(f"| {table} | {metric} | {' | '.join(cells)} |")
    lines += ["", f"Each cell: the median over seeds {meta['seeds']} (other models: the first "
              f"{meta['baseline_seeds']}) of the metric (wall time in seconds, "
              "and its ratio to LightGBM's; CPU seconds, user + system). jaxtrain's wall time is its "
              "summary's time.total_s and its CPU time the whole `jaxtrain train` process's; the "
              "others' the whole fit.", f"CPU: {meta['cpu']} ({meta['cores']} cores), {meta['date']}.",
              f"Command: `{meta['command']}`"]
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tables", nargs="+", default=list(TABLES),
                   help=f"tables to run: {', '.join(TABLES)}, or PATH.csv:TARGET (default: all three)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--seeds", type=int, default=3, help="seeds per model (0, 1, ...); the median is reported")
    p.add_argument("--baseline-seeds", type=int, default=None,
                   help="at most this many of the seeds for the other models (default: all); with "
                        "these settings they give the same model for every seed, only their time varies")
    p.add_argument("--out", type=Path, default=Path("/tmp/jaxtrain-tabular"),
                   help="folder for the split files, the runs and tabular.md/json")
    p.add_argument("--data", type=Path, default=default_data(), help="the folder of the named tables")
    p.add_argument("--recipe", default="tabular", help="jaxtrain's config (name or YAML file)")
    p.add_argument("--quick", action="store_true",
                   help=f"a smoke test: {QUICK_TREES} trees, 3 jaxtrain epochs, one seed unless --seeds is given")
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error("--seeds must be >= 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    seeds = list(range(1 if args.quick and "--seeds" not in (argv or sys.argv) else args.seeds))
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"seeds": seeds, "baseline_seeds": args.baseline_seeds or len(seeds), "cpu": cpu_model(),
            "cores": os.cpu_count(), "quick": args.quick,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "recipe": args.recipe,
            "command": " ".join(["python bench/tabular.py"] + (argv if argv is not None else sys.argv[1:]))}
    results = {}
    for spec in args.tables:
        task = prepare(spec, args.out, args.recipe, args.data)
        task["baseline_seeds"] = args.baseline_seeds or len(seeds)
        row = {"target": task["target"], "metric": task["metric"], "rows": task["rows"], "models": {}}
        for model in args.models:
            row["models"][model] = run_model(task, model, seeds, args.quick)
        if "jaxtrain" in args.models:
            row["models"]["jaxtrain"]["details"] = jaxtrain_details(task)
        results[task["name"]] = row
    table = markdown(results, meta)
    print("\n" + table)
    (args.out / "tabular.md").write_text(table)
    (args.out / "tabular.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str))
    print(f"wrote {args.out / 'tabular.md'} and {args.out / 'tabular.json'}")
    return results


if __name__ == "__main__":
    main()
