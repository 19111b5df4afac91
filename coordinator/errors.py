"""Errors the coordinator's commands turn into one line and an exit code."""

from __future__ import annotations


class CoordinatorError(Exception):
    """A user-fixable problem: bad input, missing file, a study that cannot complete."""

    exit_code = 2


class StudyIncomplete(CoordinatorError):
    """Fewer sites answered than the study's minimum."""

    exit_code = 3


class NetworkError(CoordinatorError):
    """The local Flower network could not be started or stopped cleanly."""

    exit_code = 4
