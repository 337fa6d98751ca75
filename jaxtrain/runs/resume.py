"""Resuming a run: `jaxtrain train --resume DIR [--set train.epochs=N]`, `jaxtrain.resume(DIR)`.

The run's own `config.yaml` is the starting config; overrides may change it (most
usefully `train.epochs`, to extend a finished run). The data is preprocessed with the
run's saved statistics, the latest complete checkpoint supplies the training state and
the data position, and training continues in the same directory, appending to
`metrics.jsonl`. With no complete checkpoint the run starts from step 0 and says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jaxtrain.ckpt.restore import ResumePoint, check_devices, find_resume_point, restore_point
from jaxtrain.data.artifacts import STATS_FILE, load_stats
from jaxtrain.data.featurestats import FeatureStats
from jaxtrain.engine.plan import RunPlan
from jaxtrain.training.run import Run
from jaxtrain.training.hooks.protocol import Hook
from jaxtrain.util.errors import Arg, UserError


def resume_source(run_dir: str | Path, config: Any, workdir: Any) -> tuple[Path, Path]:
    """(config path, work directory) of the run to resume; refuses a second config or workdir."""
    run = Path(run_dir)
    if config is not None:
        raise UserError(Arg("resume"), " continues a run with its own config.yaml; drop ", Arg("config"),
                        " and change keys with ", Arg("overrides"))
    if workdir is not None and Path(workdir).resolve() != run.resolve():
        raise UserError(Arg("resume"), f" writes into the run's own directory '{run}'; drop ", Arg("workdir"))
    if not (run / "config.yaml").is_file():
        raise UserError(f"cannot resume '{run}': it is not a jaxtrain run directory (no config.yaml); "
                        f"pass the ", Arg("workdir"), " of an earlier training run")
    return run / "config.yaml", run


def saved_stats(run_dir: Path) -> FeatureStats | None:
    """The preprocessing statistics the run fitted (so resumed data is preprocessed the same)."""
    return load_stats(run_dir) if (Path(run_dir) / STATS_FILE).is_file() else None


def resume_point(checkpoint_dir: Path, cfg: Any, plan: RunPlan) -> ResumePoint | None:
    """The checkpoint to resume from, its meta read once (None: none yet), checked before anything
    is built: a mesh the checkpoint's batch cannot split over is refused in one line."""
    point = find_resume_point(checkpoint_dir)
    if point is not None:
        check_devices(point, plan, mesh_key="parallel.mesh" if cfg.parallel.mesh else "parallel.data_axis_size")
    return point


def resume_run(run: Run, point: ResumePoint | None, checkpoint_dir: Path, hooks: list[Hook]) -> None:
    """Continue `run` from `point` (its hooks' state too) and say where from."""
    console, events = run.ctx.console, run.ctx.events
    if point is None:
        console.line(f"resume: no complete checkpoint in {checkpoint_dir}; starting from step 0")
        events.write("resume", step=0, found=False)
        return
    state = restore_point(point, run.state, batch_size=run.plan.batch_size,
                          steps_per_epoch=run.plan.steps_per_epoch)
    position = point.meta
    run.continue_from(state, position)
    run.ctx.clock.load_state_dict(position.timeline)  # the earlier segments
    for hook in hooks:
        if hook.name in position.hooks and hasattr(hook, "load_state_dict"):
            hook.load_state_dict(position.hook_state(hook.name))
    console.line(f"resume: continuing from checkpoint step {position.step} (epoch {position.epoch + 1}, "
                 f"step {position.step_in_epoch} of {run.plan.steps_per_epoch}) in {checkpoint_dir}")
    events.write("resume", step=position.step, epoch=position.epoch, step_in_epoch=position.step_in_epoch,
                 found=True)
    epochs = run.plan.epochs
    if nothing_left(run):
        console.line(f"resume: all {epochs} epochs (train.epochs) are already trained: nothing left to train, "
                     f"only evaluating; pass --set train.epochs=N with N > {epochs} to train more")


def nothing_left(run: Run) -> bool:
    """Whether the run is already trained to its configured end."""
    return run.epoch >= run.plan.epochs
