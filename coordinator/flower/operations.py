"""Day-to-day study operations at the coordinator: status, re-send to one site, cancel.

All three work on the results store only (no network): :func:`resend` prepares and signs a
new manifest that the ``study resend`` command then sends over Flower like ``study send``.
"""

from __future__ import annotations

import datetime as dt

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel

from coordinator.store import ResultsStore, ops
from coordinator.trust.manifest import build_manifest, sign_manifest
from optima_common.bundle import StudyManifest
from optima_common.errors import CoordinatorError

LABELS = {"pending": "pending", "sent": "sent", "awaiting_review": "awaiting review", "rejected": "rejected",
          "refused": "refused by policy", "failed": "failed", "missing": "missing", "done": "done",
          "cancelled": "cancelled"}


class SiteLine(BaseModel):
    site: str
    status: str
    label: str
    reason: str | None
    first_sent_at: dt.datetime | None
    updated_at: dt.datetime
    bundle_received_at: dt.datetime | None


class ManifestStatus(BaseModel):
    manifest_id: str
    study_id: str
    study_version: str
    version: int | None  # run number of a scheduled/versioned study
    issued_at: dt.datetime
    expires_at: dt.datetime
    min_sites: int
    done: int
    targets: int
    complete: bool
    cancelled: bool
    resends: list[tuple[str, str]]  # (manifest id, site)
    sites: list[SiteLine]


class StudyLine(BaseModel):
    study_id: str
    manifest_id: str
    version: int | None
    issued_at: dt.datetime
    done: int
    targets: int
    min_sites: int
    counts: dict[str, int]
    state: str  # complete, in progress, incomplete, cancelled


def _versions(store: ResultsStore) -> dict[str, int]:
    return {r.manifest_id: r.version for r in ops.runs(store)}


def manifest_status(store: ResultsStore, manifest_id: str) -> ManifestStatus:
    m = store.manifest(manifest_id)
    lines = [SiteLine(site=s.site, status=s.status, label=LABELS.get(s.status, s.status), reason=s.reason,
                      first_sent_at=s.first_sent_at, updated_at=s.updated_at,
                      bundle_received_at=s.bundle_received_at) for s in store.site_statuses(manifest_id)]
    done = sum(s.status == "done" for s in lines)
    return ManifestStatus(manifest_id=manifest_id, study_id=m.study_id, study_version=m.study_version,
                          version=_versions(store).get(manifest_id), issued_at=m.issued_at, expires_at=m.expires_at,
                          min_sites=m.min_sites, done=done, targets=len(m.target_sites),
                          complete=done >= m.min_sites, cancelled=ops.is_cancelled(store, manifest_id),
                          resends=ops.children(store, manifest_id), sites=lines)


def studies(store: ResultsStore) -> list[StudyLine]:
    """Every original send (re-sends fold into their parent), newest first, with its progress."""
    versions = _versions(store)
    out = []
    for row in store.manifests():
        if ops.is_resend(store, row.manifest_id):
            continue
        statuses = store.site_statuses(row.manifest_id)
        counts: dict[str, int] = {}
        for s in statuses:
            counts[s.status] = counts.get(s.status, 0) + 1
        done = counts.get("done", 0)
        open_ = sum(counts.get(k, 0) for k in ("pending", "sent", "awaiting_review"))
        cancelled = ops.is_cancelled(store, row.manifest_id)
        state = ("cancelled" if cancelled else "complete" if done >= row.min_sites and not open_
                 else "in progress" if open_ else "complete" if done >= row.min_sites else "incomplete")
        out.append(StudyLine(study_id=row.study_id, manifest_id=row.manifest_id, version=versions.get(row.manifest_id),
                             issued_at=row.issued_at, done=done, targets=len(row.target_sites),
                             min_sites=row.min_sites, counts=counts, state=state))
    return out


def _t(x: dt.datetime | None) -> str:
    return "-" if x is None else x.strftime("%Y-%m-%d %H:%M:%S")


def format_manifest_status(st: ManifestStatus) -> str:
    version = f", version {st.version}" if st.version is not None else ""
    head = (f"study {st.study_id} {st.study_version}{version}: manifest {st.manifest_id}, issued {_t(st.issued_at)} "
            f"UTC, expires {_t(st.expires_at)} UTC")
    state = "CANCELLED" if st.cancelled else "complete" if st.complete else "not complete"
    lines = [head, f"{st.done} of {st.targets} sites done (minimum {st.min_sites}): {state}", "",
             (f"  {'site':<20} {'status':<18} {'first sent (UTC)':<20} {'last update (UTC)':<20} "
              f"{'bundle (UTC)':<20} reason")]
    for s in st.sites:
        lines.append(f"  {s.site:<20} {s.label:<18} {_t(s.first_sent_at):<20} {_t(s.updated_at):<20} "
                     f"{_t(s.bundle_received_at):<20} {s.reason or ''}")
    for child, site in st.resends:
        lines.append(f"  re-sent to {site} as manifest {child}")
    return "\n".join(lines)


def format_studies(rows: list[StudyLine]) -> str:
    if not rows:
        return "no studies in the results store yet"
    lines = [f"{'study':<24} {'version':<8} {'manifest':<34} {'issued (UTC)':<20} {'done':<8} {'state':<12} sites"]
    for r in rows:
        counts = ", ".join(f"{LABELS.get(k, k)} {v}" for k, v in sorted(r.counts.items()))
        lines.append(f"{r.study_id[:24]:<24} {r.version or '-'!s:<8} {r.manifest_id:<34} {_t(r.issued_at):<20} "
                     f"{f'{r.done}/{r.targets}':<8} {r.state:<12} {counts}")
    return "\n".join(lines)


def resend(store: ResultsStore, manifest_id: str, site: str, key: Ed25519PrivateKey, *,
           valid_for: dt.timedelta | None = None) -> StudyManifest:
    """A new signed manifest (new id and nonce, same content) for one site, linked to the original."""
    root = ops.root_of(store, manifest_id)
    parent = store.manifest(root)
    if site not in parent.target_sites:
        raise CoordinatorError(f"site {site!r} is not a target of manifest {root} "
                               f"(targets: {', '.join(parent.target_sites)})")
    if ops.is_cancelled(store, root):
        raise CoordinatorError(f"manifest {root} was cancelled; send the study again instead of re-sending it")
    current = {s.site: s for s in store.site_statuses(root)}[site]
    if current.has_bundle or current.status == "done":
        raise CoordinatorError(f"site {site!r} has already answered manifest {root}; nothing to re-send")
    window = valid_for or (parent.expires_at - parent.issued_at)
    child = build_manifest(study_id=parent.study_id, study_version=parent.study_version,
                           cohorts=[c.model_dump() for c in parent.cohorts], analyses=parent.analyses,
                           parameters=parent.parameters, min_cell_count=parent.min_cell_count, target_sites=[site],
                           min_sites=1, valid_for=window)
    signed = sign_manifest(child, key)
    ops.link_resend(store, signed, root, site)
    store.set_site_status(root, site, "sent", f"re-sent as manifest {signed.manifest_id}")
    return signed


def cancel(store: ResultsStore, manifest_id: str, reason: str | None = None) -> list[str]:
    """Cancel a study send (and its re-sends); the sites marked cancelled."""
    root = ops.root_of(store, manifest_id)
    return ops.cancel(store, root, reason or "cancelled by the coordinator")
