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

from jaxtrain.data.artifacts import STATS_FILE, load_stats
from jaxtrain.util.errors import UserError
from jaxtrain.training.hooks.checkpointing import restore_run
from jaxtrain.training.loop import Hook, Run


def resume_source(run_dir: str | Path, config: Any, workdir: Any) -> tuple[Path, Path]:
    """(config path, work directory) of the run to resume; refuses a second config or workdir."""
    run = Path(run_dir)
    if config is not None:
        raise UserError("--resume continues a run with its own config.yaml; drop the CONFIG argument "
                        "and change keys with --set")
    if workdir is not None and Path(workdir).resolve() != run.resolve():
        raise UserError(f"--resume writes into the run's own directory '{run}'; drop --workdir")
    if not (run / "config.yaml").is_file():
        raise UserError(f"cannot resume '{run}': it is not a jaxtrain run directory (no config.yaml); "
                        f"pass the --workdir of an earlier training run")
    return run / "config.yaml", run


def saved_stats(run_dir: Path) -> dict | None:
    """The preprocessing statistics the run fitted (so resumed data is preprocessed the same)."""
    return load_stats(run_dir) if (Path(run_dir) / STATS_FILE).is_file() else None


def resume_run(run: Run, checkpoint_dir: Path, hooks: list[Hook]) -> dict | None:
    """Restore `run` from the latest checkpoint and say where it continues from."""
    stateful = [h for h in hooks if hasattr(h, "load_state_dict")]
    meta = restore_run(run, checkpoint_dir, stateful)
    console, events = run.ctx.console, run.ctx.events
    if meta is None:
        console.line(f"resume: no complete checkpoint in {checkpoint_dir}; starting from step 0")
        events.write("resume", step=0, found=False)
        return None
    console.line(f"resume: continuing from checkpoint step {meta['step']} (epoch {meta['epoch'] + 1}, "
                 f"step {meta['step_in_epoch']} of {meta['steps_per_epoch']}) in {checkpoint_dir}")
    events.write("resume", step=meta["step"], epoch=meta["epoch"], step_in_epoch=meta["step_in_epoch"],
                 found=True)
    return meta
