"""v2: status history table, first-sent and created times on the current status.

Existing status rows get one history entry each (their last known state, at ``updated_at``),
so ``coordinator status`` shows something for studies run by a v1 coordinator.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("site_status", sa.Column("created_at", sa.DateTime))
    op.add_column("site_status", sa.Column("first_sent_at", sa.DateTime))
    op.create_table(
        "site_status_history",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("manifest_id", sa.String(64), sa.ForeignKey("manifests.manifest_id"), nullable=False, index=True),
        sa.Column("site", sa.String(200), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("at", sa.DateTime, nullable=False),
    )
    op.execute("UPDATE site_status SET created_at = updated_at")
    op.execute("UPDATE site_status SET first_sent_at = updated_at WHERE status <> 'pending'")
    op.execute("INSERT INTO site_status_history (manifest_id, site, status, reason, at) "
               "SELECT manifest_id, site, status, reason, updated_at FROM site_status")


def downgrade() -> None:
    op.drop_table("site_status_history")
    op.drop_column("site_status", "first_sent_at")
    op.drop_column("site_status", "created_at")
