"""SQLAlchemy Core tables of the results store at the newest migration (``0006``: site tables kept).

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

# ---- 0003: network operations (coordinator/store/ops.py) ----
manifest_links = Table(  # a re-sent manifest answers for its parent (the study's original send)
    "manifest_links", metadata,
    Column("manifest_id", String(64), ForeignKey("manifests.manifest_id"), primary_key=True),
    Column("parent_manifest_id", String(64), ForeignKey("manifests.manifest_id"), nullable=False, index=True),
    Column("kind", String(32), nullable=False),  # "resend"
    Column("site", String(200)),
    Column("created_at", DateTime, nullable=False),
)

manifest_nodes = Table(  # which Flower node answered for which site (node ids are not site names)
    "manifest_nodes", metadata,
    Column("manifest_id", String(64), ForeignKey("manifests.manifest_id"), primary_key=True),
    Column("node_id", String(40), primary_key=True),
    Column("site", String(200), nullable=False),
    Column("seen_at", DateTime, nullable=False),
)

manifest_cancellations = Table(
    "manifest_cancellations", metadata,
    Column("manifest_id", String(64), ForeignKey("manifests.manifest_id"), primary_key=True),
    Column("reason", Text),
    Column("cancelled_at", DateTime, nullable=False),
)

study_runs = Table(  # one versioned result set per run of a (scheduled) study
    "study_runs", metadata,
    Column("manifest_id", String(64), ForeignKey("manifests.manifest_id"), primary_key=True),
    Column("study_id", String(200), nullable=False, index=True),
    Column("version", Integer, nullable=False),
    Column("schedule_name", String(200)),
    Column("started_at", DateTime, nullable=False),
    Column("finished_at", DateTime),
    Column("state", String(32), nullable=False),  # running, complete, incomplete, failed
    Column("detail", Text),
    UniqueConstraint("study_id", "version", name="uq_study_runs_version"),
)

# ---- 0005: the pooled network result of a manifest (coordinator/pooling/cache.py) ----
pooled_results = Table(
    "pooled_results", metadata,
    Column("manifest_id", String(64), ForeignKey("manifests.manifest_id"), primary_key=True),
    Column("pool_key", String(64), nullable=False),  # sha256 of the bundles' digests and the pooling code
    Column("created_at", DateTime, nullable=False),
    Column("meta", Text, nullable=False),  # JSON: pooled name, sites, notes
    Column("data", LargeBinary, nullable=False),  # Parquet (zstd) of the result's data
    Column("settings", LargeBinary, nullable=False),  # Parquet of its settings
)

# ---- 0006: each stored bundle's table as read at ingest (coordinator/pooling/site_tables.py) ----
site_tables = Table(
    "site_tables", metadata,
    Column("manifest_id", String(64), ForeignKey("manifests.manifest_id"), primary_key=True),
    Column("site", String(200), primary_key=True),
    Column("bundle_sha256", String(64), nullable=False),  # the signed bundle it was read from
    Column("reader", String(64), nullable=False),  # hash of the reader's code and the format
    Column("digest", String(64), nullable=False),  # sha256 over the two above, the header and both Parquet blobs
    Column("created_at", DateTime, nullable=False),
    Column("header", Text, nullable=False),  # JSON: the bundle but its table (site, provenance, suppression, ...)
    Column("data", LargeBinary, nullable=False),  # Parquet (zstd) of the table's data
    Column("settings", LargeBinary, nullable=False),  # Parquet of its settings
)
