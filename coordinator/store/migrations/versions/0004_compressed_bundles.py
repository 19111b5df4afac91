"""v4: stored bundles are gzip-compressed (the ``raw`` column holds gzip bytes; sha256 unchanged).

Existing rows are compressed one at a time (a bundle can be tens of MB). The reader accepts both
forms, so a partly migrated or older store still reads. On SQLite the file shrinks only after
``VACUUM`` (``coordinator store vacuum`` is not needed: run ``sqlite3 store.sqlite3 VACUUM``).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

from coordinator.store.packing import MAGIC, pack, unpack

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_bundles = sa.table("bundles", sa.column("id", sa.Integer), sa.column("raw", sa.LargeBinary))


def _rewrite(convert, want_packed: bool) -> None:
    conn = op.get_bind()
    for (bid,) in conn.execute(sa.select(_bundles.c.id).order_by(_bundles.c.id)).all():
        raw = bytes(conn.execute(sa.select(_bundles.c.raw).where(_bundles.c.id == bid)).scalar_one())
        if (raw[:2] == MAGIC) != want_packed:
            conn.execute(_bundles.update().where(_bundles.c.id == bid).values(raw=convert(raw)))


def upgrade() -> None:
    _rewrite(pack, True)


def downgrade() -> None:
    _rewrite(unpack, False)
