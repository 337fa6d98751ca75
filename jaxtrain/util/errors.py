"""User-facing errors.

A `UserError` is a mistake the user can fix (bad config, bad data, bad path).
The CLI prints its message as one line and exits with status 2; anything else
is a bug in jaxtrain and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input, reported as one line and exit status 2."""


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
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; "
                         f"a checkpoint was saved, continue with --resume")


def check_key(cond: bool, key: str, msg: str) -> None:
    """Raise a ConfigError naming config key `key` unless `cond` holds."""
    if not cond:
        raise ConfigError(f"config key '{key}': {msg}")
