"""Whether this site runs a study manifest: the site's side of the trust model.

:meth:`ManifestPolicy.check` applies, in this order, and stops at the first failure:

1. ``signature``  signed, by a coordinator key the site pinned;
   ``revoked``    not by a key the site revoked (``site-agent keys revoke``);
2. ``schema``     ``kind``/``schema_version`` are ones this agent understands; then
   ``signature``  the signature verifies over the canonical bytes (``bundle.verify``);
3. ``expired``    ``expires_at`` is in the future;
   ``future``     ``issued_at`` is not later than now + ``clock_skew_seconds``;
   ``too_old``    ``issued_at`` is no longer ago than ``max_manifest_age``;
4. ``replay``     neither ``manifest_id`` nor ``nonce`` was seen before (:class:`NonceStore`,
   SQLite in ``state_dir``, survives restarts). The id is *consumed* here, once signature and
   freshness hold, whatever the later checks decide: a coordinator resends under a new id;
5. ``cohort_hash`` each cohort's ``expression`` reproduces its ``sha256`` (see below);
   ``cohort_not_approved`` each ``sha256`` is one the site approved;
6. ``analysis``   every analysis is in ``allowed_analyses``;
7. ``site``       this site is in ``target_sites``;
8. ``study_not_approved`` / ``analysis`` / ``cohort_not_approved``: the analyses are ones this
   agent runs, a study spec is one the site approved (by sha256) and its cohorts are in the
   manifest (:func:`preflight`). All of this before the CDM is opened.

Every decision of :meth:`ManifestPolicy.check` is written to the audit log first; a refusal
then raises :class:`PolicyRefusal`. :meth:`ManifestPolicy.evaluate` applies the same rules for
a dry run: it only looks the nonce up (never claims it) and writes no audit entry. The
effective minimum cell count is ``max(manifest.min_cell_count, site floor)``.

**Cohort hashes.** Sites approve definition *files* by the sha256 of their bytes (the catalog).
Those files are written by ``scripts/build_cohort_definitions.py`` as
``json.dumps(expression, indent=2, ensure_ascii=False) + "\n"`` in UTF-8, which
:func:`cohort_file_bytes` reproduces exactly from the parsed expression *if its key order is
the file's* (an in-memory manifest built from the file; ``json``/pydantic keep order). A
manifest *file* (``bundle.render``) sorts every key, so that order is lost; then the
expression is accepted only when the site holds the approved file for that hash (approved via
``approved_cohorts.catalogs`` or ``.files``) and the expression equals that file's content,
compared as canonical JSON (so ``1``, ``1.0`` and ``true`` differ). A hash approved bare
(``approved_cohorts.sha256``) therefore only admits order-preserving manifests. Anything
else is refused: an altered expression cannot keep its approved hash.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from optima_common import bundle, protocol
from optima_common.bundle import ManifestCohort, StudyManifest
from optima_common.errors import PolicyRefusal
from site_agent.audit import MAX_STR, AuditLog, canonical_json
from site_agent.config import SiteConfig

AUDIT_FILE = "audit.jsonl"
ANALYSES = protocol.ANALYSES  # what this agent version can run (site.toml may allow only these)
NONCE_FILE = "seen_manifests.sqlite3"


@dataclass(frozen=True)
class Decision:
    """An accepted manifest: what to run and with which protection."""

    manifest: StudyManifest
    manifest_sha256: str
    signer_key_id: str
    effective_min_cell_count: int
    cohorts: tuple[ManifestCohort, ...]
    analyses: tuple[str, ...]


def cohort_file_bytes(expression: dict[str, Any]) -> bytes:
    """The bytes the catalog hashes (same serialiser as build_cohort_definitions.dumps)."""
    return (json.dumps(expression, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


class NonceStore:
    """Persistent set of manifest ids and nonces already seen (SQLite; one row per claim)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute("CREATE TABLE IF NOT EXISTS seen (manifest_id TEXT NOT NULL UNIQUE, "
                        "nonce TEXT NOT NULL UNIQUE, study_id TEXT, seen_at TEXT NOT NULL)")

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        con.execute("PRAGMA synchronous=FULL")
        return con

    def seen(self, manifest_id: str, nonce: str) -> bool:
        """Whether the id or the nonce was claimed before."""
        con = self._connect()
        try:
            row = con.execute("SELECT 1 FROM seen WHERE manifest_id = ? OR nonce = ?", (manifest_id, nonce)).fetchone()
        finally:
            con.close()
        return row is not None

    def claim(self, manifest_id: str, nonce: str, study_id: str | None = None) -> bool:
        """Record the pair atomically; False if either was seen before (a replay)."""
        con = self._connect()
        try:
            con.execute("INSERT INTO seen VALUES (?, ?, ?, ?)",
                        (manifest_id, nonce, study_id, dt.datetime.now(dt.UTC).isoformat()))
            return True
        except sqlite3.IntegrityError:
            return False
        finally:
            con.close()


