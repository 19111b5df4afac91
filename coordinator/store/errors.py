"""The coordinator's own error for the results store (the coordinator may not import site_agent.errors)."""

from __future__ import annotations


class StoreError(RuntimeError):
    """The results store cannot be opened, or a write would break its rules; ``str`` is one line."""

    exit_code = 9
