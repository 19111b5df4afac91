"""Pathology errors (one line for the user, OptimaError exit codes)."""

from site_agent.errors import OptimaError


class PathologyDataError(OptimaError, ValueError):
    """A slide, annotation file or slide table cannot be read or makes no sense."""

    exit_code = 7
