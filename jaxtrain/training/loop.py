"""fit(): epochs of fused, compiled steps; evaluation; hooks; the run's summary.

The hot loop dispatches one compiled call per K steps (engine.py) and never reads
a value back from the device inside an epoch: metric sums stay on the device and are
read once per epoch. Between calls and at epoch ends each lane's hooks get a
read-only `StepInfo` and the loop applies what they ask for (hooks/protocol.py); the
hook list and its order come from `hooks.build_hooks`. The loop owns the run's clock
and charges every moment to one phase of it (accounting.py); the engine charges its own
work (compiling, input, the calls, the device waits) to its phases of the same timeline.
"""

from __future__ import annotations

import jax

from jaxtrain.parallel import placement
from jaxtrain.engine.step import accumulate_metrics, eval_params
from jaxtrain.training.accounting import Perf, throughput, train_seconds
from jaxtrain.training.run import Lane, Run
from jaxtrain.training.record import EpochRecord
from jaxtrain.training.summary import run_summary
from jaxtrain.training.hooks.best import observe_best
from jaxtrain.training.hooks.dispatch import dispatch
from jaxtrain.training.hooks.protocol import Hook
from jaxtrain.util.events import duration, format_metrics
from jaxtrain.util.heartbeat import Heartbeat
from jaxtrain.util.phases import Phase


def fit(run: Run, hooks: list[Hook] | None = None) -> dict:
    """Train a plain run (with `hooks`, in that order) to the configured end; its summary."""
    if hooks is not None:
        run.lanes[0].hooks = list(hooks)
    return fit_lanes(run)[0]


def fit_lanes(run: Run) -> list[dict]:
    """Train from `run.epoch`/`run.step_in_epoch` to the configured end; each lane's summary."""
    cfg, engine, clock = run.cfg, run.engine, run.ctx.clock
    devices = placement.device_summary(run.mesh)
    with clock.phase(Phase.COMPILE):
        engine.prepare(run.state)  # steps_per_call=auto: time a few K on a copy of the state
    with clock.phase(Phase.HOOKS):
        _announce(run, devices)
    # the train step scans the microbatches: XLA counts its body once
    perf = Perf(lambda: _flops_per_step(run), list(run.mesh.devices.flat), cfg.train.precision)
    _each_hook(run, "on_train_start")
    with Heartbeat(run.ctx.console):  # a line every 10 s, also within a long compiled call
        while run.epoch < cfg.train.epochs and run.stop_reason is None:
            _epoch(run, perf)
    run.timeline.enter("the hooks at the end of training (the final checkpoint)")
    _each_hook(run, "on_train_end", profile=_profile(run, perf) if cfg.train.profile else None)
    tests = [_test(run, lane) for lane in run.lanes]
    return [run_summary(run, lane, devices, test, perf) for lane, test in zip(run.lanes, tests)]


def _flops_per_step(run: Run) -> float | None:
    flops = run.engine.flops_per_step()
    return flops * run.plan.microbatches if flops else None


def _announce(run: Run, devices: dict) -> None:
    """The devices and the data plan, before the first step."""
    plan, dataset, engine = run.plan, run.dataset, run.engine
    console = run.ctx.console
    console.line(f"devices: {devices['count']} x {devices['kind']} ({devices['platform']}), "
                 f"processes: {devices['processes']}")
    console.line(f"data: {dataset.name} train={engine.n_train} "
                 f"val={len(dataset.val) if dataset.val else 0} test={len(dataset.test)} "
                 f"features={dataset.feature_shape} ({'on device' if engine.on_device else 'streamed'}); "
                 f"batch {plan.batch_size}, {plan.steps_per_epoch} steps/epoch, {engine.k} steps per call"
                 + (f" (a divisor of checkpoint.every_steps={engine.step_multiple})" if engine.step_multiple else "")
                 + (" (auto: " + ", ".join(f"K={k} {t * 1e3:.3g} ms/step" for k, t in engine.k_timings.items())
                    + ")" if engine.k_timings else "")
                 + (f"; {len(run.lanes)} points vectorized" if engine.points else ""))


def _each_hook(run: Run, method: str, **fields) -> None:
    """`hook.<method>` of every lane's hooks (dispatch.py), each seeing what the ones before
    it asked for: the loop applies a hook's request before the next hook looks."""
    def call(index: int, hook: Hook) -> None:
        lane = run.lanes[index]
        extra = {"record": lane.history[-1]} if method == "on_epoch_end" else {}
        request = getattr(hook, method)(run.view(lane, **fields, **extra))
        if request is not None:
            run.apply(lane, request)

    dispatch(run.ctx.clock, [lane.hooks for lane in run.lanes], call)


