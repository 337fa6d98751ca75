"""Restoring a checkpoint to resume from: the latest complete one as (state, position), checked
before any array is read (the resume API itself is runs/resume.py).

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

from jaxtrain.ckpt.checkpoint import FORMAT, Checkpointer, state_tree
from jaxtrain.ckpt.params import checkpoint_mismatch
from jaxtrain.engine.plan import RunPlan
from jaxtrain.util.errors import ConfigError, UserError


@dataclasses.dataclass(frozen=True)
class Position:
    """Where a resumed run continues, and what the loop and the hooks carry across."""
    step: int                      # global step
    epoch: int                     # epoch in progress (0-based)
    step_in_epoch: int             # steps of it done
    epoch_sums: dict | None        # the part-done epoch's metric sums (host floats)
    last_record: dict | None       # the last epoch record, for the summary
    steps_per_call: int | None     # K the run used (the same chunk boundaries)
    hooks: dict                    # each stateful hook's state_dict, by name
    meta: dict                     # everything the checkpoint's meta holds

    @classmethod
    def from_meta(cls, meta: dict) -> "Position":
        return cls(step=meta["step"], epoch=meta["epoch"], step_in_epoch=meta["step_in_epoch"],
                   epoch_sums=meta.get("epoch_sums"), last_record=meta.get("last_record"),
                   steps_per_call=meta.get("steps_per_call"), hooks=meta.get("hooks", {}), meta=meta)


def latest_meta(directory: str | Path) -> tuple[dict, str] | None:
    """(meta, where) of the latest complete checkpoint in `directory`, without its arrays."""
    if not Path(directory).is_dir():
        return None
    ckpt = Checkpointer(directory)
    try:
        step = ckpt.latest_step()
        return None if step is None else (ckpt.read_meta(step), f"{directory}/{step}")
    finally:
        ckpt.close()


def check_devices(meta: dict, where: str, plan: RunPlan, mesh_key: str = "parallel.data_axis_size") -> None:
    """Refuse, in one line, a mesh (the run `plan`'s) the checkpoint's batch does not split over.
    Any other mesh restores: the arrays are saved whole (as global arrays), not per device.
    `mesh_key`: the config key that sets the mesh, named in the advice."""
    if meta.get("format") != FORMAT:
        return  # not a training checkpoint: check_resumable says so
    batch_size, devices = meta["config"]["data"]["batch_size"], plan.batch_shards
    if batch_size % devices:
        saved = meta.get("devices")
        fix = ("a mesh whose axis sizes multiply to a divisor of it" if mesh_key == "parallel.mesh"
               else "a number of devices that divides it")
        raise ConfigError(f"checkpoint '{where}'{f' (saved on {saved} devices)' if saved else ''} cannot "
                          f"resume on {devices} devices (mesh {{{plan.mesh_text()}}}): its "
                          f"data.batch_size={batch_size} does not split over them; resume with {fix} "
                          f"({mesh_key})")


def check_resumable(meta: dict, where: str, *, batch_size: int, steps_per_epoch: int) -> None:
    """Refuse, before reading any array, a checkpoint this run cannot continue exactly: one
    jaxtrain's checkpoint hook did not write, or one whose epochs were cut into other batches
    (a resumed epoch must go on with the same order and batches to see every example once)."""
    if meta.get("format") != FORMAT:
        raise UserError(f"checkpoint '{where}' is not a jaxtrain training checkpoint (format "
                        f"{meta.get('format')!r}, expected {FORMAT}); it cannot be resumed")
    saved_batch = meta["config"]["data"]["batch_size"]
    if saved_batch != batch_size or meta["steps_per_epoch"] != steps_per_epoch:
        raise UserError(f"checkpoint '{where}' was saved with data.batch_size={saved_batch} and "
                        f"{meta['steps_per_epoch']} steps per epoch, this run has "
                        f"data.batch_size={batch_size} and {steps_per_epoch}; "
                        f"resume with the same data.batch_size and data")


def restore_latest(directory: str | Path, state: Any, *, batch_size: int, steps_per_epoch: int
                   ) -> tuple[Any, Position] | None:
    """(state, position) from the latest complete checkpoint in `directory`, or None if none.

    `state` is the target: a TrainState laid out as this run wants it; the restored one
    has its structure, dtypes and shardings."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    ckpt = Checkpointer(directory)
    try:
        step = ckpt.latest_step()
        if step is None:
            return None
        where = f"{directory}/{step}"
        check_resumable(ckpt.read_meta(step), where, batch_size=batch_size, steps_per_epoch=steps_per_epoch)
        try:
            tree, meta = ckpt.restore(state_tree(state), step)
        except (ValueError, KeyError, TypeError) as e:  # another model or optimizer: exit 2, one line
            raise checkpoint_mismatch(where, state.params, e) from None
    finally:
        ckpt.close()
    return state.replace(**tree), Position.from_meta(meta)


def restore_best(directory: str | Path, state: Any, step: int) -> tuple[Any, dict] | None:
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
    return state.replace(**tree), meta
