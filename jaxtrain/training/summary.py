"""What a fit reports: each epoch's record, and the summary of a run (one per lane)."""

from __future__ import annotations

import dataclasses

from jaxtrain.model.kernels import resolve_conv_impl
from jaxtrain.parallel import placement
from jaxtrain.training.run import Lane, Run


def epoch_record(epoch: int, step: int, sums: dict, elapsed: float) -> dict:
    record = {"epoch": epoch + 1, "step": step, "loss": sums["loss_sum"] / max(sums["count"], 1.0),
              "examples_per_sec": sums["count"] / max(elapsed, 1e-9)}
    if "correct" in sums:
        record["accuracy"] = sums["correct"] / max(sums["count"], 1.0)
    if sums["nonfinite"]:
        record["nonfinite_steps"] = int(sums["nonfinite"])
    return record


@dataclasses.dataclass
class Steady:
    """Training time and examples of the epochs after the first one timed (caches warm),
    or of the only epoch."""
    first_epoch: int
    epochs: int
    seconds: float = 0.0
    examples: int = 0

    def add(self, epoch: int, seconds: float, examples: int) -> None:
        if epoch > self.first_epoch or self.epochs - self.first_epoch == 1:
            self.seconds += seconds
            self.examples += examples

    @property
    def examples_per_sec(self) -> float | None:
        return self.examples / self.seconds if self.seconds else None


def model_section(cfg, platform: str) -> dict:
    """The model's name and, for the CNN, the convolution it computes with (model/kernels.py)."""
    section = {"name": cfg.model.name}
    if cfg.model.name == "cnn":
        section["conv_impl"] = resolve_conv_impl(cfg.model.conv_impl, platform)
    return section


def run_summary(run: Run, lane: Lane, devices: dict, test: dict, steady: Steady, fit_s: float,
                perf: dict) -> dict:
    cfg, dataset, engine = lane.cfg, run.dataset, run.engine
    last = lane.history[-1] if lane.history else {}
    execution = {"on_device_data": engine.on_device, "steps_per_call": engine.k,
                 "steps_per_call_measured_ms": {str(k): t * 1e3 for k, t in engine.k_timings.items()},
                 "precision": cfg.train.precision, "recompiles": engine.recompiles}
    if engine.points:
        execution["vectorized_points"] = engine.points
    return {
        "config_name": cfg.name,
        "task": dataset.task,
        "model": model_section(cfg, devices["platform"]),
        "test": test,
        "val": last.get("val", {}),
        "train": {"examples_per_sec": steady.examples_per_sec,
                  "loss": last.get("loss"), "epochs": run.epoch, "steps": run.global_step,
                  **({"accuracy": last["accuracy"]} if "accuracy" in last else {})},
        "time": {"compile_s": engine.compile_s, "fit_s": fit_s},
        "perf": perf,
        "devices": devices,
        "batch": {"global": cfg.data.batch_size,
                  "per_device": cfg.data.batch_size // placement.batch_shards(run.mesh),
                  "grad_accum_steps": cfg.train.grad_accum_steps},
        "parallel": {"strategy": cfg.parallel.strategy, "mesh": dict(run.mesh.shape)},
        # Which parameters the val/test metrics (and the best checkpoint) describe.
        "evaluation": {"params": "ema" if cfg.train.ema_decay is not None else "trained",
                       "ema_decay": cfg.train.ema_decay},
        "execution": execution,
        "data": {"train": engine.n_train, "val": len(dataset.val) if dataset.val else 0,
                 "test": len(dataset.test)},
        "stopped_early": run.stop_reason,
        **lane.extra,
    }
