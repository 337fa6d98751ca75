"""Where run events go: `metrics.jsonl` (always), the console, a progress bar with examples/s
and ETA on a terminal, TensorBoard event files (`logging.tensorboard: true`)."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from jaxtrain.util.errors import UserError
from jaxtrain.util.optional import require


def check_verbose(verbose: int) -> int:
    """A Python caller's `verbose` for a Console, refused unless 0, 1 or 2."""
    if verbose not in (0, 1, 2):
        raise UserError(f"verbose={verbose!r}: pass 0 (silent), 1 (a line per epoch) or 2 (progress too)")
    return verbose


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


def silence_closed_stream(stream: TextIO) -> None:
    """The stream's reader went away (`jaxtrain train | head -2`): point its file at os.devnull,
    as the Python docs advise for a closed pipe, so later writes and the flush at exit succeed
    and print nothing. A stream without a file (a StringIO) is left as it is."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def write_out(text: str, stream: TextIO | None = None) -> bool:
    """Write `text` and flush; False, the stream silenced, when its reader has gone."""
    stream = stream or sys.stdout
    try:
        stream.write(text)
        stream.flush()
    except BrokenPipeError:
        silence_closed_stream(stream)
        return False
    return True


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
    bar, plain (a progress line at most every `plain_every_s` within an epoch), none.
    `verbose` (the Python API's, as Keras' `fit` has it): 0 prints nothing, 1 the lines
    (epochs, results) without progress, 2 both."""

    def __init__(self, mode: str = "auto", stream: TextIO | None = None, plain_every_s: float = 10.0,
                 clock=time.monotonic, verbose: int = 2):
        self.stream = stream or sys.stdout
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "plain"
        self.mode = "none" if verbose < 1 else mode
        self.show_progress = verbose >= 2 and self.mode in ("plain", "bar")
        self._bar_open = False
        self.plain_every_s, self.clock = plain_every_s, clock
        self.last_output = clock()  # when anything was last printed (a heartbeat fills the silences)
        self._last: tuple | None = None  # the latest progress: (label, done, total, rate, eta_s, at)
        self._lock = threading.Lock()  # a Heartbeat prints from its own thread

    def line(self, text: str) -> None:
        if self.mode == "none":
            return
        with self._lock:
            self._end_bar()
            self._emit(text + "\n")
            self.last_output = self.clock()

    def progress(self, label: str, done: int, total: int, rate: float | None = None,
                 eta_s: float | None = None) -> None:
        if not self.show_progress:
            return
        with self._lock:
            self._last = (label, done, total, rate, eta_s, self.clock())
            if self.mode == "plain" and done < total and self.clock() - self.last_output >= self.plain_every_s:
                self._print_plain(label, done, total, _extra(rate, eta_s))
            if self.mode == "bar":
                self._draw_bar(label, done, total, _extra(rate, eta_s))

    def beat(self, elapsed_s: float) -> None:
        """The latest progress again, with the time elapsed and the ETA counted down since: a
        plain line, or the bar redrawn (a Heartbeat calls this when nothing was printed for a while)."""
        with self._lock:
            label, done, total, rate, eta_s, at = self._last or ("training", 0, 0, None, None, self.clock())
            if eta_s is not None:
                eta_s = max(eta_s - (self.clock() - at), 0.0)
            extra = f", {duration(elapsed_s)} elapsed" + _extra(None, eta_s)
            if self.mode == "plain":
                self._print_plain(label, done, total, extra)
            elif self.mode == "bar":
                self._draw_bar(label, done, total, extra)
            self.last_output = self.clock()

    def _print_plain(self, label: str, done: int, total: int, extra: str) -> None:
        steps = f"{done}/{total} steps" if total else "starting"
        self._emit(f"{label}: {steps}{extra}\n")
        self.last_output = self.clock()

    def _draw_bar(self, label: str, done: int, total: int, extra: str) -> None:
        width = 30
        filled = int(width * done / max(total, 1))
        self._bar_open = True
        self._emit(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}{extra}\x1b[K")

    def _end_bar(self) -> None:
        if self._bar_open:
            self._bar_open = False
            self._emit("\n")

    def _emit(self, text: str) -> None:
        """Every console write goes through here. When the reader has gone (a closed pipe) the
        console goes quiet for good and the run goes on (README: What a run writes)."""
        if not write_out(text, self.stream):
            self.mode, self.show_progress, self._bar_open = "none", False, False


def _extra(rate: float | None, eta_s: float | None) -> str:
    return (f" {human(rate)} ex/s" if rate else "") + (f" ETA {duration(eta_s)}" if eta_s is not None else "")


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
