"""Review before release: signed bundles wait in ``state_dir/outbox`` until a person decides.

One review item is two files, both written atomically: ``<id>.bundle`` (the bundle exactly as
it would be sent, :func:`optima_common.bundle.render`, never rewritten) and ``<id>.json`` (its
:class:`OutboxItem`: manifest, sha256 of the bundle bytes, status, reviewer, reason, times).
State changes take an exclusive lock on ``outbox/.lock``, so the Flower ClientApp and the
operator's commands can work on the same outbox.

**The hash the reviewer saw is the hash that is sent.** :meth:`Outbox.put` records the sha256
of the bytes it wrote; :meth:`Outbox.show` shows those bytes' tables and their sha256;
:meth:`Outbox.approve` takes the sha256 the reviewer saw (``expected_sha256``) and refuses
when the file's bytes now hash differently, or differ from what was queued; and
:meth:`Outbox.decision_for` re-hashes the file before handing the bundle out for sending
and refuses if it changed after approval. Every decision is audited (``queued_for_review``,
``review_approved``, ``review_rejected``, ``review_refused``, ``review_sent``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import re
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd
from filelock import FileLock
from pydantic import BaseModel, ConfigDict, ValidationError

from optima_common.bundle import ResultBundle, read_bundle, render
from optima_common.errors import OutboxError
from optima_common.fileio import write_atomic
from optima_common.results import SUPPRESSED, SummarisedResult
from site_agent.audit import MAX_STR, AuditLog

OUTBOX = "outbox"
_ID = re.compile(r"^[0-9a-f]{12}$")
SHOWN_SUPPRESSED = "[suppressed]"
Status = Literal["pending", "approved", "rejected", "sent"]


class OutboxItem(BaseModel):
    """What the outbox knows about one bundle waiting for (or past) review; no result data."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    manifest_id: str
    study_id: str | None = None
    site: str
    created_at: dt.datetime
    sha256: str  # of the bundle file bytes, as queued (and as shown, approved and sent)
    status: Status = "pending"
    reviewer: str | None = None
    decided_at: dt.datetime | None = None
    reason: str | None = None
    sent_at: dt.datetime | None = None


@dataclass(frozen=True)
class ReviewTable:
    result_id: int
    result_type: str
    settings: dict[str, str]
    rows: pd.DataFrame  # what leaves, with suppressed values shown as SHOWN_SUPPRESSED
    suppressed: int


@dataclass(frozen=True)
class ReviewView:
    """Everything that would leave the site for one review item."""

    item: OutboxItem
    bundle: ResultBundle
    file_sha256: str  # the bytes on disk now
    tables: tuple[ReviewTable, ...]

    @property
    def unchanged(self) -> bool:
        return self.file_sha256 == self.item.sha256


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def result_tables(results_csv: str) -> tuple[ReviewTable, ...]:
    """The bundle's summarised_result, one table per result_id, suppressed cells made visible."""
    with tempfile.TemporaryDirectory(prefix="optima-review-") as tmp:
        path = Path(tmp) / "results.csv"
        path.write_text(results_csv, encoding="utf-8")
        result = SummarisedResult.from_csv(path)
    tables = []
    cols = ["cdm_name", "group_name", "group_level", "strata_name", "strata_level", "variable_name",
            "variable_level", "estimate_name", "estimate_type", "estimate_value", "additional_name",
            "additional_level"]
    for _, s in result.settings.iterrows():
        rid = int(s["result_id"])
        rows = result.data.loc[result.data["result_id"] == rid, cols].reset_index(drop=True)
        hidden = rows["estimate_value"] == SUPPRESSED
        rows["estimate_value"] = rows["estimate_value"].where(~hidden, SHOWN_SUPPRESSED)
        settings = {k: str(v) for k, v in s.items() if k != "result_id" and pd.notna(v)}
        tables.append(ReviewTable(rid, str(s["result_type"]), settings, rows, int(hidden.sum())))
    return tuple(tables)


