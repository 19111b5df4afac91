"""Repository functions for network operations (migration ``0003``), beside :class:`ResultsStore`.

* **links**: a re-sent manifest (new id and nonce, one target site) answers for its parent,
  the study's original send (:func:`link_resend`, :func:`family`, :func:`study_bundles`);
* **nodes**: which Flower node id answered for which site of a manifest, so a resumed
  coordinator need not ask a site that already answered (:func:`note_node`, :func:`node_sites`);
* **cancellations**: a cancelled manifest's unfinished sites are ``cancelled`` and a later
  answer is not stored (:func:`cancel`, :func:`is_cancelled`);
* **runs**: each run of a (scheduled) study is a numbered version (:func:`start_run`,
  :func:`finish_run`, :func:`runs`).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pydantic import BaseModel, ConfigDict
from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError

from coordinator.store.repository import FINAL_STATUSES, ResultsStore
from coordinator.store.tables import (
    manifest_cancellations,
    manifest_links,
    manifest_nodes,
    study_runs,
)
from optima_common.bundle import ResultBundle, StudyManifest, read_manifest
from optima_common.errors import StoreError


class StudyRun(BaseModel):
    model_config = ConfigDict(frozen=True)
    manifest_id: str
    study_id: str
    version: int
    schedule_name: str | None
    started_at: dt.datetime
    finished_at: dt.datetime | None
    state: str
    detail: str | None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    return None if value is None else value.replace(tzinfo=dt.UTC)


# ---------- re-sent manifests ----------
def link_resend(store: ResultsStore, child: StudyManifest, parent_id: str, site: str) -> None:
    """Store ``child`` (a re-send of ``parent_id`` to ``site``) and link it to its parent."""
    parent = store.manifest(parent_id)
    if child.study_id != parent.study_id or child.target_sites != (site,):
        raise StoreError(f"manifest {child.manifest_id} is not a re-send of {parent_id} to {site!r}")
    store.add_manifest(child)
    with store.engine.begin() as conn:
        conn.execute(insert(manifest_links).values(manifest_id=child.manifest_id, parent_manifest_id=parent_id,
                                                   kind="resend", site=site, created_at=_now()))


def parent_of(store: ResultsStore, manifest_id: str) -> str | None:
    with store.engine.connect() as conn:
        return conn.execute(select(manifest_links.c.parent_manifest_id).where(
            manifest_links.c.manifest_id == manifest_id)).scalar_one_or_none()


def root_of(store: ResultsStore, manifest_id: str) -> str:
    seen = {manifest_id}
    while (parent := parent_of(store, manifest_id)) is not None and parent not in seen:
        seen.add(parent)
        manifest_id = parent
    return manifest_id


def children(store: ResultsStore, manifest_id: str) -> list[tuple[str, str]]:
    """``(child manifest id, site)`` of every re-send of a manifest, oldest first."""
    with store.engine.connect() as conn:
        rows = conn.execute(select(manifest_links.c.manifest_id, manifest_links.c.site).where(
            manifest_links.c.parent_manifest_id == manifest_id).order_by(manifest_links.c.created_at)).all()
    return [(r[0], r[1]) for r in rows]


def study_sources(store: ResultsStore, manifest_id: str) -> dict[str, str]:
    """Per site, the manifest whose stored bundle counts for a study send (see :func:`study_bundles`)."""
    found = {site: manifest_id for site in store.answered_sites(manifest_id)}
    for child, _site in reversed(children(store, manifest_id)):
        for site, source in study_sources(store, child).items():
            found.setdefault(site, source)
    return dict(sorted(found.items()))


def study_bundles(store: ResultsStore, manifest_id: str) -> list[ResultBundle]:
    """The bundles that count for a study send: its own, plus each re-send's for a site it lacks.

    This is what the report should pool for ``manifest_id`` (one bundle per site; the
    original's bundle wins, then the newest re-send's).
    """
    sources = study_sources(store, manifest_id)
    found = {b.site: b for m in dict.fromkeys(sources.values()) for b in store.bundles(m) if sources[b.site] == m}
    return [found[s] for s in sorted(found)]


def study_digests(store: ResultsStore, manifest_id: str) -> dict[str, str]:
    """Site -> sha256 of the signed bytes of the bundle :func:`study_bundles` returns for it (nothing parsed)."""
    sources = study_sources(store, manifest_id)
    digests = {m: store.bundle_digests(m) for m in dict.fromkeys(sources.values())}
    return {site: digests[m][site] for site, m in sources.items()}


def is_resend(store: ResultsStore, manifest_id: str) -> bool:
    return parent_of(store, manifest_id) is not None


def propagate_to_parent(store: ResultsStore, manifest_id: str, site: str, status: str, reason: str | None) -> None:
    """A re-send's answer is also its parent's answer for that site (unless the parent already has one)."""
    parent = parent_of(store, manifest_id)
    if parent is None:
        return
    current = {s.site: s for s in store.site_statuses(parent)}.get(site)
    if current is not None and (current.has_bundle or current.status in FINAL_STATUSES):
        return
    note = f"via re-sent manifest {manifest_id}" + (f": {reason}" if reason else "")
    store.set_site_status(parent, site, status, note)
    propagate_to_parent(store, parent, site, status, reason)


# ---------- node ids ----------
def note_node(store: ResultsStore, manifest_id: str, node_id: int, site: str) -> None:
    with store.engine.begin() as conn:
        old = conn.execute(select(manifest_nodes.c.site).where(manifest_nodes.c.manifest_id == manifest_id,
                                                               manifest_nodes.c.node_id == str(node_id))
                           ).scalar_one_or_none()
        if old is None:
            conn.execute(insert(manifest_nodes).values(manifest_id=manifest_id, node_id=str(node_id), site=site,
                                                       seen_at=_now()))
        elif old != site:
            conn.execute(update(manifest_nodes).where(manifest_nodes.c.manifest_id == manifest_id,
                                                      manifest_nodes.c.node_id == str(node_id))
                         .values(site=site, seen_at=_now()))


def node_sites(store: ResultsStore, manifest_id: str) -> dict[int, str]:
    with store.engine.connect() as conn:
        rows = conn.execute(select(manifest_nodes.c.node_id, manifest_nodes.c.site).where(
            manifest_nodes.c.manifest_id == manifest_id)).all()
    return {int(n): s for n, s in rows}


# ---------- cancellation ----------
def cancel(store: ResultsStore, manifest_id: str, reason: str = "cancelled by the coordinator") -> list[str]:
    """Cancel a manifest and its re-sends: every site not done becomes ``cancelled``; the sites changed."""
    store.manifest(manifest_id)  # a clear error for an unknown id
    with store.engine.begin() as conn:
        if conn.execute(select(func.count()).select_from(manifest_cancellations).where(
                manifest_cancellations.c.manifest_id == manifest_id)).scalar_one() == 0:
            conn.execute(insert(manifest_cancellations).values(manifest_id=manifest_id, reason=reason,
                                                               cancelled_at=_now()))
    changed = []
    for s in store.site_statuses(manifest_id):
        if not s.has_bundle and s.status not in ("done", "cancelled"):
            store.set_site_status(manifest_id, s.site, "cancelled", reason)
            changed.append(s.site)
    for child, _site in children(store, manifest_id):
        changed += [s for s in cancel(store, child, reason) if s not in changed]
    return changed


def is_cancelled(store: ResultsStore, manifest_id: str) -> bool:
    with store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(manifest_cancellations).where(
            manifest_cancellations.c.manifest_id == manifest_id)).scalar_one() > 0


# ---------- versioned runs ----------
def start_run(store: ResultsStore, manifest: StudyManifest, *, schedule_name: str | None = None,
              at: dt.datetime | None = None) -> StudyRun:
    """Store the manifest and record it as the study's next version (1, 2, ...)."""
    store.add_manifest(manifest, spec_name=schedule_name)
    when = (at or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).replace(tzinfo=None)
    for _attempt in range(3):  # two coordinators racing for a version number: the loser retries
        try:
            with store.engine.begin() as conn:
                last = conn.execute(select(func.max(study_runs.c.version)).where(
                    study_runs.c.study_id == manifest.study_id)).scalar_one()
                conn.execute(insert(study_runs).values(
                    manifest_id=manifest.manifest_id, study_id=manifest.study_id, version=(last or 0) + 1,
                    schedule_name=schedule_name, started_at=when, state="running"))
            break
        except IntegrityError:
            if any(r.manifest_id == manifest.manifest_id for r in runs(store, manifest.study_id)):
                break
    return next(r for r in runs(store, manifest.study_id) if r.manifest_id == manifest.manifest_id)


