"""User-facing errors.

A `UserError` is a mistake the user can fix (bad config, bad data, bad path).
The CLI prints its message as one line and exits with status 2; anything else
is a bug in jaxtrain and keeps its traceback.

Messages are written as the command line says them (`--workdir`, `--set k=v`). The
Python API's entry points (`@python_api`) rephrase an error that leaves them in
Python's terms (`workdir=`, `overrides={'k': v}`, `jaxtrain.resume(...)`) and keep the
command line's phrasing in `.cli`, which the CLI prints: one message, two front ends.
"""

import functools
import re


class UserError(Exception):
    """A problem with the user's input, reported as one line and exit status 2."""
    cli: str | None = None  # the command line's phrasing, once the Python API rephrased the message


class ConfigError(UserError):
    """The config is invalid: unknown key, wrong type or out-of-range value."""


class DataError(UserError):
    """The data cannot be read or does not fit the config."""


class NonFiniteError(Exception):
    """Training produced a non-finite loss or gradient (exit status 3, not 2: not a typo)."""


class Preempted(Exception):
    """Training stopped on SIGTERM/SIGINT after saving a checkpoint (exit status 128 + signum)."""

    cli: str | None = None  # as UserError.cli

    def __init__(self, signum: int, step: int):
        import signal
        self.signum, self.step = signum, step
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; "
                         f"a checkpoint was saved, continue with --resume")


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


def _overrides(match: re.Match) -> str:
    """'--set a=1 --set b=x' -> "overrides={'a': 1, 'b': 'x'}" (placeholders like N stay bare)."""
    pairs = re.findall(r"--set ([\w.]+)=(\S+)", match.group(0))

    def value(v: str) -> str:
        bare = re.fullmatch(r"-?[\d.]+(e-?\d+)?|true|false|null|[A-Z]+|\[.*\]", v)
        return v if bare else repr(v)
    return "overrides={" + ", ".join(f"'{k}': {value(v)}" for k, v in pairs) + "}"


# The command line's words for an argument -> the Python API's, most specific first.
_PYTHON_TERMS = [(re.compile(r"--set [\w.]+=\S+(?: --set [\w.]+=\S+)*"), _overrides),
                 (re.compile(r"--set\b"), "overrides="),
                 (re.compile(r"--resume DIR|--resume\b"), "jaxtrain.resume(...)"),
                 (re.compile(r"--workdir\b"), "workdir="),
                 (re.compile(r"--split (\w+)"), r"split='\1'"),
                 (re.compile(r"--grid\b"), "grid="),
                 (re.compile(r"--(trials|population|sampler|storage|study|space)\b ?"), r"\1="),
                 (re.compile(r"the CONFIG argument"), "the config argument")]


def python_phrasing(message: str) -> str:
    """A message written for the command line, in the Python API's terms."""
    for pattern, replacement in _PYTHON_TERMS:
        message = pattern.sub(replacement, message)
    return message


def python_api(fn):
    """Mark a Python API entry point (train, resume, evaluate, run_sweep, search): the
    UserError or Preempted it raises names Python arguments; `.cli` keeps the flags."""
    @functools.wraps(fn)
    def entry(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (UserError, Preempted) as e:
            if getattr(e, "cli", None) is None and e.args:  # an inner entry point rephrased it already
                e.cli = str(e)
                e.args = (python_phrasing(e.cli), *e.args[1:])
            raise
    return entry
