"""The coordinator's results store: SQLAlchemy Core tables, alembic migrations, one repository."""

from coordinator.store.errors import StoreError
from coordinator.store.repository import (
    FINAL_STATUSES,
    STATUSES,
    ManifestRow,
    ResultsStore,
    SiteStatus,
    StatusEvent,
)

__all__ = ["FINAL_STATUSES", "STATUSES", "ManifestRow", "ResultsStore", "SiteStatus", "StatusEvent", "StoreError"]
