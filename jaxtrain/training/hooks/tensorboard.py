"""TensorBoard logging as a Hook: per-epoch train and validation scalars at the global step.

On with `logging.tensorboard: true`; event files go to `WORKDIR/tensorboard/`
(`tensorboard --logdir WORKDIR/tensorboard`). Written by tensorboardX, so
TensorFlow is not needed.
"""

from __future__ import annotations

from pathlib import Path

from jaxtrain.config.schema import Config
from jaxtrain.util.events import TensorBoardWriter
from jaxtrain.training.loop import Hook, Run

SKIP = ("epoch", "step", "val")


class TensorBoardHook(Hook):
    def __init__(self, logdir: Path):
        self.logdir = Path(logdir)
        self.writer: TensorBoardWriter | None = None

    def on_train_start(self, run: Run) -> None:
        self.writer = TensorBoardWriter(self.logdir)

    def on_epoch_end(self, run: Run, record: dict) -> None:
        if self.writer is None:
            return
        self.writer.scalars("train", {k: v for k, v in record.items() if k not in SKIP}, run.global_step)
        if record.get("val"):
            self.writer.scalars("val", record["val"], run.global_step)

    def on_train_end(self, run: Run) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def logging_hooks(cfg: Config, workdir: Path | None) -> list[Hook]:
    """The hooks `logging.*` asks for."""
    if cfg.logging.tensorboard and workdir is not None:
        return [TensorBoardHook(Path(workdir) / "tensorboard")]
    return []
