"""The site's Flower ClientApp: a thin adapter from Flower messages to :class:`site_agent.service.Site`.

A SuperNode started with ``--node-config 'site-config="/etc/optima/site.toml"'`` runs this
app for every message the coordinator's ServerApp sends (names in :mod:`optima_common.protocol`):
``query`` (a signed manifest), ``query.collect`` (ask again), ``query.cox`` (one Cox
evaluation), ``train``/``evaluate`` (federated image training). Every query reply is the
record ``reply`` with ``site``, ``status``, ``reason`` and, when done, ``bundle``. A ``query`` or
``query.collect`` with ``cox_first`` set (the ServerApp fits the study's Cox model next) also gets,
once the bundle is released, the answer to the Cox fit's first request (the design's columns and
the answer at beta = 0, or a refusal) in the same reply: ``cox_status``, ``cox_reason`` and the
fields of a ``query.cox`` reply.
"""

from __future__ import annotations

import json
import logging

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from optima_common import protocol as P
from optima_common.errors import CoxRefusal, OptimaError, PolicyRefusal
from site_agent.audit import MAX_STR
from site_agent.service import Site, failure_line
from site_agent.training.secagg import secagg_when_asked

app = ClientApp()
log = logging.getLogger(__name__)


def site_for(context: Context) -> Site:
    path = context.node_config.get(P.NODE_CONFIG_SITE)
    if not path:
        raise OptimaError(f"this SuperNode has no node config {P.NODE_CONFIG_SITE!r}; start it with "
                          f"--node-config '{P.NODE_CONFIG_SITE}=\"/path/to/site.toml\"'")
    return Site.from_file(str(path))


def reply(msg: Message, site: str, status: str, reason: str = "", bundle_text: str = "", **extra) -> Message:
    assert status in P.REPLY_STATUSES, status
    record = ConfigRecord({P.SITE: site, P.STATUS: status, P.REASON: reason[:MAX_STR], P.BUNDLE: bundle_text,
                           **extra})
    return Message(RecordDict({P.REPLY_RECORD: record}), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    site = site_for(context)
    record = msg.content[P.MANIFEST_RECORD]
    text = str(record[P.JSON])
    status, reason, bundle_text = site.answer_manifest(text)
    manifest_id = str(json.loads(text)[P.MANIFEST_ID]) if status == P.DONE else ""  # done: a valid manifest
    return reply(msg, site.name, status, reason, bundle_text, **_cox_first(site, record, status, manifest_id))


@app.query(P.COLLECT_ACTION)
def query_collect(msg: Message, context: Context) -> Message:
    site = site_for(context)
    record = msg.content[P.COLLECT_RECORD]
    manifest_id = str(record[P.MANIFEST_ID])
    status, reason, bundle_text = site.collect(manifest_id)
    return reply(msg, site.name, status, reason, bundle_text, **_cox_first(site, record, status, manifest_id))


def _cox_first(site: Site, request: ConfigRecord, status: str, manifest_id: str) -> dict:
    """The Cox fit's first request answered with a released study, when the coordinator asks for it
    (``cox_first`` in the request): saves the fit a round. Its outcome is in ``cox_status``/``cox_reason``."""
    if status != P.DONE or not bool(request.get(P.COX_FIRST, False)):
        return {}
    try:
        cox_status, cox_reason, fields = _cox_answer(site, manifest_id)
    except Exception as exc:  # any failure: the released bundle must still reach the coordinator
        log.exception("the Cox answer sent with manifest %s failed", manifest_id)
        cox_status, cox_reason, fields = P.FAILED, failure_line(exc), {}
    return {P.COX_STATUS: cox_status, P.COX_REASON: cox_reason[:MAX_STR], **fields}


def _cox_answer(site: Site, manifest_id: str, beta: list[float] | None = None) -> tuple[str, str, dict]:
    """(status, reason, fields) of one Cox answer; without ``beta``, the design's columns and the
    answer at beta = 0 (one answer of the budget). A refusal still names the columns when known."""
    fields: dict = {}
    try:
        if not beta:
            fields[P.COLUMNS] = list(site.cox_columns(manifest_id))
            beta = [0.0] * len(fields[P.COLUMNS])
        loglik, score, info = site.cox(manifest_id, beta)
    except (CoxRefusal, PolicyRefusal) as exc:
        return P.REFUSED, str(exc), fields
    return P.DONE, "", {**fields, P.LOGLIK: float(loglik), P.SCORE: [float(v) for v in score],
                        P.INFO: [float(v) for v in np.ravel(info)]}


@app.query(P.COX_ACTION)
def query_cox(msg: Message, context: Context) -> Message:
    """Federated Cox: this stratum's log likelihood, score and information at ``beta``.

    An empty ``beta`` is the fit's first request: the design's columns and, in the same reply,
    the answer at beta = 0 (one answer of the budget), so the fit starts one round earlier. A
    refusal of that answer (e.g. too few events) still names the columns."""
    site = site_for(context)
    request = msg.content[P.COX_RECORD]
    status, reason, fields = _cox_answer(site, str(request[P.MANIFEST_ID]),
                                                [float(b) for b in request[P.BETA]])
    return reply(msg, site.name, status, reason, **fields)


@app.train(mods=[secagg_when_asked])  # SecAgg+ rounds go through Flower's secaggplus_mod
def train(msg: Message, context: Context) -> Message:
    from site_agent.training.secagg import handle_train_any

    return handle_train_any(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    from site_agent.training.federated import handle_evaluate

    return handle_evaluate(msg, context)
