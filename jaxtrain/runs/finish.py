"""A run's end: summary.json with the time breakdown, the experiment trackers finished,
the closing lines (where the run is, what to do next, step time and the largest parts of
the wall time)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from jaxtrain.runs.report import write_report
from jaxtrain.runs.rundir import RunDirectory
from jaxtrain.runs.trained import python_model_class
from jaxtrain.training.accounting import closing_lines, time_section
from jaxtrain.training.hooks.protocol import Hook
from jaxtrain.training.hooks.trackers import TrackerHook
from jaxtrain.util.events import Console


def saved_summary(workdir: Path) -> dict | None:
    """The summary.json a run wrote, or None."""
    try:
        return json.loads((Path(workdir) / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def finish_summary(rundir: RunDirectory, summary: dict, hooks: list[Hook] = ()) -> None:
    """The time breakdown into the summary; summary.json written; the experiment trackers
    among `hooks` finished; the closing lines."""
    summary["time"] = time_section(rundir.ctx.clock)
    rundir.write_summary(summary)
    console = rundir.ctx.console
    console.line(f"wrote {rundir.workdir}/summary.json")
    finish_trackers(hooks, summary, rundir.workdir, console)
    console.line(next_steps(rundir.workdir, rundir.cfg.checkpoint.enabled,
                            python_model=python_model_class(rundir.workdir)))
    for line in closing_lines(summary["perf"], summary["time"]["total_s"], summary["time"]["breakdown"]):
        console.line(line)


def finish_trackers(hooks: list, summary: dict, workdir: Path, console: Console) -> None:
    """Hand the experiment trackers the summary, summary.json and the report's plots (the
    report is written here; it needs matplotlib and, for a Python model, that model)."""
    trackers = [h for h in hooks if isinstance(h, TrackerHook)]
    if not trackers:
        return
    files = [workdir / "summary.json"]
    if importlib.util.find_spec("matplotlib") is None:
        console.line("trackers: no report plots without matplotlib (pip install 'jaxtrain[report]')")
    elif python_model_class(workdir):
        console.line("trackers: no report plots for a run trained with a Python model; "
                     "jaxtrain.runs.report.write_report(DIR, model=...) writes them")
    else:
        files += [path for path in write_report(workdir) if path.suffix == ".png"]
    for tracker in trackers:
        tracker.finish(summary, files)


def next_steps(workdir: Path, kept_checkpoints: bool, python_model: str | None) -> str:
    """The line printed after training: where the run is and what to do with it."""
    if python_model:
        return (f"run saved in {workdir}; from Python: jaxtrain.evaluate('{workdir}', model=...), and "
                f"report/predict with the same model")
    steps = [f"jaxtrain report {workdir}"] + ([f"jaxtrain eval {workdir}", f"jaxtrain predict {workdir} "
                                              f"--input FILE"] if kept_checkpoints else [])
    return f"run saved in {workdir}; next: " + ", ".join(steps)
