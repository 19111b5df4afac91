"""``ResultsStore``: the one module that reads and writes the coordinator's results store.

A store is a SQLite file (default) or any SQLAlchemy URL (PostgreSQL supported). Opening
creates it or upgrades its schema with the packaged alembic migrations. What it keeps:

* one row per manifest *send* (``add_manifest``), with the signed document itself;
* the current status of every target site of a manifest plus an append-only history of each
  change (``set_site_status``): enough for ``coordinator status`` and for resuming a
  coordinator without asking sites that already answered (``answered_sites``);
* each site's verified result bundle, as the exact signed bytes received (``add_bundle``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, ValidationError
from sqlalchemy import create_engine, event, func, insert, select, update
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError

from coordinator.store import migrate
from coordinator.store.packing import pack, unpack
from coordinator.store.tables import (
    bundles,
    manifests,
    site_status,
    site_status_history,
)
from optima_common.bundle import ResultBundle, StudyManifest, manifest_sha256, render
from optima_common.errors import StoreError

STATUSES = ("pending", "sent", "done", "missing", "failed", "refused", "awaiting_review", "rejected", "cancelled")
#: statuses after which a site is not asked again when a coordinator resumes
FINAL_STATUSES = frozenset({"done", "refused", "rejected", "cancelled"})


class SiteStatus(BaseModel):
    model_config = ConfigDict(frozen=True)
    manifest_id: str
    site: str
    status: str
    reason: str | None
    updated_at: dt.datetime
    created_at: dt.datetime | None
    first_sent_at: dt.datetime | None
    has_bundle: bool
    bundle_received_at: dt.datetime | None = None


class StatusEvent(BaseModel):
    model_config = ConfigDict(frozen=True)
    site: str
    status: str
    reason: str | None
    at: dt.datetime


class ManifestRow(BaseModel):
    model_config = ConfigDict(frozen=True)
    manifest_id: str
    study_id: str
    study_version: str
    spec_name: str | None
    issued_at: dt.datetime
    expires_at: dt.datetime
    added_at: dt.datetime
    target_sites: tuple[str, ...]
    min_sites: int
    n_bundles: int


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _db_time(value: dt.datetime) -> dt.datetime:
    """Naive UTC for the database; a naive input is taken to be UTC already."""
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    return None if value is None else value.replace(tzinfo=dt.UTC)


def _engine(url_or_path: str | Path) -> Engine:
    text = str(url_or_path)
    if "://" not in text:
        path = Path(text).expanduser()
        if path.is_dir():
            raise StoreError(f"store {path} is a folder; give a file such as {path / 'results.sqlite3'}")
        if not path.parent.is_dir():
            raise StoreError(f"cannot create store {path}: folder {path.parent} does not exist")
        text = f"sqlite:///{path.resolve()}"
    try:
        url = make_url(text)
        engine = create_engine(url, future=True)
    except (ArgumentError, ValueError) as exc:
        raise StoreError(f"not a database URL or path: {text!r} ({exc})") from None
    except ImportError as exc:
        raise StoreError(f"no database driver for {text.split('://')[0]}: {exc}") from None
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # foreign keys are off by default in SQLite
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
    return engine


class ResultsStore:
    """Manifests, site statuses and verified bundles of network studies (see module doc)."""

    def __init__(self, engine: Engine):
        self.engine = engine

    @classmethod
    def open(cls, url_or_path: str | Path) -> ResultsStore:
        """Open (create, upgrade) the store at a path (SQLite file) or SQLAlchemy URL."""
        engine = _engine(url_or_path)
        try:
            migrate.upgrade(engine)
        except OperationalError as exc:
            engine.dispose()
            first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise StoreError(f"cannot open results store {engine.url.render_as_string()}: {first}") from None
        except SQLAlchemyError as exc:
            engine.dispose()
            raise StoreError(f"cannot open results store {engine.url.render_as_string()}: "
                             f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from None
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def revision(self) -> str | None:
        return migrate.current_revision(self.engine)

    # ---------- manifests ----------
    def add_manifest(self, manifest: StudyManifest, *, spec_name: str | None = None,
                     at: dt.datetime | None = None) -> None:
        """Record one signed manifest (a study run) and its target sites as ``pending``; idempotent.

        The same manifest id with a different signed document is refused.
        """
        sha = manifest_sha256(manifest)  # refuses an unsigned manifest
        now = _db_time(at or _now())
        with self.engine.begin() as conn:
            old = conn.execute(select(manifests.c.manifest_sha256).where(
                manifests.c.manifest_id == manifest.manifest_id)).scalar_one_or_none()
            if old is not None:
                if old != sha:
                    raise StoreError(f"manifest {manifest.manifest_id} is already stored with different content; "
                                     "a manifest id names one signed manifest")
                return
            conn.execute(insert(manifests).values(
                manifest_id=manifest.manifest_id, study_id=manifest.study_id, study_version=manifest.study_version,
                spec_name=spec_name, manifest_sha256=sha, issued_at=_db_time(manifest.issued_at),
                expires_at=_db_time(manifest.expires_at), min_sites=manifest.min_sites,
                target_sites=json.dumps(list(manifest.target_sites)), document=render(manifest).decode("utf-8"),
                added_at=now))
            for site in manifest.target_sites:
                conn.execute(insert(site_status).values(manifest_id=manifest.manifest_id, site=site, status="pending",
                                                        updated_at=now, created_at=now))
                conn.execute(insert(site_status_history).values(manifest_id=manifest.manifest_id, site=site,
                                                                status="pending", at=now))

    def manifest(self, manifest_id: str) -> StudyManifest:
        with self.engine.connect() as conn:
            doc = conn.execute(select(manifests.c.document).where(
                manifests.c.manifest_id == manifest_id)).scalar_one_or_none()
        if doc is None:
            raise StoreError(f"manifest {manifest_id} is not in the results store")
        return StudyManifest.model_validate_json(doc)

    def has_manifest(self, manifest_id: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(manifests).where(
                manifests.c.manifest_id == manifest_id)).scalar_one() > 0

    def manifests(self, study_id: str | None = None) -> list[ManifestRow]:
        """Stored manifests, newest first, optionally of one study."""
        n = select(bundles.c.manifest_id, func.count().label("n")).group_by(bundles.c.manifest_id).subquery()
        q = (select(manifests, func.coalesce(n.c.n, 0).label("n_bundles"))
             .outerjoin(n, n.c.manifest_id == manifests.c.manifest_id)
             .order_by(manifests.c.added_at.desc(), manifests.c.issued_at.desc()))
        if study_id is not None:
            q = q.where(manifests.c.study_id == study_id)
        with self.engine.connect() as conn:
            rows = conn.execute(q).mappings().all()
        return [ManifestRow(manifest_id=r["manifest_id"], study_id=r["study_id"], study_version=r["study_version"],
                            spec_name=r["spec_name"], issued_at=_aware(r["issued_at"]),
                            expires_at=_aware(r["expires_at"]), added_at=_aware(r["added_at"]),
                            target_sites=tuple(json.loads(r["target_sites"])), min_sites=r["min_sites"],
                            n_bundles=r["n_bundles"]) for r in rows]

    # ---------- site status ----------
    def set_site_status(self, manifest_id: str, site: str, status: str, reason: str | None = None, *,
                        at: dt.datetime | None = None) -> None:
        """Set a site's current status for a manifest and append it to the history."""
        if status not in STATUSES:
            raise StoreError(f"unknown site status {status!r}; use one of {', '.join(STATUSES)}")
        when = _db_time(at or _now())
        with self.engine.begin() as conn:
            self._require_manifest(conn, manifest_id)
            old = conn.execute(select(site_status).where(site_status.c.manifest_id == manifest_id,
                                                         site_status.c.site == site)).mappings().one_or_none()
            if old is None:
                conn.execute(insert(site_status).values(
                    manifest_id=manifest_id, site=site, status=status, reason=reason, updated_at=when,
                    created_at=when, first_sent_at=when if status == "sent" else None))
            else:
                values = {"status": status, "reason": reason, "updated_at": when}
                if status == "sent" and old["first_sent_at"] is None:
                    values["first_sent_at"] = when
                conn.execute(update(site_status).where(site_status.c.manifest_id == manifest_id,
                                                       site_status.c.site == site).values(**values))
            conn.execute(insert(site_status_history).values(manifest_id=manifest_id, site=site, status=status,
                                                            reason=reason, at=when))

    def site_statuses(self, manifest_id: str) -> list[SiteStatus]:
        """Every known site of a manifest with its current status, sorted by site."""
        q = (select(site_status, bundles.c.received_at)
             .outerjoin(bundles, (bundles.c.manifest_id == site_status.c.manifest_id)
                        & (bundles.c.site == site_status.c.site))
             .where(site_status.c.manifest_id == manifest_id).order_by(site_status.c.site))
        with self.engine.connect() as conn:
            rows = conn.execute(q).mappings().all()
        return [SiteStatus(manifest_id=r["manifest_id"], site=r["site"], status=r["status"], reason=r["reason"],
                           updated_at=_aware(r["updated_at"]), created_at=_aware(r["created_at"]),
                           first_sent_at=_aware(r["first_sent_at"]), has_bundle=r["received_at"] is not None,
                           bundle_received_at=_aware(r["received_at"])) for r in rows]

    def status_history(self, manifest_id: str, site: str | None = None) -> list[StatusEvent]:
        q = (select(site_status_history).where(site_status_history.c.manifest_id == manifest_id)
             .order_by(site_status_history.c.at, site_status_history.c.id))
        if site is not None:
            q = q.where(site_status_history.c.site == site)
        with self.engine.connect() as conn:
            rows = conn.execute(q).mappings().all()
        return [StatusEvent(site=r["site"], status=r["status"], reason=r["reason"], at=_aware(r["at"])) for r in rows]

    def sites_to_ask(self, manifest_id: str) -> list[str]:
        """Target sites a resumed coordinator should (re)send to: no bundle and no final answer."""
        targets = self.manifest(manifest_id).target_sites
        done = {s.site for s in self.site_statuses(manifest_id) if s.has_bundle or s.status in FINAL_STATUSES}
        return [s for s in targets if s not in done]

    # ---------- bundles ----------
    def add_bundle(self, bundle: ResultBundle, raw: bytes, *, at: dt.datetime | None = None,
                   packed: bytes | None = None, verified_sha256: str | None = None) -> bool:
        """Store a *verified* bundle with its raw signed bytes; False if exactly these bytes are stored.

        A different bundle from the same site for the same manifest is refused (StoreError),
        as are raw bytes that are not this bundle and a bundle for a manifest not in the store.
        ``packed``: ``pack(raw)`` computed elsewhere (the ingest's verifying worker); checked to
        unpack to ``raw``. ``verified_sha256``: the digest of the bytes the verifier parsed
        ``bundle`` from and packed (the ingest's worker); when ``raw`` has it, ``raw`` is not
        parsed and ``packed`` not unpacked again (~0.2 s for a 35 MB bundle).
        """
        sha = hashlib.sha256(raw).hexdigest()
        if sha != verified_sha256:
            try:
                parsed = ResultBundle.model_validate_json(raw)
            except ValidationError:
                raise StoreError(f"raw bytes given for the bundle of site {bundle.site!r} are not a result bundle") \
                    from None
            if parsed != bundle:
                raise StoreError(f"raw bytes given for the bundle of site {bundle.site!r} are a different bundle")
            if packed is not None and unpack(packed) != raw:
                raise StoreError(f"the packed bytes given for the bundle of site {bundle.site!r} are not its raw "
                                 "bytes")
        if packed is None:
            packed = pack(raw)
        with self.engine.begin() as conn:
            self._require_manifest(conn, bundle.manifest_id)
            old = conn.execute(select(bundles.c.sha256).where(bundles.c.manifest_id == bundle.manifest_id,
                                                              bundles.c.site == bundle.site)).scalar_one_or_none()
            if old == sha:
                return False
            if old is not None:
                raise StoreError(f"site {bundle.site!r} already answered manifest {bundle.manifest_id} with a "
                                 "different bundle; refused (one answer per site and manifest)")
            if conn.execute(select(site_status.c.status).where(  # coordinator study cancel
                    site_status.c.manifest_id == bundle.manifest_id,
                    site_status.c.site == bundle.site)).scalar_one_or_none() == "cancelled":
                raise StoreError(f"manifest {bundle.manifest_id} was cancelled for site {bundle.site!r}; "
                                 "its late answer is not stored")
            conn.execute(insert(bundles).values(
                manifest_id=bundle.manifest_id, site=bundle.site, sha256=sha, cdm_name=bundle.provenance.cdm_name,
                created_at=_db_time(bundle.created_at), received_at=_db_time(at or _now()), raw=packed))
        return True

    def bundles(self, manifest_id: str) -> list[ResultBundle]:
        """The stored bundles of a manifest, sorted by site."""
        return [b for b, _ in self.bundles_raw(manifest_id)]

    def bundles_raw(self, manifest_id: str) -> list[tuple[ResultBundle, bytes]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(bundles.c.raw).where(bundles.c.manifest_id == manifest_id)
                                .order_by(bundles.c.site)).scalars().all()
        raws = [unpack(r) for r in rows]  # stored gzip-compressed since 0004; older rows as they are
        return [(ResultBundle.model_validate_json(r), r) for r in raws]

    def bundle_digests(self, manifest_id: str) -> dict[str, str]:
        """Site -> sha256 of the signed bytes of its stored bundle (nothing read but the digests)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(bundles.c.site, bundles.c.sha256).where(
                bundles.c.manifest_id == manifest_id)).all()
        return {r[0]: r[1] for r in rows}

    def answered_sites(self, manifest_id: str) -> set[str]:
        with self.engine.connect() as conn:
            return set(conn.execute(select(bundles.c.site).where(bundles.c.manifest_id == manifest_id)).scalars())

    @staticmethod
    def _require_manifest(conn, manifest_id: str) -> None:
        found = conn.execute(select(func.count()).select_from(manifests).where(
            manifests.c.manifest_id == manifest_id)).scalar_one()
        if not found:
            raise StoreError(f"manifest {manifest_id} is not in the results store; add the manifest first")
