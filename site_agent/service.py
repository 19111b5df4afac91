"""The site: its config, policy, audit log and state folder, and every answer it gives.

One :class:`Site` object per request owns what the site knows (``site.toml``), so the Flower
adapter (:mod:`site_agent.client_app`) and the offline commands (``run-manifest``,
``release``) give the same answers through the same code:

- :meth:`Site.answer_manifest`: policy check first (signature, pinned key, approved cohort
  hashes and study spec, analyses, target, nonce, expiry; a refused manifest touches no
  database), then the study (:func:`site_agent.study_exec.execute`), then release or review;
- :meth:`Site.collect`: hand out again what was released or approved; never runs anything;
- :meth:`Site.cox_columns` / :meth:`Site.cox`: federated Cox answers behind their guard.

Every decision is appended to the site's hash-chained audit log.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from optima_common import bundle
from optima_common import protocol as P
from optima_common.errors import (
    CdmConnectionError,
    CdmValidationError,
    ConfigError,
    OptimaError,
    PolicyRefusal,
)
from optima_common.fileio import write_atomic
from site_agent.audit import MAX_STR, AuditLog
from site_agent.config import SiteConfig, load_config
from site_agent.governance.released import accepted_path, released_path
from site_agent.policy import AUDIT_FILE, ManifestPolicy

log = logging.getLogger(__name__)

Answer = tuple[str, str, str]  # (status, reason, bundle text)


def failure_line(exc: BaseException) -> str:
    """What a failure may say outside the site: our own one-line errors, else only the error type.

    A database or library message can quote values from the data, so it stays in the site's
    log (``log.exception``) and never goes into the reply.
    """
    if isinstance(exc, OptimaError):
        first = (str(exc).strip().splitlines() or [""])[0]
        return f"{type(exc).__name__}: {first}"[:MAX_STR]
    return f"{type(exc).__name__} (details in the site's log)"


@dataclass
class Site:
    config: SiteConfig

    @classmethod
    def from_file(cls, path: str) -> Site:
        return cls(load_config(path))

    @property
    def name(self) -> str:
        return self.config.site

    @cached_property
    def audit(self) -> AuditLog:
        return AuditLog(self.config.state_dir / AUDIT_FILE)

    def policy(self) -> ManifestPolicy:
        return ManifestPolicy.from_config(self.config)

    def release(self, audit: AuditLog, signed: bundle.ResultBundle, *, study_id: str | None) -> str:
        """Keep what leaves (so a lost reply can be collected again) and audit it; the file text."""
        data = bundle.render(signed)
        write_atomic(released_path(self.config.state_dir, signed.manifest_id), data)
        audit.append("released", manifest_id=signed.manifest_id, study_id=study_id,
                     detail={"bundle_sha256": hashlib.sha256(data).hexdigest(),
                             "min_cell_count": signed.suppression.min_cell_count})
        return data.decode("utf-8")

    def check_cdm(self) -> None:
        """Open the site's CDM and check its tables (CdmConnectionError / CdmValidationError, one line)."""
        from site_agent.cdm.check import validate_cdm

        with self.config.open_cdm() as cdm:
            validate_cdm(cdm)

    def answer_manifest(self, manifest_json: str, *, raise_cdm_errors: bool = False) -> Answer:
        """(status, reason, bundle text) for a manifest; the whole site-side decision, audited.

        Order: every policy rule first (nothing opened, the nonce only looked up), then the
        CDM (a CDM that cannot be used fails the run *before* the nonce is claimed, so the
        same manifest can run once the setting is fixed), then the policy again, claiming
        the nonce and auditing, then the study. ``raise_cdm_errors``: the offline command
        wants the CDM error itself (its exit code), not a "failed" answer.
        """
        from site_agent.study_exec import execute

        policy = self.policy()
        try:
            preview = policy.evaluate(manifest_json)
        except PolicyRefusal:
            preview = None  # policy.check below refuses again and audits it; the CDM stays closed
        if preview is not None:
            try:
                self.check_cdm()
            except (CdmConnectionError, CdmValidationError, ConfigError) as exc:
                if raise_cdm_errors:
                    raise
                policy.audit.append("failed", manifest_id=preview.manifest.manifest_id,
                                    study_id=preview.manifest.study_id, detail={"error": failure_line(exc)})
                return P.FAILED, f"the site's CDM cannot be used: {exc}"[:MAX_STR], ""
        try:
            decision = policy.check(manifest_json)
        except PolicyRefusal as refusal:  # already audited by the policy
            return P.REFUSED, f"{refusal.check}: {refusal.reason}", ""
        m = decision.manifest
        write_atomic(accepted_path(self.config.state_dir, m.manifest_id), bundle.render(m))  # for later Cox requests
        try:
            signed = execute(decision, self.config)
        except PolicyRefusal as refusal:
            policy.audit.append("refused", manifest_id=m.manifest_id, study_id=m.study_id,
                                detail={"check": refusal.check, "reason": refusal.reason[:MAX_STR]})
            return P.REFUSED, f"{refusal.check}: {refusal.reason}", ""
        except Exception as exc:
            log.exception("manifest %s failed", m.manifest_id)
            policy.audit.append("failed", manifest_id=m.manifest_id, study_id=m.study_id,
                                detail={"error": failure_line(exc)})
            return P.FAILED, failure_line(exc), ""
        if self.config.review_mode:
            from site_agent.governance.outbox import Outbox

            review_id = Outbox(self.config.state_dir).put(signed, audit=policy.audit, study_id=m.study_id)
            return P.AWAITING_REVIEW, f"queued for review as {review_id}", ""
        return P.DONE, "", self.release(policy.audit, signed, study_id=m.study_id)

    def collect(self, manifest_id: str) -> Answer:
        """The answer to an earlier manifest: released, approved, rejected, still pending, or unknown."""
        path = released_path(self.config.state_dir, manifest_id)
        if path.is_file():
            return P.DONE, "", path.read_text(encoding="utf-8")
        unknown = (P.UNKNOWN, f"no release for manifest {manifest_id[:40]} at this site", "")
        if not self.config.review_mode and not (self.config.state_dir / "outbox").is_dir():
            return unknown
        from site_agent.governance.outbox import Outbox

        outbox = Outbox(self.config.state_dir)
        state, value = outbox.decision_for(manifest_id)
        if state == "approved":
            text = self.release(self.audit, value, study_id=None)
            outbox.mark_sent(manifest_id, audit=self.audit)
            return P.DONE, "", text
        if state == "rejected":
            return P.REJECTED, str(value or "rejected by the site's reviewer"), ""
        if state == "pending":
            return P.AWAITING_REVIEW, "waiting for the site's reviewer", ""
        return unknown

    def cox_columns(self, manifest_id: str) -> tuple[str, ...]:
        from site_agent.cox_service import cox_columns

        return cox_columns(self.config, manifest_id)

    def cox(self, manifest_id: str, beta: list[float]) -> tuple[float, np.ndarray, np.ndarray]:
        """(loglik, score, information) of this site's stratum, or :class:`CoxRefusal` (audited)."""
        from site_agent.cox_service import answer_cox

        return answer_cox(self.config, manifest_id, beta)
