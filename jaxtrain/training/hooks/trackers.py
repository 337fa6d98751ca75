"""Experiment trackers as a Hook: `logging.mlflow: true`, `logging.wandb: true`.

The tracker's run opens when training starts (a failure there is one line, exit 2); then
every call goes through a queue to one background thread, so a slow tracker server never
holds up the training loop: the loop only enqueues each epoch's record. What is logged:
the config as flat params (`optimizer.learning_rate`), per epoch `train/<metric>` and
`val/<metric>` at the global step (the values metrics.jsonl holds), and at the end the
summary's numbers (`test/accuracy`, `time/total_s`, ...) with the report's files (`finish`,
after summary.json is written). Only process 0 gets these hooks (`build_hooks`).
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any, Callable

from jaxtrain.training.record import EpochRecord
from jaxtrain.config.schema import Config, to_dict
from jaxtrain.training.hooks.protocol import Hook, StepInfo
from jaxtrain.util.errors import UserError
from jaxtrain.util.optional import require_installed
from jaxtrain.util.tracker_writers import MlflowWriter, WandbWriter


def flatten(tree: dict, sep: str, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flatten(value, sep, name))
        else:
            out[name] = value
    return out


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def epoch_metrics(record: EpochRecord) -> dict[str, float]:
    """An epoch's record as tracker metrics: train/<metric> and val/<metric>."""
    train = {f"train/{k}": v for k, v in record.to_json(with_val=False).items() if k not in ("epoch", "step")}
    return _numbers({**train, **{f"val/{k}": v for k, v in record.val.items()}})


class TrackerHook(Hook):
    def __init__(self, make_writer: Callable[[], Any], params: dict[str, Any]):
        self.make_writer, self.params = make_writer, params
        self.writer = None
        self.queue: queue.Queue = queue.Queue()
        self.thread: threading.Thread | None = None
        self.error: Exception | None = None
        self.console = None

    def on_train_start(self, info: StepInfo) -> None:
        self.console = info.ctx.console
        try:
            self.writer = self.make_writer()
            self.writer.start(self.params)
        except Exception as e:
            name = getattr(self.writer, "name", "tracker")
            raise UserError(f"config key 'logging.{name}': starting the tracker failed: "
                            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        self.console.line(self.writer.where())
        self.thread = threading.Thread(target=self._work, name=f"jaxtrain-{self.writer.name}", daemon=True)
        self.thread.start()

    def on_epoch_end(self, info: StepInfo) -> None:
        self.queue.put(("metrics", epoch_metrics(info.record), info.step))

    def finish(self, summary: dict, files: list[Path]) -> None:
        """The run's summary numbers and files (summary.json, the report's PNGs), at the end."""
        self.queue.put(("summary", _numbers(flatten(summary, "/"))))
        self.queue.put(("files", [Path(f) for f in files]))
        self._stop(completed=True)

    def _work(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is None:
                try:
                    getattr(self.writer, item[0])(*item[1:])
                except Exception as e:  # the tracker stops; training goes on
                    self.error = e

    def close(self) -> None:
        """Training failed (after `finish`, nothing is left to do): the tracker's run ends as such."""
        self._stop(completed=False)

    def _stop(self, completed: bool) -> None:
        if self.thread is None:
            return
        self.queue.put(None)
        self.thread.join()
        self.thread = None
        try:
            self.writer.close(completed and self.error is None)
        except Exception as e:
            self.error = self.error or e
        if self.error is not None and self.console is not None:
            self.console.line(f"{self.writer.name}: logging stopped: {type(self.error).__name__}: {self.error}")


def tracker_hooks(cfg: Config, workdir: Path) -> list[TrackerHook]:
    """The trackers `logging.mlflow` / `logging.wandb` ask for."""
    params = flatten(to_dict(cfg), ".")
    run_name = Path(workdir).resolve().name
    hooks = []
    if cfg.logging.mlflow:
        for module in ("mlflow", "sqlalchemy", "alembic"):  # the last two: MLflow's default SQLite store
            require_installed(module, "mlflow", "config key 'logging.mlflow' (or set it to false)")
        hooks.append(TrackerHook(lambda: MlflowWriter(cfg.name, run_name), params))
    if cfg.logging.wandb:
        require_installed("wandb", "wandb", "config key 'logging.wandb' (or set it to false)")
        hooks.append(TrackerHook(lambda: WandbWriter(cfg.name, run_name, Path(workdir)), params))
    return hooks