def _short(s: Any) -> str | None:
    """An unauthenticated string, cut so the audit guard accepts it."""
    return None if s is None else str(s)[:100]


class ManifestPolicy:
    """Decides on manifests for one site and records each decision in the audit log."""

    def __init__(self, config: SiteConfig, audit: AuditLog, nonce_store: NonceStore):
        self.config = config
        self.audit = audit
        self.nonces = nonce_store
        self.trusted = config.trusted_keys()
        self.revoked = config.revoked_key_ids()
        self.approved = config.approved_cohort_files()

    @classmethod
    def from_config(cls, config: SiteConfig) -> ManifestPolicy:
        """Audit log and nonce store at their standard places in ``config.state_dir``."""
        return cls(config, AuditLog(config.state_dir / AUDIT_FILE), NonceStore(config.state_dir / NONCE_FILE))

    def check(self, manifest: StudyManifest | dict | str | bytes, *, now: dt.datetime | None = None) -> Decision:
        """Accept (returns a :class:`Decision`) or refuse (raises :class:`PolicyRefusal`); audited."""
        now = now or dt.datetime.now(dt.UTC)
        ids: dict[str, str | None] = {"manifest_id": None, "study_id": None}
        try:
            m = self._parse(manifest)
            ids = {"manifest_id": _short(m.manifest_id), "study_id": _short(m.study_id)}
            decision = self._apply_rules(m, now, claim=True)
        except PolicyRefusal as refusal:
            self.audit.append("refused", **ids, detail={"check": refusal.check, "reason": refusal.reason[:MAX_STR]})
            raise
        signer = decision.signer_key_id
        self.audit.append("accepted", **ids, detail={
            "manifest_sha256": decision.manifest_sha256,
            "signer_key_id": signer,
            "study_version": _short(m.study_version),
            "analyses": [_short(a) for a in m.analyses][:50],
            "cohort_sha256": [c.sha256 for c in m.cohorts][:50],
            "requested_min_cell_count": m.min_cell_count,
            "effective_min_cell_count": decision.effective_min_cell_count,
            "review_mode": self.config.review_mode,
        })
        return decision

    def evaluate(self, manifest: StudyManifest | dict | str | bytes, *, now: dt.datetime | None = None) -> Decision:
        """The rules of :meth:`check` for a dry run: the nonce is looked up, never claimed; nothing is audited."""
        return self._apply_rules(self._parse(manifest), now or dt.datetime.now(dt.UTC), claim=False)

    def _apply_rules(self, m: StudyManifest, now: dt.datetime, *, claim: bool) -> Decision:
        signer = self._check_signature(m)
        self._check_times(m, now)
        fresh = (self.nonces.claim(m.manifest_id, m.nonce, m.study_id) if claim
                 else not self.nonces.seen(m.manifest_id, m.nonce))
        if not fresh:
            raise PolicyRefusal("replay", f"manifest id {_short(m.manifest_id)!r} or its nonce was seen before")
        for c in m.cohorts:
            self._check_cohort(c)
        if not m.cohorts:
            raise PolicyRefusal("cohort_not_approved", "the manifest lists no cohorts")
        refused = [a for a in m.analyses if a not in self.config.allowed_analyses]
        if refused:
            names = ", ".join(map(str, refused))[:150]
            raise PolicyRefusal("analysis", f"analyses not allowed at this site: {names}")
        if self.config.site not in m.target_sites:
            raise PolicyRefusal("site", f"site {self.config.site!r} is not among the target sites")
        decision = Decision(
            manifest=m, manifest_sha256=bundle.manifest_sha256(m), signer_key_id=signer,
            effective_min_cell_count=self.config.effective_min_cell_count(m.min_cell_count),
            cohorts=m.cohorts, analyses=m.analyses,
        )
        preflight(decision, self.config)  # 8. study spec approved, analyses runnable
        return decision

    # --- the individual rules -----------------------------------------------------------

    @staticmethod
    def _parse(manifest: StudyManifest | dict | str | bytes) -> StudyManifest:
        if isinstance(manifest, StudyManifest):
            return manifest
        try:
            if isinstance(manifest, (str, bytes)):
                return StudyManifest.model_validate_json(manifest)
            return StudyManifest.model_validate(manifest)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            raise PolicyRefusal("malformed", f"not a study manifest: {where}: {err['msg']}"[:MAX_STR]) from None

    def _check_signature(self, m: StudyManifest) -> str:
        if m.signature is None:
            raise PolicyRefusal("signature", "the manifest is not signed")
        if m.signature.key_id in self.revoked:
            raise PolicyRefusal("revoked", f"signed by key {m.signature.key_id[:16]}…, which this site revoked")
        if m.signature.key_id not in self.trusted:
            raise PolicyRefusal("signature",
                                f"signed by key {m.signature.key_id[:16]}…, not a pinned coordinator key")
        self._check_schema(m)
        try:
            bundle.verify(m, self.trusted)
        except bundle.BundleError as exc:
            raise PolicyRefusal("signature", f"signature does not verify: {exc}"[:MAX_STR]) from None
        return m.signature.key_id

    @staticmethod
    def _check_schema(m: StudyManifest) -> None:
        if m.kind != "study_manifest" or m.schema_version not in bundle.SUPPORTED_SCHEMA_VERSIONS:
            raise PolicyRefusal("schema", f"kind {_short(m.kind)!r} schema_version {m.schema_version} is not a "
                                          f"supported study_manifest {sorted(bundle.SUPPORTED_SCHEMA_VERSIONS)}")

    def _check_times(self, m: StudyManifest, now: dt.datetime) -> None:
        if m.issued_at.tzinfo is None or m.expires_at.tzinfo is None:
            raise PolicyRefusal("schema", "issued_at and expires_at must carry a time zone")
        if m.expires_at <= now:
            raise PolicyRefusal("expired", f"expired at {m.expires_at.isoformat()}")
        if m.issued_at > now + dt.timedelta(seconds=self.config.clock_skew_seconds):
            raise PolicyRefusal("future", f"issued at {m.issued_at.isoformat()}, in the future beyond the clock skew")
        if now - m.issued_at > self.config.max_manifest_age:
            raise PolicyRefusal("too_old", f"issued at {m.issued_at.isoformat()}, longer ago than "
                                           f"max_manifest_age {self.config.max_manifest_age}")

    def _check_cohort(self, c: ManifestCohort) -> None:
        label = f"cohort {_short(c.name)!r} ({c.cohort_definition_id})"
        if hashlib.sha256(cohort_file_bytes(c.expression)).hexdigest() != c.sha256:
            local = self.approved.get(c.sha256)
            if local is None or not self._equals_approved_file(c, local):
                raise PolicyRefusal("cohort_hash", f"{label}: expression does not reproduce sha256 {c.sha256[:12]}…")
        if c.sha256 not in self.approved:
            raise PolicyRefusal("cohort_not_approved",
                                f"{label}: sha256 {c.sha256[:12]}… is not approved at this site")

    @staticmethod
    def _equals_approved_file(c: ManifestCohort, path: Path) -> bool:
        """Key order lost in transit: equal (canonical JSON) to the approved local file?"""
        try:
            data = path.read_bytes()
            return (hashlib.sha256(data).hexdigest() == c.sha256
                    and canonical_json(json.loads(data)) == canonical_json(c.expression))
        except (OSError, ValueError):
            return False


