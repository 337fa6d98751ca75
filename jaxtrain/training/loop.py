"""fit(): epochs of fused, compiled steps; evaluation; hooks; the run's summary.

The hot loop dispatches one compiled call per K steps (see engine.py) and never
reads a value back from the device inside an epoch: metric sums stay on the
device and are read once per epoch. Periodic work (checkpoints, early stopping,
profiling, signal handling) plugs in as `Hook` objects, each in its own module.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtrain.dist import parallel
from jaxtrain.dist.watchdog import ProgressWatchdog
from jaxtrain.engine.compilation import enable_persistent_cache
from jaxtrain.model.augment import make_augment
from jaxtrain.config.schema import Config
from jaxtrain.data import Dataset
from jaxtrain.engine.engine import Engine, fits_on_device
from jaxtrain.util.events import Console, JsonlWriter, Throughput, duration, format_metrics
from jaxtrain.util.time_account import TimeAccount
from jaxtrain.training.accounting import HOOK_PART, PerfMeter, call_hooks
from jaxtrain.model.metrics import compute_metrics
from jaxtrain.model.optim import build_optimizer
from jaxtrain.engine.step import (TrainState, accumulate_metrics, add_metrics, eval_params, init_state, make_predict,
                                  make_train_step, split_model)

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass
class RunContext:
    """What a run needs besides the config: where to write, and an optional clock for tests."""
    console: Console
    events: JsonlWriter
    workdir: Path | None = None
    clock: Callable[[], float] = time.perf_counter
    account: TimeAccount | None = None  # where the run's time goes (accounting.py); one on the clock if None
    # Multi-process: marks each phase's start and ends a run stuck in a collective (dist/watchdog.py).
    watchdog: ProgressWatchdog = dataclasses.field(default_factory=lambda: ProgressWatchdog(None, 0, 1))

    def __post_init__(self):
        if self.account is None:
            self.account = TimeAccount(self.clock)


@dataclasses.dataclass
class Run:
    """The live state of a fit, as hooks see it."""
    cfg: Config
    dataset: Dataset
    ctx: RunContext
    mesh: Any
    engine: Engine
    evaluator: "Evaluator"
    state: TrainState
    epoch: int = 0                 # epoch in progress (0-based)
    step_in_epoch: int = 0         # steps of it done
    global_step: int = 0           # known on the host without a device sync
    history: list = dataclasses.field(default_factory=list)
    stop_reason: str | None = None  # a hook sets this to end training early
    epoch_sums: dict | None = None  # the epoch's metric sums so far (device); a resumed run's start
    extra: dict = dataclasses.field(default_factory=dict)  # hooks' entries for the summary


class Hook:
    """Periodic work around the hot loop. Override what you need; all are no-ops."""

    def on_train_start(self, run: Run) -> None: ...

    def after_call(self, run: Run, sums: dict) -> None:
        """After each compiled call (K steps). `sums` are device arrays: reading them syncs."""

    def on_epoch_end(self, run: Run, record: dict) -> None: ...

    def on_train_end(self, run: Run) -> None: ...

    def before_save(self, run: Run) -> None:
        """Right before the checkpoint hook writes a checkpoint (called on its `stateful` hooks)."""


class Evaluator:
    """Runs the model over a whole split in one compiled call and computes metrics on the host."""

    def __init__(self, eval_def, mesh, batch_size: int, dataset: Dataset):
        self.mesh = mesh
        self.batch_size = batch_size
        self.dataset = dataset
        self._predict = jax.jit(make_predict(eval_def),
                                out_shardings=parallel.output_sharding(mesh, 1))
        self._placed: dict[int, tuple[np.ndarray, jax.Array]] = {}  # the dataset's splits, uploaded once

    def _place(self, x: np.ndarray) -> jax.Array:
        """x padded to whole batches, as (num_batches, batch, ...) device arrays."""
        n = len(x)
        data_size = parallel.batch_shards(self.mesh)
        b = min(self.batch_size, n)
        b = max(data_size, math.ceil(b / data_size) * data_size)
        nb = math.ceil(n / b)
        padded = np.zeros((nb * b, *x.shape[1:]), x.dtype)
        padded[:n] = x
        return jax.device_put(padded.reshape(nb, b, *x.shape[1:]), parallel.batch_sharding(self.mesh, 1))

    def outputs(self, params, rest, x: np.ndarray, xs: jax.Array | None = None) -> np.ndarray:
        xs = self._place(x) if xs is None else xs
        out = np.asarray(self._predict(params, rest, xs))
        return out.reshape(-1, *out.shape[2:])[:len(x)]

    def evaluate(self, params, rest, split) -> dict[str, float]:
        # A split is evaluated every epoch: keep its device copy (keyed by the array, held here
        # so the id stays its own).
        x = split.x
        if id(x) not in self._placed:
            self._placed[id(x)] = (x, self._place(x))
        out = self.outputs(params, rest, x, self._placed[id(x)][1])
        d = self.dataset
        return compute_metrics(d.task, out, split.y, d.target_mean, d.target_scale)


def _epoch_record(epoch: int, step: int, sums: dict, elapsed: float) -> dict:
    record = {"epoch": epoch + 1, "step": step, "loss": sums["loss_sum"] / max(sums["count"], 1.0),
              "examples_per_sec": sums["count"] / max(elapsed, 1e-9)}
    if "correct" in sums:
        record["accuracy"] = sums["correct"] / max(sums["count"], 1.0)
    if sums["nonfinite"]:
        record["nonfinite_steps"] = int(sums["nonfinite"])
    return record


def setup(cfg: Config, model: nnx.Module, dataset: Dataset, ctx: RunContext) -> Run:
    """Mesh, optimizer, compiled step and initial state: everything before the first step."""
    enable_persistent_cache(cfg.train.compilation_cache)
    mesh = parallel.make_mesh(cfg.parallel)
    parallel.check_batch_size(cfg.data.batch_size, mesh)
    parallel.check_microbatches(cfg.train.grad_accum_steps, cfg.data.batch_size, mesh)
    strategy = parallel.Strategy(cfg.parallel.strategy, mesh)
    train_def, eval_def, params, rest = split_model(model)
    from jaxtrain.engine.engine import steps_per_epoch
    steps = steps_per_epoch(dataset.num_train, cfg.data.batch_size)
    tx = build_optimizer(cfg.optimizer, steps, cfg.train.epochs, params)
    # One compiled call (cached across runs) instead of an eager compile per optimizer-state leaf.
    ema = cfg.train.ema_decay is not None
    state = strategy.place_state(jax.jit(lambda p, r: init_state(p, r, tx, ema=ema))(params, rest))
    train_step = make_train_step(train_def, tx, dataset.task, l1=cfg.optimizer.l1, l2=cfg.optimizer.l2,
                                 skip_nonfinite=cfg.train.on_nonfinite == "skip_step",
                                 axis_name=strategy.step_axis, grad_accum_steps=cfg.train.grad_accum_steps,
                                 ema_decay=cfg.train.ema_decay,
                                 augment=make_augment(cfg.train.augment, dataset.feature_shape, cfg.train.seed,
                                                      dataset.image_shape))
    engine = Engine(train_step, dataset, mesh, batch_size=cfg.data.batch_size, seed=cfg.train.seed,
                    on_device=fits_on_device(dataset, cfg.train.on_device_fraction),
                    steps_per_call=cfg.train.steps_per_call, clock=ctx.clock, strategy=strategy,
                    step_multiple=cfg.checkpoint.every_steps if cfg.checkpoint.enabled else None,
                    account=ctx.account, watchdog=ctx.watchdog)
    evaluator = Evaluator(eval_def, mesh, cfg.data.eval_batch_size, dataset)
    return Run(cfg=cfg, dataset=dataset, ctx=ctx, mesh=mesh, engine=engine, evaluator=evaluator,
               state=state)


def fit(run: Run, hooks: list[Hook] = ()) -> dict:
    """Train from `run.epoch`/`run.step_in_epoch` to the configured end; return the summary.

    Its time is charged to the parts of `run.ctx.account` (accounting.py)."""
    cfg, ctx, engine, account = run.cfg, run.ctx, run.engine, run.ctx.account
    devices = parallel.device_summary(run.mesh)
    engine.prepare(run.state)  # steps_per_call=auto: time a few K on a copy of the state
    with account.part(HOOK_PART):
        _announce(run, devices)
    call_hooks(account, hooks, "on_train_start", run)
    meter = PerfMeter(engine, list(run.mesh.devices.flat), cfg.train.precision, cfg.data.batch_size,
                      cfg.train.grad_accum_steps)
    steady = [0.0, 0]  # seconds and examples of the epochs after the first one timed: caches are warm
    first_epoch = run.epoch
    t_start = ctx.clock()
    throughput = Throughput(cfg.train.epochs * engine.steps, cfg.data.batch_size, ctx.clock)  # bar's ex/s, ETA
    while run.epoch < cfg.train.epochs and run.stop_reason is None:
        t0, compile_before, train_before = ctx.clock(), engine.compile_s, account.get("train")
        steps_before = run.step_in_epoch
        with account.part("train"):
            sums = _train_epoch(run, hooks, throughput)
        if sums is None:  # resumed exactly at an epoch's end
            run.epoch, run.step_in_epoch = run.epoch + 1, 0
            continue
        elapsed = ctx.clock() - t0 - (engine.compile_s - compile_before)
        if run.epoch > first_epoch or cfg.train.epochs - first_epoch == 1:
            steady[0] += elapsed
            steady[1] += int(sums["count"])
        record = _epoch_record(run.epoch, run.global_step, sums, elapsed)
        record.update(meter.epoch(account.get("train") - train_before, run.step_in_epoch - steps_before))
        _end_epoch(run, hooks, record, throughput.last)

    ctx.watchdog.enter("the hooks at the end of training (the final checkpoint)")
    call_hooks(account, hooks, "on_train_end", run)
    test = {}
    if run.dataset.test is not None and len(run.dataset.test):  # data.test_fraction: 0 means no test split
        ctx.watchdog.enter("evaluating the test split")
        with account.part("evaluation"):
            test = run.evaluator.evaluate(eval_params(run.state), run.state.rest, run.dataset.test)
        with account.part(HOOK_PART):
            ctx.events.write("eval", split="test", epoch=run.epoch, step=run.global_step, **test)
            ctx.console.line("test " + format_metrics(test))
    summary = _summary(run, devices, test, steady)
    summary["time"] = {"compile_s": engine.compile_s, "fit_s": ctx.clock() - t_start}
    summary["perf"] = meter.section()
    return summary


def _announce(run: Run, devices: dict) -> None:
    """The devices and the data plan, before the first step."""
    cfg, dataset, engine = run.cfg, run.dataset, run.engine
    run.ctx.console.line(f"devices: {devices['count']} x {devices['kind']} ({devices['platform']}), "
                         f"processes: {devices['processes']}")
    run.ctx.console.line(
        f"data: {dataset.name} train={engine.n_train} "
        f"val={len(dataset.val) if dataset.val else 0} test={len(dataset.test)} "
        f"features={dataset.feature_shape} ({'on device' if engine.on_device else 'streamed'}); "
        f"batch {cfg.data.batch_size}, {engine.steps} steps/epoch, {engine.k} steps per call"
        + (f" (a divisor of checkpoint.every_steps={engine.step_multiple})" if engine.step_multiple else "")
        + (" (auto: " + ", ".join(f"K={k} {t * 1e3:.3g} ms/step" for k, t in engine.k_timings.items())
           + ")" if engine.k_timings else ""))


def _train_epoch(run: Run, hooks: list[Hook], throughput: Throughput) -> dict | None:
    """The epoch's compiled calls with the hooks between them; its metric sums, read back once
    (None when nothing was left to train in it)."""
    engine, account = run.engine, run.ctx.account
    sums, run.epoch_sums = run.epoch_sums, None
    for run.state, chunk_sums, run.step_in_epoch in engine.run_epoch(run.state, run.epoch, run.step_in_epoch):
        run.global_step = run.epoch * engine.steps + run.step_in_epoch
        sums = chunk_sums if sums is None else accumulate_metrics(sums, chunk_sums)
        run.epoch_sums = sums
        if run.step_in_epoch >= engine.steps:  # the epoch's sync, before hooks that would wait for it
            jax.block_until_ready(chunk_sums)
        with account.part(HOOK_PART):
            run.ctx.console.progress(f"epoch {run.epoch + 1}", run.step_in_epoch, engine.steps,
                                     **throughput.update(run.global_step))
        run.ctx.watchdog.enter(f"the hooks after step {run.global_step}")
        with engine.timer.phase("hooks"):
            call_hooks(account, hooks, "after_call", run, chunk_sums)
        if run.stop_reason is not None:
            break
    if sums is None:
        return None
    run.ctx.watchdog.enter(f"reading epoch {run.epoch + 1}'s metrics")
    with engine.timer.phase("metric_transfer"):
        return {key: float(v) for key, v in jax.device_get(sums).items()}  # the epoch's one sync


def _end_epoch(run: Run, hooks: list[Hook], record: dict, progress: dict) -> None:
    """Log the epoch, evaluate when it is due, and give the hooks their epoch-end turn."""
    cfg, dataset, engine, account = run.cfg, run.dataset, run.engine, run.ctx.account
    with account.part(HOOK_PART):
        run.ctx.events.write("train", **record)
    epoch_done = run.step_in_epoch >= engine.steps
    line = _epoch_label(run, epoch_done) + " " + format_metrics(
        {k: v for k, v in record.items() if k not in ("epoch", "step")})
    if dataset.val is not None and epoch_done and (
            (run.epoch + 1) % cfg.train.eval_every_epochs == 0 or run.epoch + 1 == cfg.train.epochs):
        run.ctx.watchdog.enter(f"evaluating the validation split after epoch {run.epoch + 1}")
        with account.part("evaluation"), engine.timer.phase("evaluation"):
            val = run.evaluator.evaluate(eval_params(run.state), run.state.rest, dataset.val)
        with account.part(HOOK_PART):
            run.ctx.events.write("eval", split="val", epoch=run.epoch + 1, step=run.global_step, **val)
        record["val"] = val
        line += " | val " + format_metrics(val)
    run.history.append(record)
    if progress.get("eta_s") and run.epoch + 1 < cfg.train.epochs and run.stop_reason is None:
        line += f" | ETA {duration(progress['eta_s'])}"
    warning = overfitting_warning(run.history) if cfg.train.early_stopping is None else None
    with account.part(HOOK_PART):
        run.ctx.console.line(line)
        if warning:
            run.ctx.console.line(warning)
    if epoch_done:
        run.epoch, run.step_in_epoch, run.epoch_sums = run.epoch + 1, 0, None
    run.ctx.watchdog.enter(f"the hooks at the end of epoch {record['epoch']}")
    with engine.timer.phase("hooks"):
        call_hooks(account, hooks, "on_epoch_end", run, record)


def _epoch_label(run: Run, epoch_done: bool) -> str:
    """'epoch 3/10', or for an epoch cut short (a profile window, a stop) what part of it ran."""
    label = f"epoch {run.epoch + 1}/{run.cfg.train.epochs}"
    if epoch_done:
        return label
    return f"{run.stop_reason or 'stopped'} ({run.step_in_epoch} of {run.engine.steps} steps of {label})"


RISING_EVALUATIONS = 3  # validation losses in a row, each above the one before, that say "overfitting"


def overfitting_warning(history: list[dict]) -> str | None:
    """A warning when the validation loss has just risen for the RISING_EVALUATIONS-th
    evaluation in a row (once per such streak), naming train.early_stopping; else None."""
    losses = [r["val"]["loss"] for r in history if "loss" in r.get("val", {})]
    recent = losses[-(RISING_EVALUATIONS + 1):]
    if len(recent) <= RISING_EVALUATIONS or any(b <= a for a, b in zip(recent, recent[1:])):
        return None
    if len(losses) > RISING_EVALUATIONS + 1 and losses[-RISING_EVALUATIONS - 2] < recent[0]:
        return None  # a longer streak: warned when it reached RISING_EVALUATIONS
    best = min(losses)
    return (f"warning: the validation loss has risen {RISING_EVALUATIONS} evaluations in a row "
            f"({recent[0]:.4g} -> {recent[-1]:.4g}; best {best:.4g} at epoch "
            f"{next(r['epoch'] for r in history if r.get('val', {}).get('loss') == best)}): the model is "
            f"overfitting; set train.early_stopping (e.g. --set train.early_stopping.patience=5) to stop "
            f"there and keep the best epoch's parameters")


def _summary(run: Run, devices: dict, test: dict, steady: list) -> dict:
    cfg, dataset, engine = run.cfg, run.dataset, run.engine
    last = run.history[-1] if run.history else {}
    return {
        "config_name": cfg.name,
        "task": dataset.task,
        "test": test,
        "val": last.get("val", {}),
        "train": {"examples_per_sec": steady[1] / steady[0] if steady[0] else None,
                  "loss": last.get("loss"), "epochs": run.epoch, "steps": run.global_step,
                  **({"accuracy": last["accuracy"]} if "accuracy" in last else {})},
        "devices": devices,
        "batch": {"global": cfg.data.batch_size,
                  "per_device": cfg.data.batch_size // parallel.batch_shards(run.mesh),
                  "grad_accum_steps": cfg.train.grad_accum_steps},
        "parallel": {"strategy": cfg.parallel.strategy, "mesh": dict(run.mesh.shape)},
        # Which parameters the val/test metrics (and the best checkpoint) describe.
        "evaluation": {"params": "ema" if cfg.train.ema_decay is not None else "trained",
                       "ema_decay": cfg.train.ema_decay},
        "execution": {"on_device_data": engine.on_device, "steps_per_call": engine.k,
                      "steps_per_call_measured_ms": {str(k): t * 1e3 for k, t in engine.k_timings.items()},
                      "precision": cfg.train.precision, "recompiles": engine.recompiles},
        "data": {"train": engine.n_train, "val": len(dataset.val) if dataset.val else 0,
                 "test": len(dataset.test)},
        "stopped_early": run.stop_reason,
        **run.extra,
    }
