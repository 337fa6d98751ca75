"""Will the run fit in memory? An estimate made before anything is compiled or allocated.

The estimate is deliberately simple and on the generous side, so that it only
stops runs that cannot possibly fit (a batch of a billion rows, a layer of a
billion units) instead of letting them die of an out-of-memory error minutes
in, or take the machine down with them:

    parameters x 4      (params, gradients, updates, the new params: the step donates the old;
                         x 5 with train.grad_accum_steps > 1, for the gradients' running sum)
  + optimizer state     (Adam: 2 x params; SGD with momentum: 1 x; plain SGD: 0)
  + EMA                 (1 x params with train.ema_decay)
  + activations         (built-in MLP: microbatch x every layer's width x 3 for the forward value,
                         its gradient and the pre-activation; other models: 3 x the input
                         microbatch; a microbatch is the batch / train.grad_accum_steps)
  + input batches       (x and y; K stacked batches when streaming, plus one being prepared)
  + the on-device training set, when it is uploaded

Available memory is the first device's free memory where JAX reports it
(GPU/TPU `memory_stats`), else the host's available memory (`MemAvailable`): on
CPU, device memory is host memory. A training set that does not fit the device
is streamed instead (plan.fits_on_device); what cannot fit even then is a
UserError stating the estimated need against what is available.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

from jaxtrain.engine.plan import RunPlan
from jaxtrain.parallel.placement import device_memory, is_key
from jaxtrain.util.errors import UserError
from jaxtrain.util.workdir import format_bytes

FLOAT_BYTES = 4


def available_bytes(device: Any | None = None) -> tuple[int, str]:
    """(free bytes, where) for the first device: device memory, or host memory on CPU."""
    _, free, where = device_memory(device)
    return free, where


def optimizer_state_factor(opt_cfg: Any) -> int:
    if opt_cfg.name in ("adam", "adamw"):
        return 2
    return 1 if opt_cfg.momentum else 0


def estimate_train_bytes(cfg: Any, num_params: int, feature_size: int, num_outputs: int, *,
                         per_device_batch: int, steps_per_call: int, streaming: bool,
                         on_device_data_bytes: int = 0) -> dict[str, int]:
    """The estimated bytes one device needs to train, by part."""
    params = num_params * FLOAT_BYTES
    widths = (cfg.model.hidden_sizes if cfg.model.name == "mlp" else ()) + (num_outputs,)
    per_row_activations = 3 * (feature_size + sum(widths))
    batch_row = feature_size + max(1, num_outputs if num_outputs > 1 else 1) + 1  # x, y, mask
    batches = (steps_per_call + 1) if streaming else 1
    microbatches = cfg.train.grad_accum_steps
    return {
        "parameters": (4 if microbatches == 1 else 5) * params,
        "optimizer_state": optimizer_state_factor(cfg.optimizer) * params,
        "ema": params if cfg.train.ema_decay is not None else 0,
        "activations": math.ceil(per_device_batch / microbatches) * per_row_activations * FLOAT_BYTES,
        "input_batches": batches * per_device_batch * batch_row * FLOAT_BYTES,
        "training_set": on_device_data_bytes,
    }


def count_params(params: Any) -> int:
    return int(sum(np.prod(np.shape(p)) for p in jax.tree.leaves(params)))


def check_fits(cfg: Any, model_params: Any, feature_shape: tuple[int, ...], num_outputs: int, *,
               num_devices: int, per_device_batch: int, steps_per_call: int, streaming: bool,
               on_device_data_bytes: int = 0, available: tuple[int, str] | None = None) -> dict[str, int]:
    """Raise a UserError when the estimate exceeds the available memory; return the estimate
    for one device (`per_device_batch`: the run plan's, the batch over every mesh axis)."""
    parts = estimate_train_bytes(cfg, count_params(model_params), int(np.prod(feature_shape)), num_outputs,
                                 per_device_batch=per_device_batch, steps_per_call=steps_per_call,
                                 streaming=streaming, on_device_data_bytes=on_device_data_bytes)
    free, where = available or available_bytes()
    # CPU devices share host memory: every replica counts.
    need_parts = {k: v * num_devices for k, v in parts.items()} if where == "host memory" else parts
    need = sum(need_parts.values())
    if need > free:
        biggest = max(need_parts, key=need_parts.get)
        fix = {"activations": "lower data.batch_size or raise train.grad_accum_steps",
               "ema": "use a smaller model or train.ema_decay=null", "input_batches": "lower data.batch_size "
               "or train.steps_per_call", "parameters": "use a smaller model (model.hidden_sizes)",
               "optimizer_state": "use a smaller model or optimizer.name=sgd",
               "training_set": "lower train.on_device_fraction to stream the data"}[biggest]
        detail = ", ".join(f"{k.replace('_', ' ')} {format_bytes(v)}" for k, v in need_parts.items() if v)
        raise UserError(f"the run needs about {format_bytes(need)} ({detail}) but only "
                        f"{format_bytes(free)} of {where} is available; {fix}")
    return parts


def check_run(cfg: Any, model: Any, dataset: Any, plan: RunPlan,
              available: tuple[int, str] | None = None) -> dict[str, int]:
    """The estimate for a configured run (its `plan`), before its state is placed on the devices."""
    from flax import nnx

    params = nnx.state(model, nnx.Param)
    # 'auto' is measured later (Engine.prepare): estimate with the longest candidate.
    k = plan.steps_per_call or max(plan.k_candidates)
    data_bytes = dataset.train.x.nbytes + dataset.train.y.nbytes if plan.on_device else 0
    return check_fits(cfg, params, dataset.feature_shape, dataset.num_outputs, num_devices=plan.batch_shards,
                      per_device_batch=plan.per_device_batch, steps_per_call=k, streaming=not plan.on_device,
                      on_device_data_bytes=data_bytes, available=available)


# ---------------------------------------------------------------- measured, once the run exists


def state_bytes_per_device(state: Any) -> int:
    """Bytes of the training state (parameters, optimizer state, everything else in it) that
    one device holds: its shard of every leaf (all of a replicated leaf)."""
    total = 0
    for leaf in jax.tree.leaves(state):
        if is_key(leaf):
            leaf = jax.random.key_data(leaf)
        shape = leaf.sharding.shard_shape(leaf.shape) if hasattr(leaf, "sharding") else np.shape(leaf)
        total += math.prod(shape) * leaf.dtype.itemsize
    return int(total)


def compiled_memory(executable: Any) -> dict[str, int] | None:
    """XLA's own memory analysis of a compiled call, per device: its arguments, outputs,
    temporaries and the outputs that reuse (alias) donated arguments."""
    analysis = executable.memory_analysis() if executable is not None else None
    if analysis is None:
        return None
    parts = {"arguments": analysis.argument_size_in_bytes, "outputs": analysis.output_size_in_bytes,
             "aliased": analysis.alias_size_in_bytes, "temporaries": analysis.temp_size_in_bytes,
             "code": analysis.generated_code_size_in_bytes}
    parts["peak"] = parts["arguments"] + parts["outputs"] - parts["aliased"] + parts["temporaries"]
    return {k: int(v) for k, v in parts.items()}


def report(state: Any, executable: Any, estimate: dict[str, int]) -> dict:
    """summary.json's `memory`: the state one device holds and XLA's analysis of the compiled
    call, measured, beside the estimate made before the run (all per device, in bytes)."""
    return {"state_bytes_per_device": state_bytes_per_device(state),
            "compiled_step": compiled_memory(executable),
            "estimate": {**estimate, "total": sum(estimate.values())}}