def approved_study_spec(config: SiteConfig, spec_sha256: str) -> Path:
    """The study spec with this sha256 from a ``studies/`` folder beside an approved catalog."""
    for catalog in config.approved_cohorts.catalogs:
        for path in sorted((catalog.parent / "studies").glob("*.json")):
            if hashlib.sha256(path.read_bytes()).hexdigest() == spec_sha256:
                return path
    raise PolicyRefusal("study_not_approved", f"study spec sha256 {spec_sha256[:12]}… is not in an approved catalog")


def preflight(decision: Decision, config: SiteConfig) -> Path | None:
    """Every policy decision that still depends on the manifest, taken before the CDM is opened.

    Analyses this agent cannot run, a study spec the site never approved (by sha256) and a study
    whose cohorts are not among the manifest's are refused here, so a refused manifest opens no
    database connection and writes nothing. Returns the approved study spec path (or None).
    """
    unknown = [a for a in decision.analyses if a not in ANALYSES]
    if unknown:
        raise PolicyRefusal("analysis", f"this agent version cannot run analyses {unknown}")
    if "genomics_profile" in decision.analyses and config.genomics is None:
        raise PolicyRefusal("analysis", "genomics_profile: this site has no [genomics] inputs in site.toml")
    if "genomics_profile" in decision.analyses and config.genomics.clinical is None:  # clinical from the CDM
        from site_agent.nlp.cdm_run import require_breast_approved

        require_breast_approved(config, "genomics_profile (clinical data from the CDM)")
    if "nlp_metastasis" in decision.analyses:  # before data: the extra and the cohort it builds
        from site_agent.nlp.cdm_run import nlp_preflight

        nlp_preflight(config)
    if "sclc_study" not in decision.analyses:
        return None
    from site_agent.study_spec import load_study

    params = decision.manifest.parameters.get("sclc_study") or {}
    sha = params.get("spec_sha256")
    if not isinstance(sha, str):
        raise PolicyRefusal("malformed", "sclc_study needs parameters.sclc_study.spec_sha256")
    path = approved_study_spec(config, sha)
    study = load_study(path)
    have = {c.sha256 for c in decision.cohorts}
    missing = [d.cohort_name for d in (study.target, study.progression, study.death) if d.sha256 not in have]
    if missing:
        raise PolicyRefusal("cohort_not_approved", f"the study's cohorts {missing} are not in the manifest")
    return path
