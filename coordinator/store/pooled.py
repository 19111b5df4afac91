"""The kept pooled network result of a manifest (table ``pooled_results``, migration 0005).

The store only keeps bytes under a key; what they hold and when they are still valid is
:mod:`coordinator.pooling.cache`'s business.
"""

from __future__ import annotations

import datetime as dt
from typing import NamedTuple

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError

from coordinator.store.repository import ResultsStore
from coordinator.store.tables import pooled_results


class PooledRow(NamedTuple):
    meta: str
    data: bytes
    settings: bytes


def get_pooled(store: ResultsStore, manifest_id: str, key: str) -> PooledRow | None:
    """The kept result of ``manifest_id`` if it was pooled under ``key``; else None."""
    t = pooled_results
    with store.engine.connect() as conn:
        row = conn.execute(select(t.c.meta, t.c.data, t.c.settings).where(
            t.c.manifest_id == manifest_id, t.c.pool_key == key)).one_or_none()
    return None if row is None else PooledRow(row[0], bytes(row[1]), bytes(row[2]))


def put_pooled(store: ResultsStore, manifest_id: str, key: str, row: PooledRow) -> None:
    """Keep ``row`` as the pooled result of ``manifest_id`` under ``key`` (replacing an older one)."""
    t = pooled_results
    try:
        with store.engine.begin() as conn:
            conn.execute(delete(t).where(t.c.manifest_id == manifest_id))
            conn.execute(insert(t).values(manifest_id=manifest_id, pool_key=key, meta=row.meta, data=row.data,
                                          settings=row.settings,
                                          created_at=dt.datetime.now(dt.UTC).replace(tzinfo=None)))
    except IntegrityError:  # another process kept its pooling at the same moment: the next reader re-checks its key
        pass

