"""The one error type users see.

Every problem a user can fix (a bad flag, a missing file, a corrupt checkpoint) is raised as a
`PtbjobsError` carrying a one-line message and, where there is one, a hint saying what to do. The
CLI prints exactly that and exits non-zero; the traceback is shown only with PTBJOBS_DEBUG=1.
"""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text (torch's often run over many), or its type's name."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class PtbjobsError(Exception):
    """A problem the user can act on. `exit_code` 2 means bad input, 1 a failure at run time."""

    exit_code = 1
    is_error = True  # False for an expected stop, which the CLI reports without "error:"

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(PtbjobsError):
    """A configuration value is wrong. `field` names the config field, so that the CLI can say
    which flag (`--lr`) or file key (`lr`) it came from."""

    exit_code = 2

    def __init__(self, field: str | None, message: str, hint: str | None = None):
        super().__init__(message, hint)
        self.field = field

    def __str__(self) -> str:
        text = super().__str__()
        return f"{self.field}: {text}" if self.field else text


class DataError(PtbjobsError):
    """The PTB files are missing, corrupt, or not what a word-level corpus should be."""

    exit_code = 2


class CheckpointError(PtbjobsError):
    """No usable checkpoint could be read."""


class DivergedError(PtbjobsError):
    """The training loss became NaN or infinite."""

    exit_code = 3
