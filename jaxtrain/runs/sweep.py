"""Grid sweeps: every combination of `--grid key=v1,v2,...` values trained as a normal run.

Each point trains in `WORKDIR/<point name>/` (a complete run directory: `eval`,
`report` and `predict` work on it), and the sweep writes `results.csv` (one row per
point: its values and final metrics), `results.md` and `results.png`.

With `vectorized=True`, points that differ only in optimizer hyperparameters
(`model/optim.py:VECTOR_FIELDS`) train together in one compiled program (vsweep.py).
"""

from __future__ import annotations

import csv
import itertools
import re
from pathlib import Path
from typing import Any

from jaxtrain.config.metric_ref import Ranking, summary_row
from jaxtrain.config.schema import Config, load_config, parse_override
from jaxtrain.runs import vsweep
from jaxtrain.runs.lanes import train_lanes
from jaxtrain.runs.rundir import default_workdir
from jaxtrain.util.errors import Arg, ConfigError, UserError
from jaxtrain.util import plots
from jaxtrain.util.events import Console, check_verbose
from jaxtrain.util.values import split_values


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """['optimizer.learning_rate=0.1,0.01'] -> {'optimizer.learning_rate': ['0.1', '0.01']}.
    Values stay text (parsed as YAML by the config, exactly like `--set`)."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, _, text = item.partition("=")
        values = split_values(text)
        if not key.strip() or not values:
            raise ConfigError(Arg("grid", f"'{item}'"), " must look like section.key=v1,v2,...")
        if key.strip() in grid:
            raise ConfigError(Arg("grid"), f" key '{key.strip()}' given twice; list all its values in one ",
                              Arg("grid"))
        grid[key.strip()] = values
    if not grid:
        raise ConfigError("a sweep needs at least one ", Arg("grid", "section.key=v1,v2,..."))
    return grid


def point_name(values: dict[str, str]) -> str:
    """A directory name from the last key component and the value: 'learning_rate=0.1,batch_size=64'."""
    parts = [f"{k.split('.')[-1]}={v}" for k, v in values.items()]
    return re.sub(r"[^A-Za-z0-9_.=,+-]", "_", ",".join(parts))


def grid_points(grid: dict[str, list[str]]) -> list[dict[str, str]]:
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def point_config(config: Any, overrides: list[str], values: dict[str, str]) -> Config:
    return load_config(config, list(overrides) + [f"{k}={v}" for k, v in values.items()])


def ranking_for(task: str, rows: list[dict[str, Any]]) -> Ranking:
    """How the best point is chosen (Ranking.for_task): on the validation metric when any point
    reports it, else on the final training loss."""
    ranking = Ranking.for_task(task, has_val=True)
    has_val = any(ranking.metric.of_row(r) is not None for r in rows)
    return ranking if has_val else Ranking.for_task(task, has_val=False)


def run_sweep(config: Any, grid: dict[str, list[str]] | list[str], *, workdir: str | Path | None = None,
              overrides: list[str] | None = None, vectorized: bool = False, verbose: int = 1,
              console: Console | None = None) -> list[dict[str, Any]]:
    """Train every grid point; write results.csv/.md/.png into `workdir`; return the rows (a
    point's values as the config reads them: numbers are numbers). `verbose` as `train`'s."""
    plots.require_matplotlib()           # results.png: refuse before any training
    grid = parse_grid(grid) if isinstance(grid, list) else grid
    overrides = list(overrides or [])
    for key in grid:  # fail fast on a bad key or value, before any training
        for v in grid[key]:
            parse_override(f"{key}={v}")
    points = grid_points(grid)
    cfgs = [point_config(config, overrides, values) for values in points]
    root = Path(workdir) if workdir else default_workdir(cfgs[0], "-sweep")
    if (root / "results.csv").exists():
        raise UserError(f"sweep directory '{root}' already holds results.csv; pass a new ", Arg("workdir"))
    root.mkdir(parents=True, exist_ok=True)
    console = console or Console(cfgs[0].logging.progress, verbose=check_verbose(verbose))
    names = [point_name(v) for v in points]
    summaries: dict[int, dict] = {}

    if vectorized:
        for group in vsweep.vector_groups(cfgs):
            if len(group) < 2:
                why = vsweep.why_not_vectorized(cfgs[group[0]])
                if why:
                    console.line(f"sweep: {names[group[0]]} trains on its own: {why}")
                continue
            console.line(f"sweep: {len(group)} points in one vectorized program: "
                         + ", ".join(names[i] for i in group))
            results = train_lanes([cfgs[i] for i in group], [root / names[i] for i in group], console=console)
            summaries.update(zip(group, results))
    for i, cfg in enumerate(cfgs):
        if i in summaries:
            continue
        console.line(f"sweep: point {i + 1}/{len(cfgs)} {names[i]}")
        summaries[i] = train_lanes([cfg], [root / names[i]], console=console)[0]

    rows = [{"point": names[i], **{k: parse_override(f"{k}={v}")[1] for k, v in points[i].items()},
             **summary_row(summaries[i])} for i in range(len(cfgs))]
    table, best, metric = write_results(root, rows, list(grid), summaries[0].get("task", "classification"))
    for line in table:
        console.line(line)
    console.line(f"sweep: best point by {metric}: {best} ({root / best if best else 'none'})")
    console.line(f"sweep: wrote {root}/results.csv, results.md, results.png")
    return rows


def write_results(root: Path, rows: list[dict[str, Any]], keys: list[str],
                  task: str) -> tuple[list[str], str | None, str]:
    """results.csv/.md/.png; returns (the results table, the best point's name, its metric)."""
    columns = list(dict.fromkeys(c for r in rows for c in r))
    with open(root / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    ranking = ranking_for(task, rows)
    metric, mode = str(ranking.metric), ranking.mode
    values = [ranking.metric.of_row(r) for r in rows]
    best = ranking.best_row(rows)
    shown = ["point"] + keys + [c for c in columns if c.startswith(("val.", "test."))] + \
        [c for c in ("train.loss", "train.examples_per_sec", "time.total_s") if c in columns]
    table = _table(rows, shown, best)
    how = (f"Chosen on `{metric}` ({'higher' if mode == 'max' else 'lower'} is better), a validation "
           f"metric: the test columns played no part in the choice." if metric.startswith("val.") else
           f"The runs have no validation split (data.val_fraction: 0), so the choice is on `{metric}`; "
           f"set data.val_fraction to choose on held-out data. The test columns played no part.")
    lines = [f"# Sweep results ({len(rows)} points)", "",
             f"Best: **{rows[best]['point'] if best is not None else 'none'}**. {how}", "", *table, "",
             f"![{metric} per point](results.png)", "",
             "Each point's run directory is `<point>/` (config.yaml, metrics.jsonl, summary.json, "
             "checkpoints/); `jaxtrain report <point dir>` plots it.", ""]
    (root / "results.md").write_text("\n".join(lines))
    plots.bar_per_point([r["point"] for r in rows], [v if isinstance(v, float) else float("nan") for v in values],
                  metric, root / "results.png", best)
    return table, (rows[best]["point"] if best is not None else None), metric


def _table(rows: list[dict[str, Any]], shown: list[str], best: int | None) -> list[str]:
    """A markdown table of `shown` columns, the best row in bold."""
    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))

    lines = ["| " + " | ".join(shown) + " |", "|" + " --- |" * len(shown)]
    for i, r in enumerate(rows):
        text = [cell(r.get(c)) for c in shown]
        lines.append("| " + " | ".join(f"**{t}**" if i == best and t else t for t in text) + " |")
    return lines
