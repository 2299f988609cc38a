"""Errors caused by input a person can fix (paths, files, sizes, checkpoints).

The entry points print these as one message, without a traceback.
"""


class UserError(Exception):
    """Input that is missing or wrong; the message says what was found and what was expected."""


class OutputExistsError(UserError, FileExistsError):
    """An output that already exists and would be overwritten."""


class MetricInputError(UserError, ValueError):
    """Input a metric cannot score; the message says what was found and what was expected."""
