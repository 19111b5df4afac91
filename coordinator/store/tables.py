"""SQLAlchemy Core tables of the results store at the newest migration (``0002``).

Times are stored as naive UTC (``DateTime`` without zone works alike on SQLite and PostgreSQL)
and handed out as aware UTC datetimes by the repository. The migrations in
``migrations/versions`` create exactly these tables; change both together.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

manifests = Table(
    "manifests", metadata,
    Column("manifest_id", String(64), primary_key=True),
    Column("study_id", String(200), nullable=False, index=True),
    Column("study_version", String(100), nullable=False),
    Column("spec_name", String(200)),
    Column("manifest_sha256", String(64), nullable=False),
    Column("issued_at", DateTime, nullable=False),
    Column("expires_at", DateTime, nullable=False),
    Column("min_sites", Integer, nullable=False),
    Column("target_sites", Text, nullable=False),  # JSON list
    Column("document", Text, nullable=False),  # the signed manifest, canonical file form
    Column("added_at", DateTime, nullable=False),
)

site_status = Table(
    "site_status", metadata,
    Column("manifest_id", String(64), ForeignKey("manifests.manifest_id"), primary_key=True),
    Column("site", String(200), primary_key=True),
    Column("status", String(32), nullable=False),
    Column("reason", Text),
    Column("updated_at", DateTime, nullable=False),
    Column("created_at", DateTime),  # 0002
    Column("first_sent_at", DateTime),  # 0002
)

site_status_history = Table(  # 0002
    "site_status_history", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("manifest_id", String(64), ForeignKey("manifests.manifest_id"), nullable=False, index=True),
    Column("site", String(200), nullable=False),
    Column("status", String(32), nullable=False),
    Column("reason", Text),
    Column("at", DateTime, nullable=False),
)

bundles = Table(
    "bundles", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("manifest_id", String(64), ForeignKey("manifests.manifest_id"), nullable=False, index=True),
    Column("site", String(200), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("cdm_name", String(200), nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("received_at", DateTime, nullable=False),
    Column("raw", LargeBinary, nullable=False),  # the signed bundle exactly as received
    UniqueConstraint("manifest_id", "site", name="uq_bundles_manifest_site"),
)
