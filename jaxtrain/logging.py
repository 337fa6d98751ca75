"""Where run events go: `metrics.jsonl` (always), the console, a progress bar on a terminal."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class JsonlWriter:
    """Appends one JSON object per event; flushed so a killed run keeps what it logged."""

    def __init__(self, path: Path | None):
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
    bar, plain, none."""

    def __init__(self, mode: str = "auto", stream: TextIO | None = None):
        self.stream = stream or sys.stdout
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "plain"
        self.mode = mode
        self._bar_open = False

    def line(self, text: str) -> None:
        if self.mode == "none":
            return
        self._end_bar()
        print(text, file=self.stream, flush=True)

    def progress(self, label: str, done: int, total: int, rate: float | None = None,
                 eta_s: float | None = None) -> None:
        if self.mode != "bar":
            return
        width = 30
        filled = int(width * done / max(total, 1))
        extra = f" {rate:,.0f} ex/s" if rate else ""
        extra += f" ETA {eta_s:.0f}s" if eta_s is not None else ""
        self.stream.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}{extra}")
        self.stream.flush()
        self._bar_open = True

    def _end_bar(self) -> None:
        if self._bar_open:
            self.stream.write("\n")
            self._bar_open = False


def format_metrics(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
