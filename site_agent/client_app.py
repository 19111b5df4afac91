"""The site's Flower ClientApp: thin handlers over the policy, the study runner and the bundle.

A SuperNode started with ``--node-config 'site-config="/etc/optima/site.toml"'`` runs this
app for every message the coordinator's ServerApp sends:

- ``query``: a signed study manifest (``content["manifest"]["json"]``). The site policy
  checks it first (pinned coordinator key, approved cohort hashes, nonce never seen, not
  expired, allowed analyses, this site targeted); a refused manifest runs nothing against
  the CDM. An accepted one runs through :func:`site_agent.study_exec.execute` (the same
  code as ``site-agent run-manifest``); the signed bundle is then released, or, in review
  mode, queued in the outbox until a person approves it.
- ``query.collect``: asks again for the answer to a manifest id (a coordinator that lost a
  reply, restarted, or waits for a review). Releases only what was already released or
  approved; never runs anything.
- ``query.cox``: one Newton-Raphson evaluation of the study's site-stratified Cox model
  for a manifest this site released (:mod:`site_agent.cox_service`, budgeted and audited).
- ``train`` / ``evaluate``: federated image training (:mod:`site_agent.training.federated`).

Every reply is ``content["reply"]``: a ConfigRecord with ``site``, ``status`` (one of
:data:`optima_common.bundle.REPLY_STATUSES`), ``reason`` and, when done, ``bundle`` (the signed
bundle file text). Every decision is in the site's hash-chained audit log.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from optima_common import bundle
from optima_common import protocol as P
from optima_common.errors import CdmConnectionError, CdmValidationError, ConfigError, OptimaError
from optima_common.fileio import write_atomic
from site_agent.audit import MAX_STR, AuditLog
from site_agent.config import SiteConfig, load_config
from site_agent.policy import AUDIT_FILE, ManifestPolicy, PolicyRefusal

log = logging.getLogger(__name__)

app = ClientApp()

RELEASED_DIR = "released"
NODE_CONFIG_KEY = P.NODE_CONFIG_SITE


def site_config(context: Context) -> SiteConfig:
    path = context.node_config.get(NODE_CONFIG_KEY)
    if not path:
        raise OptimaError(f"this SuperNode has no node config {NODE_CONFIG_KEY!r}; start it with "
                          f"--node-config '{NODE_CONFIG_KEY}=\"/path/to/site.toml\"'")
    return load_config(str(path))


def reply(msg: Message, site: str, status: str, reason: str = "", bundle_text: str = "") -> Message:
    assert status in bundle.REPLY_STATUSES, status
    record = ConfigRecord({P.SITE: site, P.STATUS: status, P.REASON: reason[:MAX_STR], P.BUNDLE: bundle_text})
    return Message(RecordDict({P.REPLY_RECORD: record}), reply_to=msg)


def released_path(config: SiteConfig, manifest_id: str) -> Path:
    safe = "".join(ch for ch in manifest_id if ch.isalnum() or ch in "-_")[:80] or "manifest"
    return config.state_dir / RELEASED_DIR / f"{safe}.bundle"


def release(config: SiteConfig, audit: AuditLog, signed: bundle.ResultBundle, *, study_id: str | None) -> str:
    """Keep what leaves (so a lost reply can be collected again) and audit it; the file text."""
    data = bundle.render(signed)
    write_atomic(released_path(config, signed.manifest_id), data)
    audit.append("released", manifest_id=signed.manifest_id, study_id=study_id,
                 detail={"bundle_sha256": hashlib.sha256(data).hexdigest(),
                         "min_cell_count": signed.suppression.min_cell_count})
    return data.decode("utf-8")


def _failure_line(exc: BaseException) -> str:
    """What a failure may say outside the site: our own one-line errors, else only the error type.

    A database or library message can quote values from the data, so it stays in the site's
    log (``log.exception``) and never goes into the reply.
    """
    if isinstance(exc, OptimaError):
        first = (str(exc).strip().splitlines() or [""])[0]
        return f"{type(exc).__name__}: {first}"[:MAX_STR]
    return f"{type(exc).__name__} (details in the site's log)"


def check_site_cdm(config: SiteConfig) -> None:
    """Open the site's CDM and check its tables (CdmConnectionError / CdmValidationError, one line)."""
    from site_agent.cdm.check import validate_cdm

    with config.open_cdm() as cdm:
        validate_cdm(cdm)