class Outbox:
    """Bundles waiting for review in ``state_dir/outbox``."""

    def __init__(self, state_dir: str | Path):
        self.root = Path(state_dir) / OUTBOX

    # --- files --------------------------------------------------------------------------

    def _bundle_path(self, review_id: str) -> Path:
        return self.root / f"{review_id}.bundle"

    def _meta_path(self, review_id: str) -> Path:
        return self.root / f"{review_id}.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root / ".lock")):  # portable (fcntl on POSIX, msvcrt on Windows)
            yield

    def _save(self, item: OutboxItem) -> OutboxItem:
        write_atomic(self._meta_path(item.id), (item.model_dump_json(indent=2) + "\n").encode("utf-8"))
        return item

    def _load(self, path: Path) -> OutboxItem:
        try:
            return OutboxItem.model_validate_json(path.read_bytes())
        except (OSError, ValidationError, ValueError):
            raise OutboxError(f"{path} is damaged or unreadable (not an outbox item)") from None

    def item(self, review_id: str) -> OutboxItem:
        """The item with this review id (one-line error if there is none)."""
        if not isinstance(review_id, str) or not _ID.match(review_id):
            raise OutboxError(f"{str(review_id)[:40]!r} is not a review id (12 hex characters)",
                              hint="`site-agent review` lists the pending ones")
        path = self._meta_path(review_id)
        if not path.exists():
            raise OutboxError(f"no review item {review_id} in {self.root}", hint="`site-agent review` lists them")
        return self._load(path)

    def items(self) -> list[OutboxItem]:
        """Every item, oldest first."""
        if not self.root.is_dir():
            return []
        return sorted((self._load(p) for p in self.root.glob("*.json")), key=lambda i: (i.created_at, i.id))

    def _bytes(self, item: OutboxItem) -> bytes:
        try:
            return self._bundle_path(item.id).read_bytes()
        except OSError as exc:
            raise OutboxError(f"bundle file of review item {item.id} cannot be read ({exc.strerror or exc})") from None

    # --- the API ------------------------------------------------------------------------

    def put(self, bundle: ResultBundle, *, audit: AuditLog, study_id: str | None = None) -> str:
        """Queue a signed bundle for review and return its review id (queuing the same bytes again
        returns the same id; a different bundle for a manifest already queued is refused)."""
        if bundle.signature is None:
            raise OutboxError(f"bundle for manifest {bundle.manifest_id[:80]!r} is unsigned; sign it before queuing")
        data = render(bundle)
        sha = _sha256(data)
        with self._locked():
            for old in self.items():
                if old.manifest_id == bundle.manifest_id:
                    if old.sha256 == sha:
                        return old.id
                    raise OutboxError(f"manifest {bundle.manifest_id[:80]!r} already has a different bundle "
                                      f"in the outbox (review id {old.id})")
            item = OutboxItem(id=uuid.uuid4().hex[:12], manifest_id=bundle.manifest_id, study_id=study_id,
                              site=bundle.site, created_at=_now(), sha256=sha)
            write_atomic(self._bundle_path(item.id), data)
            self._save(item)
            audit.append("queued_for_review", manifest_id=item.manifest_id[:MAX_STR], study_id=study_id,
                         detail={"review_id": item.id, "bundle_sha256": sha, "site": bundle.site[:100]})
        return item.id

    def pending(self) -> list[OutboxItem]:
        """Items waiting for a decision, oldest first."""
        return [i for i in self.items() if i.status == "pending"]

    def show(self, review_id: str) -> ReviewView:
        """The bundle's bytes on disk as the reviewer will approve them: every table, and their sha256."""
        item = self.item(review_id)
        data = self._bytes(item)
        bundle = read_bundle(self._bundle_path(item.id))
        return ReviewView(item, bundle, _sha256(data), result_tables(bundle.results_csv))

    def _refuse(self, item: OutboxItem, audit: AuditLog, reason: str, reviewer: str | None = None) -> OutboxError:
        audit.append("review_refused", manifest_id=item.manifest_id[:MAX_STR], study_id=item.study_id,
                     detail={"review_id": item.id, "reason": reason[:MAX_STR],
                             "reviewer": None if reviewer is None else reviewer[:100]})
        return OutboxError(f"review item {item.id}: {reason}")

    def approve(self, review_id: str, *, reviewer: str, audit: AuditLog,
                expected_sha256: str | None = None) -> OutboxItem:
        """Approve a pending item; refused if its bytes are not the ones queued (and shown)."""
        reviewer = _reviewer(reviewer)
        with self._locked():
            item = self.item(review_id)
            if item.status != "pending":
                raise OutboxError(f"review item {item.id} is already {item.status}")
            now_sha = _sha256(self._bytes(item))
            if now_sha != item.sha256:
                raise self._refuse(item, audit, f"the bundle file changed after it was queued (sha256 {now_sha[:16]}… "
                                                f"instead of {item.sha256[:16]}…); reject it", reviewer)
            if expected_sha256 is not None and expected_sha256.strip().lower() != now_sha:
                raise self._refuse(item, audit, f"sha256 {expected_sha256.strip()[:64]!r} is not the bundle's "
                                                f"{now_sha}; show it again and review what is there", reviewer)
            read_bundle(self._bundle_path(item.id))  # still a canonical bundle file
            item = self._save(item.model_copy(update={"status": "approved", "reviewer": reviewer,
                                                      "decided_at": _now()}))
            audit.append("review_approved", manifest_id=item.manifest_id[:MAX_STR], study_id=item.study_id,
                         detail={"review_id": item.id, "bundle_sha256": item.sha256, "reviewer": reviewer})
        return item

    def reject(self, review_id: str, *, reason: str, reviewer: str, audit: AuditLog) -> OutboxItem:
        """Reject a pending item; the coordinator is told ``reason`` (keep it free of patient data)."""
        reviewer = _reviewer(reviewer)
        reason = " ".join(str(reason).split())
        if not reason:
            raise OutboxError("a rejection needs a reason (--reason …); the coordinator is told it")
        if len(reason) > 200:
            raise OutboxError(f"the reason is {len(reason)} characters; keep it to 200")
        with self._locked():
            item = self.item(review_id)
            if item.status != "pending":
                raise OutboxError(f"review item {item.id} is already {item.status}")
            item = self._save(item.model_copy(update={"status": "rejected", "reviewer": reviewer,
                                                      "decided_at": _now(), "reason": reason}))
            audit.append("review_rejected", manifest_id=item.manifest_id[:MAX_STR], study_id=item.study_id,
                         detail={"review_id": item.id, "bundle_sha256": item.sha256, "reviewer": reviewer,
                                 "reason": reason})
        return item

    def _latest(self, manifest_id: str) -> OutboxItem | None:
        found = [i for i in self.items() if i.manifest_id == manifest_id]
        return found[-1] if found else None

    def decision_for(self, manifest_id: str) -> tuple[str, ResultBundle | str | None]:
        """``("pending", None)``, ``("approved", bundle)``, ``("rejected", reason)`` or ``("none", None)``.

        An approved bundle is re-read and re-hashed here: if its bytes are not the approved ones,
        :class:`OutboxError` is raised and nothing is handed out.
        """
        item = self._latest(manifest_id)
        if item is None:
            return "none", None
        if item.status == "pending":
            return "pending", None
        if item.status == "rejected":
            return "rejected", item.reason
        data = self._bytes(item)
        if _sha256(data) != item.sha256:
            raise OutboxError(f"review item {item.id}: the bundle file changed after approval; refusing to send it")
        bundle = read_bundle(self._bundle_path(item.id))
        if _sha256(render(bundle)) != item.sha256:  # read_bundle guarantees this; kept as the last word
            raise OutboxError(f"review item {item.id}: bundle does not render to the approved bytes")
        return "approved", bundle

    def mark_sent(self, manifest_id: str, *, audit: AuditLog) -> None:
        """Record that the approved bundle left the site (audited as ``review_sent``); idempotent."""
        with self._locked():
            item = self._latest(manifest_id)
            if item is None or item.status not in ("approved", "sent"):
                state = "nothing" if item is None else item.status
                raise OutboxError(f"manifest {manifest_id[:80]!r}: only an approved bundle can be sent ({state} in "
                                  "the outbox)")
            if item.status == "sent":
                return
            item = self._save(item.model_copy(update={"status": "sent", "sent_at": _now()}))
            audit.append("review_sent", manifest_id=item.manifest_id[:MAX_STR], study_id=item.study_id,
                         detail={"review_id": item.id, "bundle_sha256": item.sha256, "reviewed_by": item.reviewer})


def _reviewer(name: str) -> str:
    name = " ".join(str(name).split())
    if not name or len(name) > 100:
        raise OutboxError("the reviewer's name must be 1 to 100 characters (--reviewer)")
    return name
