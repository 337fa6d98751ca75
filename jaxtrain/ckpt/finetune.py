"""Fine-tuning: `model.init_from: PATH` seeds a model with a trained run's parameters.

Parameters are matched by name (`layers.0.kernel`, `head.bias`, ...) and shape. What
matches is loaded; the rest keeps its fresh initialization (a new head for a different
number of classes, say). Both lists are reported on the console and in metrics.jsonl
(event `init_from`). Freezing (`optimizer.freeze`) lives in optim.py.
"""

from __future__ import annotations

from pathlib import Path

from flax import nnx

from jaxtrain.ckpt.params import load_named_params, match_params
from jaxtrain.util.errors import UserError


def init_from(model: nnx.Module, path: str | Path, console=None, events=None) -> dict:
    """Load the matching parameters of the checkpoint at `path` into `model` (in place)."""
    saved, _ = load_named_params(path)
    params = nnx.state(model, nnx.Param)
    new, loaded, fresh = match_params(params, saved)
    if not loaded:
        raise UserError(f"config key 'model.init_from': no parameter of '{path}' matches this model by "
                        f"name and shape (it has {', '.join(sorted(saved)) or 'none'}); check the path "
                        f"and model.name/hidden_sizes")
    nnx.update(model, new)
    report = {"path": str(path), "loaded": loaded, "fresh": fresh}
    if console is not None:
        console.line(f"init_from {path}: loaded {len(loaded)} parameters ({', '.join(loaded)})"
                     + (f"; fresh: {'; '.join(f'{k} ({v})' for k, v in fresh.items())}" if fresh else ""))
    if events is not None:
        events.write("init_from", **report)
    return report