def answer_manifest(config: SiteConfig, manifest_json: str) -> tuple[str, str, str]:
    """(status, reason, bundle text) for a manifest; the whole site-side decision, audited."""
    from site_agent.study_exec import execute

    policy = ManifestPolicy.from_config(config)
    try:  # a CDM that cannot be used fails the run before the policy claims the manifest's nonce
        check_site_cdm(config)
    except (CdmConnectionError, CdmValidationError, ConfigError) as exc:
        return "failed", f"the site's CDM cannot be used: {exc}", ""
    try:
        decision = policy.check(manifest_json)
    except PolicyRefusal as refusal:  # already audited by the policy
        return "refused", f"{refusal.check}: {refusal.reason}", ""
    m = decision.manifest
    from site_agent.cox_service import accepted_path

    write_atomic(accepted_path(config, m.manifest_id), bundle.render(m))  # later Cox requests check it
    try:
        signed = execute(decision, config)
    except PolicyRefusal as refusal:
        policy.audit.append("refused", manifest_id=m.manifest_id, study_id=m.study_id,
                            detail={"check": refusal.check, "reason": refusal.reason[:MAX_STR]})
        return "refused", f"{refusal.check}: {refusal.reason}", ""
    except Exception as exc:  # noqa: BLE001 - a failed study is an answer, not a crashed node
        log.exception("manifest %s failed", m.manifest_id)
        policy.audit.append("failed", manifest_id=m.manifest_id, study_id=m.study_id,
                            detail={"error": _failure_line(exc)})
        return "failed", _failure_line(exc), ""
    if config.review_mode:
        from site_agent.governance.outbox import Outbox

        review_id = Outbox(config.state_dir).put(signed, audit=policy.audit, study_id=m.study_id)
        return "awaiting_review", f"queued for review as {review_id}", ""
    return "done", "", release(config, policy.audit, signed, study_id=m.study_id)


def collect(config: SiteConfig, manifest_id: str) -> tuple[str, str, str]:
    """The answer to an earlier manifest: released, approved, rejected, still pending, or unknown."""
    path = released_path(config, manifest_id)
    if path.is_file():
        return "done", "", path.read_text(encoding="utf-8")
    if not config.review_mode and not (config.state_dir / "outbox").is_dir():
        return "unknown", f"no release for manifest {manifest_id[:40]} at this site", ""
    from site_agent.governance.outbox import Outbox

    outbox = Outbox(config.state_dir)
    state, value = outbox.decision_for(manifest_id)
    if state == "approved":
        audit = AuditLog(config.state_dir / AUDIT_FILE)
        text = release(config, audit, value, study_id=None)
        outbox.mark_sent(manifest_id, audit=audit)
        return "done", "", text
    if state == "rejected":
        return "rejected", str(value or "rejected by the site's reviewer"), ""
    if state == "pending":
        return "awaiting_review", "waiting for the site's reviewer", ""
    return "unknown", f"no release for manifest {manifest_id[:40]} at this site", ""


@app.query()
def query(msg: Message, context: Context) -> Message:
    config = site_config(context)
    manifest_json = str(msg.content[P.MANIFEST_RECORD][P.JSON])
    status, reason, text = answer_manifest(config, manifest_json)
    return reply(msg, config.site, status, reason, text)


@app.query(P.COLLECT_ACTION)
def query_collect(msg: Message, context: Context) -> Message:
    config = site_config(context)
    status, reason, text = collect(config, str(msg.content[P.COLLECT_RECORD][P.MANIFEST_ID]))
    return reply(msg, config.site, status, reason, text)


@app.query(P.COX_ACTION)
def query_cox(msg: Message, context: Context) -> Message:
    """Federated Cox: this stratum's log likelihood, score and information at ``beta``."""
    from site_agent.analyses.cox import CoxRefusal
    from site_agent.cox_service import answer_cox, cox_columns

    config = site_config(context)
    request = msg.content[P.COX_RECORD]
    manifest_id, beta = str(request[P.MANIFEST_ID]), [float(b) for b in request[P.BETA]]
    try:
        if not beta:
            cols = cox_columns(config, manifest_id)
            return Message(RecordDict({P.REPLY_RECORD: ConfigRecord({P.SITE: config.site, P.STATUS: P.DONE, P.REASON: "",
                                                                     P.COLUMNS: list(cols)})}), reply_to=msg)
        loglik, score, info = answer_cox(config, manifest_id, beta)
    except CoxRefusal as exc:
        return reply(msg, config.site, "refused", str(exc))
    record = ConfigRecord({P.SITE: config.site, P.STATUS: P.DONE, P.REASON: "", P.LOGLIK: float(loglik),
                           P.SCORE: [float(v) for v in score], P.INFO: [float(v) for v in np.ravel(info)]})
    return Message(RecordDict({P.REPLY_RECORD: record}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    from site_agent.training.federated import handle_train

    return handle_train(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    from site_agent.training.federated import handle_evaluate

    return handle_evaluate(msg, context)
