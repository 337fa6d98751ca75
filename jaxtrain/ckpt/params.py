"""Parameters by name (`layers.0.kernel`, `head.bias`, ...): for `eval`/`predict`, for
fine-tuning, and for saying which parameter a checkpoint and a model disagree on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxtrain.ckpt.checkpoint import read_raw
from jaxtrain.model.optim import param_path
from jaxtrain.util.errors import ConfigError, UserError


def named_leaves(tree: Any) -> dict[str, Any]:
    return {param_path(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def load_named_params(path: str | Path, part: str = "params") -> tuple[dict[str, np.ndarray], dict]:
    """{'layers.0.kernel': array, ...} and the meta of the checkpoint at `path` (a run
    directory, its checkpoints/, or one step's folder), read to the host. `part="ema"`:
    the parameters' moving average (train.ema_decay) instead."""
    raw, meta = read_raw(path)
    if part != "params" and part not in raw:
        raise UserError(f"checkpoint '{path}' holds no '{part}' parameters; it was saved by a run "
                        f"without train.ema_decay")
    params = raw[part] if part in raw else raw
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


def restore_params(path: str | Path, params_like: Any, part: str = "params", rest_like: Any = None) -> Any:
    """The saved parameters (or their moving average: `part="ema"`) in the structure of
    `params_like` (an nnx.State of nnx.Param); with `rest_like`, (params, rest) where rest's
    float leaves (batch-norm statistics) are the saved ones too.

    Every parameter must be present with the same shape: this is for evaluating or
    predicting with the model a run trained, not for fine-tuning (finetune.py)."""
    saved, _ = load_named_params(path, part)
    params, _, fresh = match_params(params_like, saved)
    if fresh:
        name, why = next(iter(fresh.items()))
        raise UserError(f"checkpoint '{path}': parameter '{name}': {why}; the run's config does not "
                        f"match its checkpoint")
    if rest_like is None:
        return params
    raw, _ = read_raw(path)
    stats = {name: np.asarray(v) for name, v in named_leaves(raw.get("rest", {})).items()
             if np.issubdtype(np.asarray(v).dtype, np.floating)}
    rest, _, _ = match_params(rest_like, stats)
    return params, rest


def checkpoint_mismatch(where: str, params_like: Any, error: Exception) -> UserError:
    """A one-line error for checkpoint `where` (one step's folder) whose arrays do not fit
    this run: names the first parameter that differs, else blames the optimizer state."""
    fix = "resume with the run's own model and optimizer settings (or start a new run with model.init_from)"
    try:
        saved, _ = load_named_params(where)
    except UserError as unreadable:  # incomplete or damaged, not another model: say that
        return unreadable
    except Exception:  # noqa: BLE001 - unreadable as parameters too: what the restore said, one line
        return ConfigError(f"checkpoint '{where}' does not match this run "
                           f"({str(error).splitlines()[0][:200]}); {fix}")
    wanted = {name: np.shape(v) for name, v in named_leaves(params_like).items()}
    for name in sorted(set(saved) | set(wanted)):
        got, need = saved.get(name), wanted.get(name)
        if got is None or need is None or tuple(got.shape) != tuple(need):
            return ConfigError(f"checkpoint '{where}': parameter '{name}' is "
                               f"{'missing' if got is None else tuple(got.shape)} there but the model has "
                               f"{'none' if need is None else tuple(need)}; {fix}")
    return ConfigError(f"checkpoint '{where}': its optimizer state does not fit this run's settings "
                       f"(optimizer.name, momentum, clip_norm, freeze, train.ema_decay); {fix}")
