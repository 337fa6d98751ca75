"""Where run events go: `metrics.jsonl` (always), the console, a progress bar with examples/s
and ETA on a terminal, TensorBoard event files (`logging.tensorboard: true`)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from jaxtrain.util.optional import require


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _drop_torn_line(path: Path) -> None:
    """A run killed mid-write can leave half a line; a resumed run appends after the last whole one."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


class JsonlWriter:
    """Appends one JSON object per event; flushed so a killed run keeps what it logged."""

    def __init__(self, path: Path | None):
        if path is not None:
            _drop_torn_line(Path(path))
        self._file = open(path, "a") if path is not None else None

    def write(self, event: str, **fields: Any) -> None:
        if self._file is None:
            return
        record = {"event": event, "time": round(time.time(), 3), **_plain(fields)}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class Console:
    """Human-readable progress. `mode`: auto (bar on a terminal, plain lines otherwise),
    bar, plain (a progress line at most every `plain_every_s` within an epoch), none."""

    def __init__(self, mode: str = "auto", stream: TextIO | None = None, plain_every_s: float = 10.0,
                 clock=time.monotonic):
        self.stream = stream or sys.stdout
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "plain"
        self.mode = mode
        self._bar_open = False
        self.plain_every_s, self.clock = plain_every_s, clock
        self._last_plain = clock()

    def line(self, text: str) -> None:
        if self.mode == "none":
            return
        self._end_bar()
        print(text, file=self.stream, flush=True)

    def progress(self, label: str, done: int, total: int, rate: float | None = None,
                 eta_s: float | None = None) -> None:
        extra = f" {human(rate)} ex/s" if rate else ""
        extra += f" ETA {duration(eta_s)}" if eta_s is not None else ""
        if self.mode == "plain" and done < total and self.clock() - self._last_plain >= self.plain_every_s:
            self._last_plain = self.clock()
            print(f"{label}: {done}/{total} steps{extra}", file=self.stream, flush=True)
        if self.mode != "bar":
            return
        width = 30
        filled = int(width * done / max(total, 1))
        self.stream.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}{extra}")
        self.stream.flush()
        self._bar_open = True

    def _end_bar(self) -> None:
        if self._bar_open:
            self.stream.write("\n")
            self._bar_open = False


class TensorBoardWriter:
    """Scalars as TensorBoard event files, via tensorboardX (no TensorFlow needed)."""

    def __init__(self, logdir: Path):
        tensorboardx = require("tensorboardX", "tensorboard", "logging.tensorboard=true")
        self._writer = tensorboardx.SummaryWriter(str(logdir))

    def scalars(self, prefix: str, values: dict[str, Any], step: int) -> None:
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(f"{prefix}/{key}", value, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def human(value: float) -> str:
    """A rate as people read it: 154123.0 -> '154k', 1.2e6 -> '1.2M'."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def duration(seconds: float) -> str:
    """'45s', '3m05s', '2h10m'."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_metrics(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={human(v)}" if k.endswith("per_sec") and isinstance(v, (int, float))
                    else f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
