"""The non-finite guard: `train.on_nonfinite` as a hook, without a host sync per step.

The compiled step already finds non-finite values on the device: every step adds
`nonfinite` (0 or 1) to the metric sums and the scan carry keeps the first bad
step's number and what went bad (`first_nonfinite_step`, `first_nonfinite_what`,
see step.add_metrics). So the host learns about it from the K-step call's sums,
and it reads them only when that costs nothing extra:

- after each call, sums of earlier calls that have already finished are read
  (`is_ready()`: no wait);
- a call that ends an epoch is waited for (the epoch's metrics sync there anyway),
  and so is every call before a checkpoint is written: the checkpoint hook calls
  `before_save` first (the checkpoint's copy to the host syncs there anyway), so a
  bad state is never saved.

Policies:

- `stop` (default): raise NonFiniteError naming the step and the loss or the
  parameter whose gradient went non-finite. Nothing after that is saved, so the
  last checkpoint on disk is the last good state; api.train writes no
  `summary.json` (the reason goes into metrics.jsonl) and the CLI exits 3.
- `skip_step`: the step itself leaves the state unchanged when anything is
  non-finite (make_train_step(skip_nonfinite=True)); this hook counts the skipped
  steps into the summary (`nonfinite_skipped_steps`).
"""

from __future__ import annotations

from typing import Any

import jax

from jaxtrain.training.hooks.protocol import Hook, Request, StepInfo
from jaxtrain.util.errors import NonFiniteError


def describe(what: int, params: Any) -> str:
    """'the loss' or 'the gradient of layers.0.kernel' for a `first_nonfinite_what` code."""
    if what <= 1:
        return "the loss"
    from jaxtrain.model.optim import param_path
    paths = [param_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    index = what - 2
    return f"the gradient of {paths[index] if index < len(paths) else f'parameter #{index}'}"


class NonFiniteGuard(Hook):
    name = "nonfinite_guard"  # its count of skipped steps travels in checkpoints
    stage = "validate"        # it reads each call's flags before anything acts on them

    def __init__(self, policy: str = "stop"):
        self.policy = policy
        self.skipped = 0
        self._pending: list[dict] = []  # the non-finite sums of calls not read yet, oldest first

    def state_dict(self) -> dict:
        return {"skipped": self.skipped}

    def load_state_dict(self, d: dict) -> None:
        self.skipped = int(d.get("skipped", 0))

    def on_train_start(self, info: StepInfo) -> Request | None:
        self._pending.clear()
        return self._report() if self.policy == "skip_step" else None

    def after_call(self, info: StepInfo) -> None:
        if self.policy != "stop":
            return
        sums = info.call_sums  # this lane's (a vectorized run's point's) sums of the call
        self._pending.append({k: sums[k] for k in ("nonfinite", "first_nonfinite_step", "first_nonfinite_what")})
        self._check(info, wait=info.call_ends_epoch)

    def before_save(self, info: StepInfo) -> None:
        if self.policy == "stop":
            self._check(info, wait=True)

    def _check(self, info: StepInfo, wait: bool) -> None:
        """Read the pending calls' sums: all of them if `wait`, else those already computed."""
        while self._pending and (wait or _ready(self._pending[0])):
            chunk = self._pending.pop(0)
            values = {k: float(v) for k, v in jax.device_get(chunk).items()}
            if values["nonfinite"]:
                self._pending.clear()
                self._stop(info, values)

    def _stop(self, info: StepInfo, values: dict) -> None:
        step = int(values["first_nonfinite_step"])
        epoch = (step - 1) // info.steps_per_epoch + 1
        what = describe(int(values["first_nonfinite_what"]), info.state.params)
        raise NonFiniteError(
            f"{what} became non-finite (NaN or inf) at step {step} (epoch {epoch}); training "
            f"stopped and nothing after that step was saved. Lower optimizer.learning_rate, set "
            f"optimizer.clip_norm, check the data for NaN/inf, or set train.on_nonfinite=skip_step")

    def on_train_end(self, info: StepInfo) -> None:
        if self.policy == "stop":  # before the final checkpoint: a stop hook may end mid-epoch
            self._check(info, wait=True)

    def on_epoch_end(self, info: StepInfo) -> Request | None:
        if self.policy != "skip_step":
            return None
        self.skipped += info.record.nonfinite_steps
        return self._report()

    def _report(self) -> Request:
        return Request(summary={"nonfinite_skipped_steps": self.skipped})


def _ready(tree: dict) -> bool:
    return all(getattr(v, "is_ready", lambda: True)() for v in tree.values())
