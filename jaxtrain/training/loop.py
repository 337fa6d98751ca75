"""fit(): epochs of fused, compiled steps; evaluation; hooks; the run's summary.

The hot loop dispatches one compiled call per K steps (engine.py) and never reads
a value back from the device inside an epoch: metric sums stay on the device and are
read once per epoch. Between calls and at epoch ends each lane's hooks get a
read-only `StepInfo` and the loop applies what they ask for (view.py); the hook list
and its order come from `hooks.build_hooks`. The loop's time is charged to the parts
of the run's `TimeAccount` (accounting.py).
"""

from __future__ import annotations

import collections

import jax

from jaxtrain.parallel import placement
from jaxtrain.engine.step import accumulate_metrics, eval_params
from jaxtrain.training.accounting import HOOK_PART, PerfMeter, hook_part
from jaxtrain.training.run import Lane, Run
from jaxtrain.training.summary import Steady, epoch_record, run_summary
from jaxtrain.training.hooks.protocol import Hook
from jaxtrain.util.events import Throughput, duration, format_metrics


def fit(run: Run, hooks: list[Hook] | None = None) -> dict:
    """Train a plain run (with `hooks`, in that order) to the configured end; its summary."""
    if hooks is not None:
        run.lanes[0].hooks = list(hooks)
    return fit_lanes(run)[0]


def fit_lanes(run: Run) -> list[dict]:
    """Train from `run.epoch`/`run.step_in_epoch` to the configured end; each lane's summary."""
    cfg, engine, clock = run.cfg, run.engine, run.ctx.clock
    devices = placement.device_summary(run.mesh)
    engine.prepare(run.state)  # steps_per_call=auto: time a few K on a copy of the state
    with run.ctx.account.part(HOOK_PART):
        _announce(run, devices)
    meter = PerfMeter(engine, list(run.mesh.devices.flat), cfg.train.precision, cfg.data.batch_size,
                      cfg.train.grad_accum_steps)
    if cfg.train.profile:
        engine.timer.start()
    try:
        _each_hook(run, "on_train_start")
        steady, t_start = Steady(first_epoch=run.epoch, epochs=cfg.train.epochs), clock()
        throughput = Throughput(cfg.train.epochs * engine.steps, cfg.data.batch_size, clock)
        while run.epoch < cfg.train.epochs and run.stop_reason is None:
            _epoch(run, throughput, steady, meter)
        engine.timer.finish()
        run.ctx.watchdog.enter("the hooks at the end of training (the final checkpoint)")
        _each_hook(run, "on_train_end", profile=_profile(run, meter) if cfg.train.profile else None)
    finally:
        engine.timer.finish()
    tests = [_test(run, lane) for lane in run.lanes]
    fit_s = clock() - t_start
    return [run_summary(run, lane, devices, test, steady, fit_s, meter.section())
            for lane, test in zip(run.lanes, tests)]


def _announce(run: Run, devices: dict) -> None:
    """The devices and the data plan, before the first step."""
    cfg, dataset, engine = run.cfg, run.dataset, run.engine
    console = run.ctx.console
    console.line(f"devices: {devices['count']} x {devices['kind']} ({devices['platform']}), "
                 f"processes: {devices['processes']}")
    console.line(f"data: {dataset.name} train={engine.n_train} "
                 f"val={len(dataset.val) if dataset.val else 0} test={len(dataset.test)} "
                 f"features={dataset.feature_shape} ({'on device' if engine.on_device else 'streamed'}); "
                 f"batch {cfg.data.batch_size}, {engine.steps} steps/epoch, {engine.k} steps per call"
                 + (f" (a divisor of checkpoint.every_steps={engine.step_multiple})" if engine.step_multiple else "")
                 + (" (auto: " + ", ".join(f"K={k} {t * 1e3:.3g} ms/step" for k, t in engine.k_timings.items())
                    + ")" if engine.k_timings else "")
                 + (f"; {len(run.lanes)} points vectorized" if engine.points else ""))