def finish_run(store: ResultsStore, manifest_id: str, state: str, detail: str | None = None) -> None:
    if state not in ("complete", "incomplete", "failed", "running"):
        raise StoreError(f"unknown run state {state!r}")
    with store.engine.begin() as conn:
        conn.execute(update(study_runs).where(study_runs.c.manifest_id == manifest_id).values(
            state=state, detail=detail, finished_at=None if state == "running" else _now()))


def runs(store: ResultsStore, study_id: str | None = None, schedule_name: str | None = None) -> list[StudyRun]:
    """Recorded runs, oldest version first."""
    q = select(study_runs).order_by(study_runs.c.study_id, study_runs.c.version)
    if study_id is not None:
        q = q.where(study_runs.c.study_id == study_id)
    if schedule_name is not None:
        q = q.where(study_runs.c.schedule_name == schedule_name)
    with store.engine.connect() as conn:
        rows = conn.execute(q).mappings().all()
    return [StudyRun(**{**r, "started_at": _aware(r["started_at"]), "finished_at": _aware(r["finished_at"])})
            for r in rows]


def resolve_study(store: ResultsStore, target: str) -> str:
    """The manifest a command means: from a manifest file, a manifest id, or a study id.

    A study id names its newest *original* send (never a re-send to one site, whose answers
    count for the original): ``report``, ``status``, ``resend`` and ``cancel`` all use this.
    """
    path = Path(target)
    if target.endswith(".json") or path.is_file():
        if not path.is_file():
            raise StoreError(f"{path}: manifest file not found")
        return read_manifest(path).manifest_id
    if store.has_manifest(target):
        return target
    for row in store.manifests(target):  # newest first
        if not is_resend(store, row.manifest_id):
            return row.manifest_id
    raise StoreError(f"{target!r} is neither a manifest file, a manifest id nor a study id in the results store; "
                     "`coordinator status` lists the studies")
