"""The coordinator's results store: SQLAlchemy Core tables, alembic migrations, one repository."""

from coordinator.store.repository import (
    FINAL_STATUSES,
    STATUSES,
    ManifestRow,
    ResultsStore,
    SiteStatus,
    StatusEvent,
)
from optima_common.errors import StoreError

__all__ = ["FINAL_STATUSES", "STATUSES", "ManifestRow", "ResultsStore", "SiteStatus", "StatusEvent", "StoreError"]
