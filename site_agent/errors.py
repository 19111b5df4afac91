"""Errors that reach the user as one line and a non-zero exit code.

Each error also subclasses the closest built-in (ibis style), so library callers
can catch ``ValueError``/``ConnectionError``/``LookupError`` without knowing ours.
"""

from __future__ import annotations


class OptimaError(Exception):
    """Base class: ``str(err)`` is the one line shown to the user."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(message)

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(OptimaError, ValueError):
    """Bad option or setting given by the user."""

    exit_code = 2


class CdmConnectionError(OptimaError, ConnectionError):
    """The CDM database cannot be reached or opened."""

    exit_code = 3


class CdmValidationError(OptimaError, LookupError):
    """The CDM lacks a required table or column."""

    exit_code = 4


class CohortDefinitionError(OptimaError, ValueError):
    """A cohort definition file cannot be read, parsed or translated."""

    exit_code = 5


class CohortBuildError(OptimaError, RuntimeError):
    """Running a cohort's SQL on the CDM failed; nothing was written."""

    exit_code = 6


def validation_summary(exc) -> str:
    """One line from a pydantic ValidationError: ``field.path: message (+N more)``."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {msg}{more}".replace("\n", " ")
