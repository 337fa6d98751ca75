"""Files jaxtrain writes outside the hot loop: atomic writes, and its per-user cache folder."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path`: a reader
    (or a run killed mid-write) never sees half a file."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    """`obj` as JSON, atomically (numbers NumPy or JAX gave are written as floats)."""
    write_text_atomic(path, json.dumps(obj, indent=indent, default=float) + "\n")


def user_cache_dir() -> Path:
    """jaxtrain's folder in the user's cache (XDG_CACHE_HOME, else ~/.cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "jaxtrain"
