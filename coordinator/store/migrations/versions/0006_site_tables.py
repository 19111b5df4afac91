"""v6: each stored bundle's table is kept as read at ingest, so pooling does not read the CSV text again.

One row per (manifest, site): the sha256 of the signed bundle it was read from, the reader it
was read by, the bundle's header (all but its table), a digest over all of these and the data,
and the table (Parquet, see
:mod:`coordinator.pooling.site_tables`). A row that does not match the stored bundle, the
reader or its digest is not used (the table is read from the bundle's signed text);
dropping the table loses nothing.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "site_tables",
        sa.Column("manifest_id", sa.String(64), sa.ForeignKey("manifests.manifest_id"), primary_key=True),
        sa.Column("site", sa.String(200), primary_key=True),
        sa.Column("bundle_sha256", sa.String(64), nullable=False),
        sa.Column("reader", sa.String(64), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("header", sa.Text, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("settings", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("site_tables")
