"""Orbax checkpoints of the whole training state, plus JSON metadata, in `WORKDIR/checkpoints/`.

Layout:

    checkpoints/<step>/state   params, rest (RNG streams), opt_state, step  (Orbax, numpy leaves)
    checkpoints/<step>/meta    JSON: data position, epoch sums, hook states, config, stats
    checkpoints/best/<step>/   the same, for the best value of a metric (one kept)

Saves are atomic (Orbax writes `N.orbax-checkpoint-tmp` and renames it), so a
run killed mid-save leaves the last finished step restorable. A save first
copies the state to the host (the one sync it needs: the next compiled call
donates the device buffers), then Orbax writes in a background thread when
`async_save` is on; the next save, or `close`, waits for the previous one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxtrain.dist import parallel
from jaxtrain.util.errors import UserError
from jaxtrain.model.optim import param_path

BEST_DIR = "best"
FORMAT = 2  # meta["format"]: 2 = full training state + data position


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def to_saveable(tree: Any) -> Any:
    """Typed PRNG keys become their raw uint32 data (Orbax stores plain arrays)."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def from_saveable(tree: Any, like: Any) -> Any:
    return jax.tree.map(lambda x, ref: jax.random.wrap_key_data(x, impl=jax.random.key_impl(ref))
                        if _is_key(ref) else x, tree, like)


def state_tree(state: Any) -> dict[str, Any]:
    """A TrainState as the dict a checkpoint stores."""
    return {"step": state.step, "params": state.params, "rest": state.rest, "opt_state": state.opt_state}


def _abstract(tree: Any) -> Any:
    """Shape/dtype (and sharding, for device arrays) of every leaf: the restore target."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def named_leaves(tree: Any) -> dict[str, Any]:
    return {param_path(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


class Checkpointer:
    """One Orbax CheckpointManager: the last `keep` steps of (state, meta) in `directory`."""

    def __init__(self, directory: Path, keep: int = 3, async_save: bool = True):
        self.directory = Path(directory).resolve()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> bool:
        """Save `state` (any pytree; device arrays are copied to the host first) and `meta`.

        A step already on disk is replaced, so a final save after, say, restoring the best
        parameters wins over the epoch-end save of the same step."""
        host = parallel.to_host(to_saveable(state))  # gathers what fsdp split over processes
        if step in self.manager.all_steps():
            self.manager.wait_until_finished()
            self.manager.delete(step)
        args = ocp.args.Composite(state=ocp.args.StandardSave(host), meta=ocp.args.JsonSave(meta))
        return self.manager.save(step, args=args, force=True)  # the hooks decide when to save

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, like: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """Restore into the structure, dtypes and shardings of `like` (device arrays or NumPy)."""
        step = self.manager.latest_step() if step is None else step
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(to_saveable(like))), meta=ocp.args.JsonRestore()))
        return from_saveable(out.state, like), dict(out.meta)

    def restore_raw(self, step: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """Restore without a target: nested dicts of NumPy arrays, whatever the saved structure."""
        step = self.manager.latest_step() if step is None else step
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
        except (KeyError, ValueError, OSError) as e:  # files missing or cut short: one line, exit 2
            raise UserError(f"checkpoint '{self.directory}/{step}' cannot be read "
                            f"({str(e).splitlines()[0][:200]}); it is incomplete or damaged: "
                            f"remove that step's folder to use the checkpoint before it") from None
        return out.state, dict(out.meta)

    def read_meta(self, step: int) -> dict[str, Any]:
        """The meta of checkpoint `step` alone (format, position, config), without its arrays."""
        return dict(self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


# ---------------------------------------------------------------- finding and reading checkpoints


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


def load_named_params(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """{'layers.0.kernel': array, ...} and the meta of the checkpoint at `path` (see `locate`)."""
    directory, step = locate(path)
    ckpt = Checkpointer(directory, async_save=False)
    try:
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise UserError(f"'{path}' holds no complete checkpoint")
        raw, meta = ckpt.restore_raw(step)
    finally:
        ckpt.close()
    params = raw["params"] if "params" in raw else raw
    return {name: np.asarray(v) for name, v in named_leaves(params).items()}, meta


def match_params(params: Any, saved: dict[str, np.ndarray]) -> tuple[Any, list[str], dict[str, str]]:
    """(params with matching leaves replaced, names loaded, {name: why fresh})."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    leaves, loaded, fresh = [], [], {}
    for path, ref in flat:
        name = param_path(path)
        got = saved.get(name)
        if got is None:
            fresh[name] = "not in the checkpoint"
            leaves.append(ref)
        elif tuple(got.shape) != tuple(ref.shape):
            fresh[name] = f"shape {tuple(got.shape)} in the checkpoint, {tuple(ref.shape)} here"
            leaves.append(ref)
        else:
            loaded.append(name)
            leaves.append(np.asarray(got).astype(ref.dtype))
    return jax.tree_util.tree_unflatten(treedef, leaves), loaded, fresh


def restore_params(path: str | Path, params_like: Any) -> Any:
    """The saved parameters in the structure of `params_like` (an nnx.State of nnx.Param).

    Every parameter must be present with the same shape: this is for evaluating or
    predicting with the model a run trained, not for fine-tuning (see finetune.py)."""
    saved, _ = load_named_params(path)
    params, _, fresh = match_params(params_like, saved)
    if fresh:
        name, why = next(iter(fresh.items()))
        raise UserError(f"checkpoint '{path}': parameter '{name}': {why}; the run's config does not "
                        f"match its checkpoint")
    return params
