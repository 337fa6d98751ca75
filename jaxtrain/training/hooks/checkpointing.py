"""CheckpointHook: periodic, best-by-metric and final checkpoints; `restore_run` resumes from them.

What a checkpoint holds is everything a resumed run needs to continue bit for bit:
the TrainState (params, optimizer state, RNG streams in `rest`, step), the data
position (epoch, step in epoch: the epoch's order is a function of seed and epoch),
the metric sums of a part-done epoch, the last epoch record (for the summary),
the chosen steps per call (chunk boundaries), the hooks' own state (best value,
early-stopping patience), the resolved config and the fitted preprocessing stats.

Step-based saves happen at compiled-call boundaries: the engine picks K (fixed or
measured) among the divisors of `checkpoint.every_steps` (engine.py, loop.setup).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxtrain.dist import parallel
from jaxtrain.ckpt.checkpoint import BEST_DIR, FORMAT, Checkpointer, state_tree
from jaxtrain.config.schema import CheckpointConfig, to_dict
from jaxtrain.util.errors import UserError
from jaxtrain.training.loop import Hook, Run
from jaxtrain.engine.step import TrainState


def _json_ready(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=float))


def metric_value(record: dict, name: str) -> float | None:
    """'val.loss' or 'train.accuracy' from an epoch record; None when not measured this epoch."""
    split, _, key = name.partition(".")
    source = record.get("val", {}) if split == "val" else record
    value = source.get(key)
    return None if value is None else float(value)


def improved(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


class CheckpointHook(Hook):
    """Saves to `directory` (last `cfg.keep` kept) and `directory/best` (one kept).

    `stateful` hooks (anything with `name`, `state_dict()`, `load_state_dict()`) have
    their state saved in every checkpoint's metadata and restored by `restore_run`.
    """

    name = "checkpoint"

    def __init__(self, cfg: CheckpointConfig, directory: str | Path, stateful: list = (),
                 best_metric: str | None = None, best_mode: str = "min", best_min_delta: float = 0.0):
        self.cfg, self.directory = cfg, Path(directory)
        self.stateful = list(stateful)
        self.best_metric = best_metric if best_metric is not None else cfg.best_metric
        self.best_mode = best_mode if best_metric is not None else cfg.best_mode
        self.best_min_delta = best_min_delta
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.saved_steps: list[int] = []   # what this run saved (tests and reports read it)
        self._manager: Checkpointer | None = None
        self._best: Checkpointer | None = None
        self._saved_state: Any = None      # the TrainState object last written
        self._boundary = 0

    # ---- stateful protocol
    def state_dict(self) -> dict:
        return {"best_metric": self.best_metric, "best_value": self.best_value, "best_step": self.best_step}

    def load_state_dict(self, d: dict) -> None:
        if d.get("best_metric") == self.best_metric:
            self.best_value, self.best_step = d.get("best_value"), d.get("best_step")

    # ---- hook
    def on_train_start(self, run: Run) -> None:
        self._manager = Checkpointer(self.directory, keep=self.cfg.keep, async_save=self.cfg.async_save)
        every = self.cfg.every_steps
        self._boundary = run.global_step // every if every else 0

    def after_call(self, run: Run, sums: dict) -> None:
        every = self.cfg.every_steps
        if not every or run.step_in_epoch >= run.engine.steps:  # epoch ends save in on_epoch_end
            return
        if run.global_step // every > self._boundary:
            self._boundary = run.global_step // every
            self.save(run, "periodic")

    def on_epoch_end(self, run: Run, record: dict) -> None:
        epoch_complete = run.step_in_epoch == 0
        if self.cfg.every_steps:
            self._boundary = max(self._boundary, run.global_step // self.cfg.every_steps)
        if epoch_complete and run.epoch % self.cfg.every_epochs == 0:
            self.save(run, "epoch")
        if self.best_metric:
            value = metric_value(record, self.best_metric)
            better = value is not None and np.isfinite(value) and improved(
                value, self.best_value, self.best_mode, self.best_min_delta)
            if better:
                self.best_value, self.best_step = value, run.global_step
                if self._best is None:
                    self._best = Checkpointer(self.directory / BEST_DIR, keep=1,
                                              async_save=self.cfg.async_save)
                self._best.save(run.global_step, state_tree(run.state), self.meta(run, "best"))

    def on_train_end(self, run: Run) -> None:
        if self._saved_state is not run.state:  # not saved yet, or changed (best params restored)
            self.save(run, "final")
        self.close()

    def close(self) -> None:
        for manager in (self._manager, self._best):
            if manager is not None:
                manager.close()
        self._manager = self._best = None

    # ---- saving
    def meta(self, run: Run, kind: str) -> dict:
        sums = None
        if run.epoch_sums is not None:
            sums = {k: float(v) for k, v in jax.device_get(run.epoch_sums).items()}
        return _json_ready({
            "format": FORMAT, "kind": kind, "step": run.global_step, "epoch": run.epoch,
            "step_in_epoch": run.step_in_epoch, "steps_per_epoch": run.engine.steps,
            "steps_per_call": run.engine.k, "epoch_sums": sums,
            "last_record": run.history[-1] if run.history else None,
            "hooks": {h.name: h.state_dict() for h in [self, *self.stateful]},
            "config": to_dict(run.cfg), "stats": run.dataset.stats,
        })

    def save(self, run: Run, kind: str) -> None:
        for hook in self.stateful:  # e.g. the non-finite guard: a bad state is never written
            hook.before_save(run)
        self._manager.save(run.global_step, state_tree(run.state), self.meta(run, kind))
        self._saved_state = run.state
        self.saved_steps.append(run.global_step)


def check_resumable(meta: dict, run: Run, where: str) -> None:
    """Refuse, before reading any array, a checkpoint this run cannot continue exactly: one
    holding parameters only, or one whose epochs were cut into other batches (a resumed
    epoch must go on with the same order and batches to see every example once)."""
    if meta.get("format") != FORMAT:
        raise UserError(f"checkpoint '{where}' holds parameters only; it cannot be resumed, "
                        f"but model.init_from can start a new run from it")
    saved_batch = meta["config"]["data"]["batch_size"]
    if saved_batch != run.cfg.data.batch_size or meta["steps_per_epoch"] != run.engine.steps:
        raise UserError(f"checkpoint '{where}' was saved with data.batch_size={saved_batch} and "
                        f"{meta['steps_per_epoch']} steps per epoch, this run has "
                        f"data.batch_size={run.cfg.data.batch_size} and {run.engine.steps}; "
                        f"resume with the same data.batch_size and data")


def restore_run(run: Run, directory: str | Path, stateful: list = ()) -> dict | None:
    """Load the latest complete checkpoint in `directory` into `run`; its meta, or None if none."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    ckpt = Checkpointer(directory, async_save=False)
    try:
        step = ckpt.latest_step()
        if step is None:
            return None
        check_resumable(ckpt.read_meta(step), run, f"{directory}/{step}")
        try:
            tree, meta = ckpt.restore(state_tree(run.state), step)
        except (ValueError, KeyError, TypeError) as e:  # another model or optimizer: exit 2, one line
            from jaxtrain.training.preflight import checkpoint_mismatch
            raise checkpoint_mismatch(directory, step, run.state, e) from None
    finally:
        ckpt.close()
    repl = parallel.replicated(run.mesh)
    run.state = jax.device_put(TrainState(**tree), repl)
    run.epoch, run.step_in_epoch, run.global_step = meta["epoch"], meta["step_in_epoch"], meta["step"]
    if meta.get("epoch_sums"):
        run.epoch_sums = {k: jax.device_put(np.float32(v), repl) for k, v in meta["epoch_sums"].items()}
    if meta.get("last_record"):
        run.history = [meta["last_record"]]
    if run.cfg.train.steps_per_call == "auto" and meta.get("steps_per_call"):
        run.engine.k = int(meta["steps_per_call"])  # the same chunk boundaries as before
    states = meta.get("hooks", {})
    for hook in stateful:
        if hook.name in states:
            hook.load_state_dict(states[hook.name])
    return meta
