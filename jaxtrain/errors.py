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
    """Training produced a non-finite loss or gradient (exit status 1, not 2)."""