def _epoch(run: Run, perf: Perf) -> None:
    """Train (the rest of) one epoch, then record it and give the hooks their epoch-end turn."""
    clock = run.ctx.clock
    mark, steps_before = clock.mark(), run.step_in_epoch
    sums = _train_epoch(run)
    if sums is None:  # resumed exactly at an epoch's end
        run.epoch, run.step_in_epoch = run.epoch + 1, 0
        return
    count = sums["count"] if run.lanes[0].index is None else sums["count"][0]
    # the epoch's training seconds: compilation, hooks and evaluation are phases of their own
    timed = {"train_s": train_seconds(clock.since(mark)[1]), "steps": run.step_in_epoch - steps_before,
             "examples": int(count)}
    rates = throughput([timed])
    with clock.phase(Phase.HOOKS):  # reporting: the first MFU may measure the CPU's peak
        rates["mfu"] = perf.rates(rates["step_time_ms"])["mfu"]
        # this program's FLOPs: a search's population shrinks at its rungs, and its program too
        timed["flops"] = perf.flops * timed["steps"] if perf.flops else None
    clock.record_epoch(epoch=run.epoch + 1, **timed)
    epoch_done = run.step_in_epoch >= run.plan.steps_per_epoch
    for lane in run.lanes:
        _record_epoch(run, lane, sums, epoch_done, rates)
    finished = run.epoch + 1
    if epoch_done:
        run.epoch, run.step_in_epoch, run.epoch_sums = run.epoch + 1, 0, None
    for lane in run.lanes:  # the lane's best metrics, before any hook reads them (hooks/best.py)
        observe_best(lane.hooks, lane.history[-1], run.global_step)
    run.timeline.enter(f"the hooks at the end of epoch {finished}")
    _each_hook(run, "on_epoch_end", progress=_progress(run))


def _train_epoch(run: Run) -> dict | None:
    """The epoch's compiled calls with the hooks between them; its metric sums, read back once
    (None when nothing was left to train in it). The engine charges its work to its phases of
    the run's timeline (compiling, input, transfers, calls, device waits); the loop's own work
    between calls is `dispatch` (host work)."""
    engine, steps = run.engine, run.plan.steps_per_epoch
    sums, run.epoch_sums = run.epoch_sums, None
    with run.timeline.phase(Phase.DISPATCH):
        for call in engine.run_epoch(run.state, run.epoch, run.step_in_epoch):
            run.state, run.step_in_epoch = call.state, call.steps_done
            run.global_step = run.epoch * steps + run.step_in_epoch
            sums = call.sums if sums is None else accumulate_metrics(sums, call.sums)
            run.epoch_sums = sums
            run.timeline.enter(f"the hooks after step {run.global_step}")
            _each_hook(run, "after_call", run_call_sums=call.sums, progress=_progress(run))
            if run.stop_reason is not None:
                break
        if sums is None:
            return None
        with run.timeline.phase(Phase.METRIC_TRANSFER, f"reading epoch {run.epoch + 1}'s metrics"):
            return jax.device_get(sums)  # the epoch's one read back


def _progress(run: Run) -> dict[str, float]:
    """Examples/s and ETA for the progress bar, on the run's clock from the first call that
    returned in this segment (so compilation does not drag the rate down); {} until measurable.
    Dispatch is asynchronous, so a rate over a few calls runs ahead of the device; over an
    epoch it settles to the true one."""
    now, done = run.ctx.clock(), run.global_step
    if run.progress_from is None:
        run.progress_from = (now, done)
        return {}
    t0, s0 = run.progress_from
    if done <= s0 or now <= t0:
        return {}
    steps_per_s = (done - s0) / (now - t0)
    total = run.plan.epochs * run.plan.steps_per_epoch
    return {"rate": steps_per_s * run.plan.batch_size, "eta_s": max(total - done, 0) / steps_per_s}