def _each_hook(run: Run, method: str, **fields) -> None:
    """The hooks in their order, each seeing what the ones before it asked for. With several
    lanes, each hook position runs for every lane before the next position (so preemption,
    last, acts after every point's final checkpoint). Each hook's time goes to its part."""
    for rank in range(max(len(lane.hooks) for lane in run.lanes)):
        for lane in run.lanes:
            if rank >= len(lane.hooks):
                continue
            hook = lane.hooks[rank]
            extra = {"record": lane.history[-1]} if method == "on_epoch_end" else {}
            with run.ctx.account.part(hook_part(hook)):
                request = getattr(hook, method)(run.view(lane, **fields, **extra))
            if request is not None:
                run.apply(lane, request)


def _epoch(run: Run, throughput: Throughput, steady: Steady, meter: PerfMeter) -> None:
    """Train (the rest of) one epoch, then record it and give the hooks their epoch-end turn."""
    engine, clock, account = run.engine, run.ctx.clock, run.ctx.account
    t0, compile_before, train_before = clock(), engine.compile_s, account.get("train")
    steps_before = run.step_in_epoch
    with account.part("train"):
        sums = _train_epoch(run, throughput)
    if sums is None:  # resumed exactly at an epoch's end
        run.epoch, run.step_in_epoch = run.epoch + 1, 0
        return
    elapsed = clock() - t0 - (engine.compile_s - compile_before)
    count = sums["count"] if run.lanes[0].index is None else sums["count"][0]
    steady.add(run.epoch, elapsed, int(count))
    perf = meter.epoch(account.get("train") - train_before, run.step_in_epoch - steps_before)
    epoch_done = run.step_in_epoch >= engine.steps
    for lane in run.lanes:
        _record_epoch(run, lane, sums, elapsed, epoch_done, perf, throughput.last)
    finished = run.epoch + 1
    if epoch_done:
        run.epoch, run.step_in_epoch, run.epoch_sums = run.epoch + 1, 0, None
    run.ctx.watchdog.enter(f"the hooks at the end of epoch {finished}")
    with engine.timer.phase("hooks"):
        _each_hook(run, "on_epoch_end")


class CallPacer:
    """Waits for the call `limit` calls back after each dispatch, so that at most `limit` calls
    are in flight (None: no wait; see placement.calls_in_flight_limit for why)."""

    def __init__(self, limit: int | None, wait=jax.block_until_ready):
        self.limit, self.wait, self.in_flight = limit, wait, collections.deque()

    def __call__(self, outputs) -> None:
        if self.limit is None:
            return
        self.in_flight.append(outputs)
        if len(self.in_flight) > self.limit:
            self.wait(self.in_flight.popleft())


def _train_epoch(run: Run, throughput: Throughput) -> dict | None:
    """The epoch's compiled calls with the hooks between them; its metric sums, read back once
    (None when nothing was left to train in it)."""
    engine = run.engine
    sums, run.epoch_sums = run.epoch_sums, None
    pace = CallPacer(placement.calls_in_flight_limit(run.mesh))
    for run.state, call_sums, run.step_in_epoch in engine.run_epoch(run.state, run.epoch, run.step_in_epoch):
        run.global_step = run.epoch * engine.steps + run.step_in_epoch
        sums = call_sums if sums is None else accumulate_metrics(sums, call_sums)
        run.epoch_sums = sums
        pace(sums)
        if run.step_in_epoch >= engine.steps:  # the epoch's sync, before hooks that would wait for it
            jax.block_until_ready(call_sums)
        with run.ctx.account.part(HOOK_PART):
            run.ctx.console.progress(f"epoch {run.epoch + 1}", run.step_in_epoch, engine.steps,
                                     **throughput.update(run.global_step))
        run.ctx.watchdog.enter(f"the hooks after step {run.global_step}")
        with engine.timer.phase("hooks"):
            _each_hook(run, "after_call", run_call_sums=call_sums)
        if run.stop_reason is not None:
            break
    if sums is None:
        return None
    run.ctx.watchdog.enter(f"reading epoch {run.epoch + 1}'s metrics")
    with engine.timer.phase("metric_transfer"):
        return jax.device_get(sums)  # the epoch's one sync


