"""The Orbax store: the whole training state plus JSON metadata, in `WORKDIR/checkpoints/`.

Layout, one Orbax CheckpointManager:

    checkpoints/<step>/state     params, rest (RNG streams), opt_state, step, ema (with
                                 train.ema_decay) (sharded arrays)
    checkpoints/<step>/meta      JSON: data position, epoch sums, hook states, config, stats
    checkpoints/<step>/metrics   JSON, only on a save that was a new best: {"value": v}

A preservation policy keeps the latest `keep` steps and the best one (when a best
metric is tracked), so a best step is written once and kept as long as it is best.

Arrays are saved as they lie on the devices: each process writes the shards it
holds, nothing is gathered to a host. The blocking part of a save copies the
local shards to host memory (so the next compiled call may donate the device
buffers); with `async_save` the files are written in a background thread, and
the next save, or `close`, waits for it. Saves are atomic (Orbax writes
`N.orbax-checkpoint-tmp` and renames it), so a run killed mid-save leaves the
last finished step restorable.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxtrain.parallel.placement import is_key
from jaxtrain.util.errors import UserError
from jaxtrain.util.lazy import lazy_module

ocp = lazy_module("orbax.checkpoint")  # imported on first use: a run without checkpoints never pays for it


def to_saveable(tree: Any) -> Any:
    """Typed PRNG keys become their raw uint32 data (Orbax stores plain arrays)."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if is_key(x) else x, tree)


def from_saveable(tree: Any, like: Any) -> Any:
    return jax.tree.map(lambda x, ref: jax.random.wrap_key_data(x, impl=jax.random.key_impl(ref))
                        if is_key(ref) else x, tree, like)


def state_tree(state: Any) -> dict[str, Any]:
    """A TrainState (a dataclass of arrays) as the dict a checkpoint stores: every field that
    is set (`ema` is None without train.ema_decay)."""
    fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    return {name: value for name, value in fields.items() if value is not None}


def _abstract(tree: Any) -> Any:
    """Shape, dtype and sharding of every leaf: a restore target in the caller's layout."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


@dataclasses.dataclass(frozen=True)
class Best:
    """Which saves count as best: the metric's name (for the record) and its direction."""
    metric: str
    mode: str = "min"  # "min" or "max"


def _value(metrics: dict) -> float:
    return metrics["value"]


class _UnmeteredSaveFilter(logging.Filter):
    """Drops Orbax's warning for a save without metrics while a best metric is tracked:
    here only a new best carries metrics, by design, so every other save would warn."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "tracked_metric" not in record.getMessage()


_UNMETERED_SAVE_FILTER = _UnmeteredSaveFilter()


def _options(keep: int, async_save: bool, best: Best | None) -> ocp.CheckpointManagerOptions:
    policies = ocp.checkpoint_managers
    keep_policies = [policies.LatestN(keep)]
    if best is not None:  # only saves that were a new best carry metrics: keep the best of them
        keep_policies.append(policies.BestN(get_metric_fn=_value, reverse=best.mode == "min", n=1,
                                            keep_checkpoints_without_metrics=False))
    return ocp.CheckpointManagerOptions(
        create=True, enable_async_checkpointing=async_save,
        preservation_policy=policies.AnyPreservationPolicy(keep_policies),
        best_fn=_value if best is not None else None, best_mode=best.mode if best is not None else "min")


class Checkpointer:
    """One Orbax CheckpointManager over `directory`: the latest `keep` steps and the best one."""

    def __init__(self, directory: str | Path, keep: int = 3, async_save: bool = False,
                 best: Best | None = None):
        self.directory = Path(directory).resolve()
        logging.getLogger("absl").addFilter(_UNMETERED_SAVE_FILTER)  # Orbax logs through absl; added once
        self.manager = ocp.CheckpointManager(
            self.directory, options=_options(keep, async_save, best),
            item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})

    def save(self, step: int, state: Any, meta: dict[str, Any], best_value: float | None = None) -> bool:
        """Save `state` (any pytree of device arrays, in their shardings) and `meta`.

        `best_value`: this save is a new best with that metric value. A step already on
        disk is replaced, so a final save after, say, restoring the best parameters wins
        over the epoch-end save of the same step. Every process must call this together."""
        if step in self.manager.all_steps():
            self.manager.wait_until_finished()
            self.manager.delete(step)
        args = ocp.args.Composite(state=ocp.args.StandardSave(to_saveable(state)),
                                  meta=ocp.args.JsonSave(meta))
        metrics = None if best_value is None else {"value": float(best_value)}
        return self.manager.save(step, args=args, metrics=metrics, force=True)  # callers decide when

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, like: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """Restore into the structure, dtypes and shardings of `like` (device arrays laid out
        as the run wants them): each process reads only the shards its devices hold."""
        step = self.manager.latest_step() if step is None else step
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(to_saveable(like))), meta=ocp.args.JsonRestore()))
        return from_saveable(out.state, like), dict(out.meta)

    def restore_raw(self, step: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """Restore as NumPy arrays on the host, whatever the saved structure and device layout."""
        step = self.manager.latest_step() if step is None else step
        try:
            saved = self.manager.item_metadata(step)["state"].tree
            target = jax.tree.map(lambda a: np.empty(a.shape, a.dtype), saved)
            out = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        except (KeyError, ValueError, OSError, AttributeError, TypeError) as e:  # missing or cut short
            raise UserError(f"checkpoint '{self.directory}/{step}' cannot be read "
                            f"({str(e).splitlines()[0][:200] if str(e) else type(e).__name__}); it is "
                            f"incomplete or damaged: remove that step's folder to use the checkpoint "
                            f"before it") from None
        return out.state, dict(out.meta)

    def restore_state(self, like: Any, step: int) -> Any:
        """`restore` without the meta (already read: a ResumePoint holds it)."""
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(to_saveable(like)))))
        return from_saveable(out.state, like)

    def read_meta(self, step: int) -> dict[str, Any]:
        """The meta of checkpoint `step` alone (format, position, config), without its arrays."""
        return dict(self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


# ---------------------------------------------------------------- finding checkpoints


def has_checkpoint(path: str | Path) -> bool:
    """Whether `path` (a checkpoints/ directory) holds at least one complete (renamed) step."""
    path = Path(path)
    return path.is_dir() and any(p.name.isdigit() and p.is_dir() for p in path.iterdir())


def locate(path: str | Path) -> tuple[Path, int | None]:
    """(manager directory, step or None for the latest) for a run directory, a `checkpoints/`
    directory, or one step's directory inside it."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"checkpoint path '{p}' does not exist; pass a run directory or its checkpoints/")
    if (p / "checkpoints").is_dir():
        p = p / "checkpoints"
    if p.name.isdigit() and p.is_dir():  # one step's folder (reading it says if it is damaged)
        return p.parent, int(p.name)
    if not has_checkpoint(p):
        raise UserError(f"'{path}' holds no complete checkpoint; pass a run directory trained with "
                        f"checkpoint.enabled: true, its checkpoints/ folder, or one step's folder in it")
    return p, None


def read_raw(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(arrays as NumPy, meta) of the checkpoint at `path` (see `locate`)."""
    directory, step = locate(path)
    ckpt = Checkpointer(directory)
    try:
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise UserError(f"'{path}' holds no complete checkpoint")
        return ckpt.restore_raw(step)
    finally:
        ckpt.close()
