"""v1: manifests, current site status, bundles.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "manifests",
        sa.Column("manifest_id", sa.String(64), primary_key=True),
        sa.Column("study_id", sa.String(200), nullable=False, index=True),
        sa.Column("study_version", sa.String(100), nullable=False),
        sa.Column("spec_name", sa.String(200)),
        sa.Column("manifest_sha256", sa.String(64), nullable=False),
        sa.Column("issued_at", sa.DateTime, nullable=False),
        sa.Column("expires_at", sa.DateTime, nullable=False),
        sa.Column("min_sites", sa.Integer, nullable=False),
        sa.Column("target_sites", sa.Text, nullable=False),
        sa.Column("document", sa.Text, nullable=False),
        sa.Column("added_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "site_status",
        sa.Column("manifest_id", sa.String(64), sa.ForeignKey("manifests.manifest_id"), primary_key=True),
        sa.Column("site", sa.String(200), primary_key=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "bundles",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("manifest_id", sa.String(64), sa.ForeignKey("manifests.manifest_id"), nullable=False, index=True),
        sa.Column("site", sa.String(200), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("cdm_name", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("received_at", sa.DateTime, nullable=False),
        sa.Column("raw", sa.LargeBinary, nullable=False),
        sa.UniqueConstraint("manifest_id", "site", name="uq_bundles_manifest_site"),
    )


def downgrade() -> None:
    op.drop_table("bundles")
    op.drop_table("site_status")
    op.drop_table("manifests")
