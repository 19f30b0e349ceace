"""Errors that are the user's to fix: commands print their message in one line, no traceback.

Everything else is a bug and keeps its traceback. `LM_DEBUG=1` shows tracebacks for these too.
"""


class UserError(ValueError):
    """Bad input (a config, data, checkpoint or command line): the message names the problem
    and the fix."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or directory the user named (or a run needs) does not exist."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM before a run's loop began: nothing to save; the command ends with
    128 + the signal's number (130, 143) and this one-line message."""

    def __init__(self, message: str, exit_status: int):
        super().__init__(message)
        self.exit_status = exit_status
