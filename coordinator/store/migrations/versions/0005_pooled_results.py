"""v5: the pooled network result of a manifest is kept, so the report and the viewer pool once.

One row per manifest: the key (the stored bundles' digests and the pooling code's hash) it was
pooled from, and the result itself (Parquet, see :mod:`coordinator.pooling.cache`). A row whose
key no longer matches is simply pooled again and replaced; dropping the table loses nothing.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pooled_results",
        sa.Column("manifest_id", sa.String(64), sa.ForeignKey("manifests.manifest_id"), primary_key=True),
        sa.Column("pool_key", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("meta", sa.Text, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("settings", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("pooled_results")
