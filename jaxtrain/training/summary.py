"""What a fit reports: the summary of a run (one per lane; each epoch's record is record.py's)."""

from __future__ import annotations

from jaxtrain.model.kernels import resolve_conv_impl
from jaxtrain.training.accounting import Perf, steady_epochs, throughput
from jaxtrain.training.record import EpochRecord
from jaxtrain.training.run import Lane, Run


def model_section(cfg, platform: str) -> dict:
    """The model's name and, for the CNN, the convolution it computes with (model/kernels.py)."""
    section = {"name": cfg.model.name}
    if cfg.model.name == "cnn":
        section["conv_impl"] = resolve_conv_impl(cfg.model.conv_impl, platform)
    return section


def run_summary(run: Run, lane: Lane, devices: dict, test: dict, perf: Perf) -> dict:
    """A lane's summary. Its `time` section is added when it is written (runs/finish.py:finish_summary),
    so that it covers the test evaluation too."""
    cfg, plan, dataset, engine = lane.cfg, run.plan, run.dataset, run.engine
    last = lane.history[-1] if lane.history else EpochRecord(epoch=0)
    execution = {"on_device_data": plan.on_device, "steps_per_epoch": plan.steps_per_epoch,
                 "steps_per_call": engine.k,
                 "steps_per_call_measured_ms": {str(k): t * 1e3 for k, t in engine.k_timings.items()},
                 "precision": cfg.train.precision, "recompiles": engine.recompiles}
    if plan.points:
        execution["vectorized_points"] = plan.points
    # every epoch trained, in every segment of the run, after each segment's first
    steady = steady_epochs(run.ctx.clock.epoch_throughput)
    return {
        "config_name": cfg.name,
        "task": dataset.task,
        "model": model_section(cfg, devices["platform"]),
        "test": test,
        "val": dict(last.val),
        "train": {"examples_per_sec": throughput(steady)["examples_per_sec"],
                  "loss": last.loss, "epochs": run.epoch, "steps": run.global_step,
                  **({"accuracy": last.accuracy} if last.accuracy is not None else {})},
        # a vectorized step trains every point's batch: FLOPs per example count them all
        "perf": perf.section(steady, plan.batch_size * (plan.points or 1), engine.k),
        "devices": devices,
        "batch": {"global": plan.batch_size, "per_device": plan.per_device_batch,
                  "grad_accum_steps": plan.microbatches},
        "parallel": {"strategy": cfg.parallel.strategy, "mesh": dict(run.mesh.shape)},
        # Which parameters the val/test metrics (and the best checkpoint) describe.
        "evaluation": {"params": "ema" if cfg.train.ema_decay is not None else "trained",
                       "ema_decay": cfg.train.ema_decay},
        "execution": execution,
        "data": {"train": plan.n_train, "val": len(dataset.val) if dataset.val else 0,
                 "test": len(dataset.test)},
        "stopped_early": run.stop_reason,
        **lane.extra,
    }
