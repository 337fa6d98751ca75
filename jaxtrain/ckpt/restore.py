"""Restoring a checkpoint to resume from: the latest complete one, its meta read once into a
`ResumePoint` and checked before any array is read (the resume API itself is runs/resume.py).

The state comes back in the layout of the target the caller passes (the state a
fresh run placed through its strategy: replicated, or split over the mesh for
fsdp), so the first compiled call after a resume runs the executable compiled
for a fresh run. A checkpoint saved on another number of devices restores as
well: Orbax reads each array's global value and cuts it for the target's shardings.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from jaxtrain.ckpt.checkpoint import Checkpointer, state_tree
from jaxtrain.ckpt.meta import FORMAT, CheckpointMeta
from jaxtrain.ckpt.params import checkpoint_mismatch
from jaxtrain.engine.plan import RunPlan
from jaxtrain.util.errors import ConfigError, UserError


@dataclasses.dataclass(frozen=True)
class ResumePoint:
    """The latest complete checkpoint of a run to resume, its meta read once: the checks before
    anything is built, the optimizer's layout and the restore itself all read it from here."""
    directory: Path
    step: int
    meta: CheckpointMeta

    @property
    def where(self) -> str:
        return f"{self.directory}/{self.step}"


def find_resume_point(directory: str | Path) -> ResumePoint | None:
    """The latest complete checkpoint in `directory`, without its arrays; None if there is none."""
    if not Path(directory).is_dir():
        return None
    ckpt = Checkpointer(directory)
    try:
        step = ckpt.latest_step()
        return None if step is None else ResumePoint(Path(directory), step,
                                                      CheckpointMeta.from_json(ckpt.read_meta(step)))
    finally:
        ckpt.close()


def check_devices(point: ResumePoint, plan: RunPlan, mesh_key: str = "parallel.data_axis_size") -> None:
    """Refuse, in one line, a mesh (the run `plan`'s) the checkpoint's batch does not split over.
    Any other mesh restores: the arrays are saved whole (as global arrays), not per device.
    `mesh_key`: the config key that sets the mesh, named in the advice."""
    meta = point.meta
    if not meta.is_training:
        return  # not a training checkpoint: check_resumable says so
    batch_size, devices = meta.batch_size, plan.batch_shards
    if batch_size % devices:
        saved = meta.devices
        fix = ("a mesh whose axis sizes multiply to a divisor of it" if mesh_key == "parallel.mesh"
               else "a number of devices that divides it")
        raise ConfigError(f"checkpoint '{point.where}'{f' (saved on {saved} devices)' if saved else ''} cannot "
                          f"resume on {devices} devices (mesh {{{plan.mesh_text()}}}): its "
                          f"data.batch_size={batch_size} does not split over them; resume with {fix} "
                          f"({mesh_key})")


def check_resumable(point: ResumePoint, *, batch_size: int, steps_per_epoch: int) -> None:
    """Refuse, before reading any array, a checkpoint this run cannot continue exactly: one
    jaxtrain's checkpoint hook did not write, or one whose epochs were cut into other batches
    (a resumed epoch must go on with the same order and batches to see every example once)."""
    meta = point.meta
    if not meta.is_training:
        raise UserError(f"checkpoint '{point.where}' is not a jaxtrain training checkpoint (format "
                        f"{meta.format!r}, expected {FORMAT}); it cannot be resumed")
    if meta.batch_size != batch_size or meta.steps_per_epoch != steps_per_epoch:
        raise UserError(f"checkpoint '{point.where}' was saved with data.batch_size={meta.batch_size} and "
                        f"{meta.steps_per_epoch} steps per epoch, this run has "
                        f"data.batch_size={batch_size} and {steps_per_epoch}; "
                        f"resume with the same data.batch_size and data")


def restore_point(point: ResumePoint, state: Any, *, batch_size: int, steps_per_epoch: int) -> Any:
    """The training state saved at `point`, checked first (check_resumable). `state` is the
    target: a TrainState laid out as this run wants it; the restored one has its structure,
    dtypes and shardings."""
    check_resumable(point, batch_size=batch_size, steps_per_epoch=steps_per_epoch)
    ckpt = Checkpointer(point.directory)
    try:
        tree = ckpt.restore_state(state_tree(state), point.step)
    except (ValueError, KeyError, TypeError) as e:  # another model or optimizer: exit 2, one line
        raise checkpoint_mismatch(point.where, state.params, e) from None
    finally:
        ckpt.close()
    return state.replace(**tree)


def restore_latest(directory: str | Path, state: Any, *, batch_size: int, steps_per_epoch: int
                   ) -> tuple[Any, CheckpointMeta] | None:
    """(state, meta) from the latest complete checkpoint in `directory`, or None if none."""
    point = find_resume_point(directory)
    if point is None:
        return None
    return restore_point(point, state, batch_size=batch_size, steps_per_epoch=steps_per_epoch), point.meta


def restore_best(directory: str | Path, state: Any, step: int) -> tuple[Any, CheckpointMeta] | None:
    """(state, meta) of the best checkpoint in `directory` if it is step `step`, else None."""
    if not Path(directory).is_dir():
        return None
    ckpt = Checkpointer(directory, best=None)
    try:
        if step not in ckpt.manager.all_steps() or ckpt.manager.metrics(step) is None:
            return None
        tree, meta = ckpt.restore(state_tree(state), step)
    finally:
        ckpt.close()
    return state.replace(**tree), CheckpointMeta.from_json(meta)
