"""Errors caused by input a person can fix (paths, files, sizes, checkpoints).

The entry points print these as one message, without a traceback.
"""


class UserError(Exception):
    """Input that is missing or wrong; the message says what was found and what was expected."""


class OutputExistsError(UserError, FileExistsError):
    """An output that already exists and would be overwritten."""


class MetricInputError(UserError, ValueError):
    """Input a metric cannot score; the message says what was found and what was expected."""


class Interrupted(Exception):
    """A run stopped on request (a signal) after saving what it needs to continue.

    Not a mistake in the input: the entry points print the message (which says how to
    continue) and exit with ``exit_code`` (128 + the signal's number, as a shell reports a
    process ended by that signal: 143 for SIGTERM, 130 for SIGINT).
    """

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
