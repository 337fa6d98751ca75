"""TensorBoard logging as a Hook: per-epoch train and validation scalars at the global step.

On with `logging.tensorboard: true`; event files go to `WORKDIR/tensorboard/`
(`tensorboard --logdir WORKDIR/tensorboard`). Written by tensorboardX, so
TensorFlow is not needed.
"""

from __future__ import annotations

from pathlib import Path

from jaxtrain.training.hooks.protocol import Hook, StepInfo
from jaxtrain.util.events import TensorBoardWriter

SKIP = ("epoch", "step", "val")


class TensorBoardHook(Hook):
    def __init__(self, logdir: Path):
        self.logdir = Path(logdir)
        self.writer: TensorBoardWriter | None = None

    def on_train_start(self, info: StepInfo) -> None:
        self.writer = TensorBoardWriter(self.logdir)

    def on_epoch_end(self, info: StepInfo) -> None:
        if self.writer is None:
            return
        record = info.record
        self.writer.scalars("train", {k: v for k, v in record.to_json(with_val=False).items() if k not in SKIP},
                            info.step)
        if record.val:
            self.writer.scalars("val", record.val, info.step)

    def on_train_end(self, info: StepInfo) -> None:
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
