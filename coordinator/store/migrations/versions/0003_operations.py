"""v3: network operations: re-sent manifests linked to their study, node ids seen per site,
cancellations, and versioned study runs (scheduled studies).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "manifest_links",
        sa.Column("manifest_id", sa.String(64), sa.ForeignKey("manifests.manifest_id"), primary_key=True),
        sa.Column("parent_manifest_id", sa.String(64), sa.ForeignKey("manifests.manifest_id"), nullable=False,
                  index=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("site", sa.String(200)),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "manifest_nodes",
        sa.Column("manifest_id", sa.String(64), sa.ForeignKey("manifests.manifest_id"), primary_key=True),
        sa.Column("node_id", sa.String(40), primary_key=True),
        sa.Column("site", sa.String(200), nullable=False),
        sa.Column("seen_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "manifest_cancellations",
        sa.Column("manifest_id", sa.String(64), sa.ForeignKey("manifests.manifest_id"), primary_key=True),
        sa.Column("reason", sa.Text),
        sa.Column("cancelled_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "study_runs",
        sa.Column("manifest_id", sa.String(64), sa.ForeignKey("manifests.manifest_id"), primary_key=True),
        sa.Column("study_id", sa.String(200), nullable=False, index=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("schedule_name", sa.String(200)),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text),
        sa.UniqueConstraint("study_id", "version", name="uq_study_runs_version"),
    )


def downgrade() -> None:
    op.drop_table("study_runs")
    op.drop_table("manifest_cancellations")
    op.drop_table("manifest_nodes")
    op.drop_table("manifest_links")
