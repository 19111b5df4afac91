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

DEFAULT_STORE = "store.sqlite3"  # every coordinator command's default --store

__all__ = ["DEFAULT_STORE", "FINAL_STATUSES", "STATUSES", "ManifestRow", "ResultsStore", "SiteStatus", "StatusEvent", "StoreError"]