def _record_epoch(run: Run, lane: Lane, sums: dict, elapsed: float, epoch_done: bool, perf: dict,
                  progress: dict) -> None:
    """A lane's epoch record (evaluated on the validation split when due), logged and kept;
    its console line with the run's ETA (`progress`: the Throughput's last reading)."""
    cfg, account = run.cfg, run.ctx.account
    lane_sums = {k: float(v if lane.index is None else v[lane.index]) for k, v in sums.items()}
    record = {**epoch_record(run.epoch, run.global_step, lane_sums, elapsed), **perf}
    with account.part(HOOK_PART):
        lane.ctx.events.write("train", **record)
    line = _epoch_label(run, epoch_done) + " " + format_metrics(
        {k: v for k, v in record.items() if k not in ("epoch", "step")})
    if run.dataset.val is not None and epoch_done and (
            (run.epoch + 1) % cfg.train.eval_every_epochs == 0 or run.epoch + 1 == cfg.train.epochs):
        record["val"] = _validate(run, lane)
        line += " | val " + format_metrics(record["val"])
    lane.history.append(record)
    if progress.get("eta_s") and run.epoch + 1 < cfg.train.epochs and run.stop_reason is None:
        line += f" | ETA {duration(progress['eta_s'])}"
    warning = overfitting_warning(lane.history) if cfg.train.early_stopping is None else None
    prefix = f"{lane.name}: " if lane.name else ""
    with account.part(HOOK_PART):
        lane.ctx.console.line(prefix + line)
        if warning:
            lane.ctx.console.line(prefix + warning)


def _validate(run: Run, lane: Lane) -> dict:
    """The lane's metrics on the validation split, logged."""
    run.ctx.watchdog.enter(f"evaluating the validation split after epoch {run.epoch + 1}")
    state = run.lane_state(lane)
    with run.ctx.account.part("evaluation"), run.engine.timer.phase("evaluation"):
        val = run.evaluator.evaluate(eval_params(state), state.rest, run.dataset.val)
    with run.ctx.account.part(HOOK_PART):
        lane.ctx.events.write("eval", split="val", epoch=run.epoch + 1, step=run.global_step, **val)
    return val


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


def _test(run: Run, lane: Lane) -> dict:
    """The lane's final metrics on the test split ({} when there is none)."""
    dataset = run.dataset
    if dataset.test is None or not len(dataset.test):  # data.test_fraction: 0 means no test split
        return {}
    run.ctx.watchdog.enter("evaluating the test split")
    state = run.lane_state(lane)
    with run.ctx.account.part("evaluation"):
        test = run.evaluator.evaluate(eval_params(state), state.rest, dataset.test)
    with run.ctx.account.part(HOOK_PART):
        lane.ctx.events.write("eval", split="test", epoch=run.epoch, step=run.global_step, **test)
        lane.ctx.console.line((f"{lane.name}: " if lane.name else "") + "test " + format_metrics(test))
    return test


def _profile(run: Run, meter: PerfMeter) -> dict:
    """What the phase timer measured, for the profiling hook (`perf`: for TFLOP/s and MFU;
    `precision` and `platform`: whether to advise bf16)."""
    timer = run.engine.timer
    return {"window": timer.window(), "traced": timer.traced, "compile_s": run.engine.compile_s,
            "trace_dir": str(timer.trace_dir) if timer.trace_dir else None, "perf": meter,
            "precision": run.cfg.train.precision, "platform": run.mesh.devices.flat[0].platform}