def _record_epoch(run: Run, lane: Lane, sums: dict, epoch_done: bool, rates: dict) -> None:
    """A lane's epoch record (evaluated on the validation split when due), logged and kept;
    its console line with the run's ETA."""
    cfg, clock = run.cfg, run.ctx.clock
    lane_sums = {k: float(v if lane.index is None else v[lane.index]) for k, v in sums.items()}
    record = EpochRecord.from_sums(run.epoch, run.global_step, lane_sums, rates)
    with clock.phase(Phase.HOOKS):
        lane.ctx.events.write("train", **record.to_json())
    line = _epoch_label(run, epoch_done) + " " + format_metrics(
        {k: v for k, v in record.to_json().items() if k not in ("epoch", "step")})
    if run.dataset.val is not None and epoch_done and (
            (run.epoch + 1) % cfg.train.eval_every_epochs == 0 or run.epoch + 1 == cfg.train.epochs):
        record = record.with_val(_validate(run, lane))
        line += " | val " + format_metrics(record.val)
    lane.history.append(record)
    eta = _progress(run).get("eta_s")
    if eta and run.epoch + 1 < cfg.train.epochs and run.stop_reason is None:
        line += f" | ETA {duration(eta)}"
    warning = overfitting_warning(lane.history) if cfg.train.early_stopping is None else None
    prefix = f"{lane.name}: " if lane.name else ""
    with clock.phase(Phase.HOOKS):
        lane.ctx.console.line(prefix + line)
        if warning:
            lane.ctx.console.line(prefix + warning)


def _validate(run: Run, lane: Lane) -> dict:
    """The lane's metrics on the validation split, logged."""
    state = run.lane_state(lane)
    with run.timeline.phase(Phase.EVALUATION, f"evaluating the validation split after epoch {run.epoch + 1}"):
        val = run.evaluator.evaluate(eval_params(state), state.rest, run.dataset.val)
    with run.ctx.clock.phase(Phase.HOOKS):
        lane.ctx.events.write("eval", split="val", epoch=run.epoch + 1, step=run.global_step, **val)
    return val


def _epoch_label(run: Run, epoch_done: bool) -> str:
    """'epoch 3/10', or for an epoch cut short (a profile window, a stop) what part of it ran."""
    label = f"epoch {run.epoch + 1}/{run.cfg.train.epochs}"
    if epoch_done:
        return label
    return f"{run.stop_reason or 'stopped'} ({run.step_in_epoch} of {run.plan.steps_per_epoch} steps of {label})"


RISING_EVALUATIONS = 3  # validation losses in a row, each above the one before, that say "overfitting"


def overfitting_warning(history: list[EpochRecord]) -> str | None:
    """A warning when the validation loss has just risen for the RISING_EVALUATIONS-th
    evaluation in a row (once per such streak), naming train.early_stopping; else None."""
    losses = [r.val["loss"] for r in history if "loss" in r.val]
    recent = losses[-(RISING_EVALUATIONS + 1):]
    if len(recent) <= RISING_EVALUATIONS or any(b <= a for a, b in zip(recent, recent[1:])):
        return None
    if len(losses) > RISING_EVALUATIONS + 1 and losses[-RISING_EVALUATIONS - 2] < recent[0]:
        return None  # a longer streak: warned when it reached RISING_EVALUATIONS
    best = min(losses)
    return (f"warning: the validation loss has risen {RISING_EVALUATIONS} evaluations in a row "
            f"({recent[0]:.4g} -> {recent[-1]:.4g}; best {best:.4g} at epoch "
            f"{next(r.epoch for r in history if r.val.get('loss') == best)}): the model is "
            f"overfitting; set train.early_stopping (e.g. --set train.early_stopping.patience=5) to stop "
            f"there and keep the best epoch's parameters")


def _test(run: Run, lane: Lane) -> dict:
    """The lane's final metrics on the test split ({} when there is none)."""
    dataset = run.dataset
    if dataset.test is None or not len(dataset.test):  # data.test_fraction: 0 means no test split
        return {}
    if not lane.cfg.train.evaluate_test:  # a search trial: chosen on validation, test left alone
        return {}
    state = run.lane_state(lane)
    with run.timeline.phase(Phase.EVALUATION, "evaluating the test split"):
        test = run.evaluator.evaluate(eval_params(state), state.rest, dataset.test)
    with run.ctx.clock.phase(Phase.HOOKS):
        lane.ctx.events.write("eval", split="test", epoch=run.epoch, step=run.global_step, **test)
        lane.ctx.console.line((f"{lane.name}: " if lane.name else "") + "test " + format_metrics(test))
    return test


def _profile(run: Run, perf: Perf) -> dict:
    """What the profiling hook needs of the run besides its clock: `perf` for TFLOP/s and MFU;
    `precision` and `platform` to decide whether to advise bf16; how K was chosen (auto)."""
    return {"perf": perf, "precision": run.cfg.train.precision, "platform": run.mesh.devices.flat[0].platform,
            "steps_per_call_measured_ms": {str(k): t * 1e3 for k, t in run.engine.k_timings.items()}}
