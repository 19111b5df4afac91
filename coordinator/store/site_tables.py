"""Each stored bundle's table as read at ingest (table ``site_tables``, migration 0006).

The store only keeps bytes under (manifest, site); what they hold and when they may be used
is :mod:`coordinator.pooling.site_tables`'s business.
"""

from __future__ import annotations

import datetime as dt
from typing import NamedTuple

from sqlalchemy import delete, insert, select, tuple_

from coordinator.store.repository import ResultsStore
from coordinator.store.tables import site_tables


class SiteTableRow(NamedTuple):
    bundle_sha256: str
    reader: str
    digest: str
    header: str
    data: bytes
    settings: bytes


def put_site_table(store: ResultsStore, manifest_id: str, site: str, row: SiteTableRow) -> None:
    """Keep ``row`` as the table of the bundle of ``site`` for ``manifest_id`` (replacing an older one)."""
    t = site_tables
    with store.engine.begin() as conn:
        conn.execute(delete(t).where(t.c.manifest_id == manifest_id, t.c.site == site))
        conn.execute(insert(t).values(manifest_id=manifest_id, site=site, bundle_sha256=row.bundle_sha256,
                                      reader=row.reader, digest=row.digest, header=row.header, data=row.data,
                                      settings=row.settings, created_at=dt.datetime.now(dt.UTC).replace(tzinfo=None)))


def get_site_tables(store: ResultsStore, keys: list[tuple[str, str]]) -> dict[tuple[str, str], SiteTableRow]:
    """The kept rows of these (manifest id, site) pairs, where there are any."""
    if not keys:
        return {}
    t = site_tables
    with store.engine.connect() as conn:
        rows = conn.execute(select(t.c.manifest_id, t.c.site, t.c.bundle_sha256, t.c.reader, t.c.digest, t.c.header,
                                   t.c.data, t.c.settings).where(tuple_(t.c.manifest_id, t.c.site).in_(keys))).all()
    return {(r[0], r[1]): SiteTableRow(r[2], r[3], r[4], r[5], bytes(r[6]), bytes(r[7])) for r in rows}
