"""User-facing errors.

A `UserError` is a mistake the user can fix (bad config, bad data, bad path).
The CLI prints its message as one line and exits with status 2; anything else
is a bug in jaxtrain and keeps its traceback.

A message that names an argument holds it as an `Arg` (its Python name, and the value to
pass), not as words: each front end renders it in its own terms. `str(error)` is the Python
API's (`workdir=`, `overrides={'k': v}`, `jaxtrain.resume(...)`); `error.cli` is the command
line's (`--workdir`, `--set k=v`, `--resume`), which the CLI prints. One message, two
front ends, and a new argument is one more row of `_CLI`/`_PYTHON`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any


def _python_value(text: str) -> str:
    """A --set value as Python source: numbers, booleans, null, lists and placeholders (N, DIR)
    bare, anything else quoted."""
    bare = re.fullmatch(r"-?[\d.]+(e-?\d+)?|true|false|null|[A-Z]+|\[.*\]", str(text))
    return str(text) if bare else repr(str(text))


@dataclasses.dataclass(frozen=True)
class Arg:
    """An argument an error message names: `name` is the Python API's parameter, `value` what to
    pass as the command line writes it ('val'; for `overrides`, {'section.key': 'text'})."""
    name: str
    value: Any = None

    def render(self, surface: str) -> str:
        special = (_CLI if surface == "cli" else _PYTHON).get(self.name)
        if special is not None:
            return special(self.value)
        if surface == "cli":
            return f"--{self.name}" + ("" if self.value is None else f" {self.value}")
        return f"{self.name}=" + ("" if self.value is None else str(self.value))


# How each front end says the arguments that are not `--name value` / `name=value`.
_CLI = {"config": lambda _: "the CONFIG argument",
        "overrides": lambda v: " ".join(f"--set {k}={x}" for k, x in v.items()) if v else "--set"}
_PYTHON = {"config": lambda _: "the config argument",
           "resume": lambda _: "jaxtrain.resume(...)",
           "split": lambda v: "split=" if v is None else f"split={v!r}",
           "overrides": lambda v: ("overrides={" + ", ".join(f"'{k}': {_python_value(x)}" for k, x in v.items())
                                   + "}") if v else "overrides="}


def render(parts: tuple, surface: str) -> str:
    """Text and Args as one message, in `surface`'s terms ('cli' or 'python')."""
    return "".join(p.render(surface) if isinstance(p, Arg) else str(p) for p in parts)


def either(args) -> tuple:
    """Args as alternatives for a message: (a, ' or ', b, ...)."""
    out: list = []
    for arg in args:
        out += [" or ", arg] if out else [arg]
    return tuple(out)


def clip_words(text: str, limit: int = 240) -> str:
    """The first line of `text`, cut at a word boundary with "..." when longer than `limit`
    (a message cut mid-word, `... Parquet ma`, reads as garbage)."""
    line = (text.splitlines() or [""])[0].strip()
    if len(line) <= limit:
        return line
    cut = line[:limit].rsplit(" ", 1)[0].rstrip(" ,;:")
    return f"{cut} ..."


class UserError(Exception):
    """A problem with the user's input, reported as one line and exit status 2. Built from text
    and `Arg`s: `UserError("pass another ", Arg("workdir"))`."""

    def __init__(self, *parts: Any):
        self.parts = parts
        super().__init__(render(parts, "python"))

    @property
    def cli(self) -> str:
        """The message in the command line's terms."""
        return render(self.parts, "cli")


class ConfigError(UserError):
    """The config is invalid: unknown key, wrong type or out-of-range value."""


class DataError(UserError):
    """The data cannot be read or does not fit the config."""


class NonFiniteError(Exception):
    """Training produced a non-finite loss or gradient (exit status 3, not 2: not a typo)."""


class Preempted(Exception):
    """Training stopped on SIGTERM/SIGINT after saving a checkpoint (exit status 128 + signum)."""

    def __init__(self, signum: int, step: int):
        import signal
        self.signum, self.step = signum, step
        self.parts = (f"stopped by {signal.Signals(signum).name} at step {step}; a checkpoint was saved, "
                      f"continue with ", Arg("resume"))
        super().__init__(render(self.parts, "python"))

    @property
    def cli(self) -> str:
        return render(self.parts, "cli")


# What must happen before a process that reported an error exits normally (a multi-process
# run's process leaves at once instead: parallel/distributed.py registers that when it joins).
_LEAVE_AT_ONCE: list = []


def on_error_leave(leave) -> None:
    """Register `leave(status)`, called by `leave_after_error` (once per function)."""
    if leave not in _LEAVE_AT_ONCE:
        _LEAVE_AT_ONCE.append(leave)


def leave_after_error(status: int) -> None:
    """After a front end reported an error: run what registered (it may end the process)."""
    for leave in _LEAVE_AT_ONCE:
        leave(status)


def check_key(cond: bool, key: str, msg: str) -> None:
    """Raise a ConfigError naming config key `key` unless `cond` holds."""
    if not cond:
        raise ConfigError(f"config key '{key}': {msg}")
