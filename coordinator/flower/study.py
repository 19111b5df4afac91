"""A network study at the coordinator: spec -> signed manifest -> Flower queries -> verified bundles.

:func:`manifest_from_spec` turns a study spec (``cohort_definitions/studies/*.json``) and its
catalog into an unsigned manifest: the cohorts' ATLAS JSON with their catalog sha256 and the
spec's own sha256 (a site runs only a spec it has, byte for byte, in an approved catalog).

:func:`send_study` runs on any Flower ``Grid`` (the SuperLink's in a deployment, an
in-process one in tests): one ``query`` message per node, a bounded wait, then every answer
is judged here. A ``done`` answer's bundle must verify against the pinned site keys and
answer exactly this manifest; it is stored once (a site that answers twice, or is asked
again after a restart, adds nothing). Every target site ends with a status and a reason
(done, refused, failed, awaiting_review, rejected, missing), and the study fails with one
line when fewer than ``min_sites`` are done.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from pydantic import BaseModel

from coordinator.flower.exchange import send_and_receive
from coordinator.store import packing
from coordinator.store.repository import FINAL_STATUSES
from coordinator.trust.manifest import build_manifest, verify_bundle_file
from optima_common import protocol as P
from optima_common.bundle import BundleError, StudyManifest, render
from optima_common.errors import CoordinatorError, StoreError, StudyIncomplete
from optima_common.fileio import write_atomic

log = logging.getLogger(__name__)


class SiteOutcome(BaseModel):
    site: str
    status: str
    reason: str = ""


class StudyOutcome(BaseModel):
    manifest_id: str
    study_id: str
    sites: list[SiteOutcome]
    done: int
    min_sites: int
    complete: bool
    elapsed_seconds: float


def _read_json(path: Path, what: str) -> tuple[bytes, object]:
    try:
        raw = path.read_bytes()
        return raw, json.loads(raw)
    except OSError as exc:
        raise CoordinatorError(f"{path}: cannot read the {what} ({exc.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f" at line {exc.lineno}: {exc.msg}" if isinstance(exc, json.JSONDecodeError) else ""
        raise CoordinatorError(f"{path}: malformed JSON{where}") from None


def _catalog(spec_path: Path, spec: dict) -> tuple[Path, dict[str, dict]]:
    catalog_path = (spec_path.parent / spec.get("catalog", "../catalog.json")).resolve()
    _, doc = _read_json(catalog_path, "catalog")
    return catalog_path, {c["name"]: c for c in doc.get("cohorts", [])}


def manifest_from_spec(spec_path: str | Path, *, target_sites: Iterable[str], min_sites: int,
                       analyses: Iterable[str] = ("sclc_study",), extra_cohorts: Iterable[str] = (),
                       min_cell_count: int | None = None,
                       valid_for: dt.timedelta = dt.timedelta(days=2)) -> StudyManifest:
    """An unsigned manifest for the spec's cohorts (plus ``extra_cohorts`` by catalog name)."""
    spec_path = Path(spec_path)
    raw, spec = _read_json(spec_path, "study spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("cohorts"), dict) or "study_id" not in spec:
        raise CoordinatorError(f"{spec_path}: not a study spec (needs study_id and cohorts)")
    catalog_path, entries = _catalog(spec_path, spec)
    names = list(dict.fromkeys([*extra_cohorts, *spec["cohorts"].values()]))
    unknown = [n for n in names if n not in entries]
    if unknown:
        raise CoordinatorError(f"{spec_path}: cohorts {unknown} are not in the catalog {catalog_path}")
    cohorts = []
    for name in names:
        e = entries[name]
        path = (catalog_path.parent / e["path"]).resolve()
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != e["sha256"]:
            raise CoordinatorError(f"{path}: sha256 differs from the catalog; restore the file or rebuild the catalog")
        cohorts.append({"cohort_definition_id": e["cohort_definition_id"], "name": name, "sha256": e["sha256"],
                        "expression": json.loads(data)})
    return build_manifest(
        study_id=spec["study_id"], study_version=str(spec.get("version", "1")), cohorts=cohorts,
        analyses=analyses, parameters={"sclc_study": {"spec_sha256": hashlib.sha256(raw).hexdigest()}},
        min_cell_count=int(min_cell_count if min_cell_count is not None else spec.get("min_cell_count", 5)),
        target_sites=target_sites, min_sites=min_sites, valid_for=valid_for)


def wait_for_nodes(grid: Grid, expected: int, timeout: float, poll: float = 1.0) -> list[int]:
    """Node ids once ``expected`` SuperNodes are connected, or whatever is there at ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= expected or time.monotonic() >= deadline:
            return nodes
        time.sleep(poll)


def _messages(nodes: list[int], kind: str, record: ConfigRecord, group: str) -> list[Message]:
    message_type = P.QUERY if kind == P.MANIFEST_RECORD else P.QUERY_COLLECT
    return [Message(RecordDict({kind: record}), dst_node_id=n, message_type=message_type, group_id=group)
            for n in nodes]


def _judge(reply: Message, manifest: StudyManifest, trust_dir: Path, store, bundles_dir: Path | None
           ) -> SiteOutcome | None:
    if reply.has_error():
        log.warning("node %s answered with an error: %s", reply.metadata.src_node_id, reply.error.reason)
        return None  # the site is unknown; it stays "missing" unless another reply names it
    r = reply.content[P.REPLY_RECORD]
    site, status, reason = str(r[P.SITE]), str(r[P.STATUS]), str(r[P.REASON])
    if site not in manifest.target_sites:
        return None
    if status != "done":
        return SiteOutcome(site=site, status=status if status != "unknown" else "missing", reason=reason)
    data = str(r[P.BUNDLE]).encode("utf-8")
    with tempfile.TemporaryDirectory(prefix="optima-bundle-") as tmp:
        path = Path(tmp) / f"{site}.bundle"
        path.write_bytes(data)
        try:
            bundle = verify_bundle_file(path, trust_dir, manifest=manifest)
        except BundleError as exc:
            return SiteOutcome(site=site, status="failed", reason=f"bundle refused: {exc}")
    if bundle.site != site:
        return SiteOutcome(site=site, status="failed", reason=f"bundle names site {bundle.site!r}")
    try:
        store.add_bundle(bundle, data)
    except StoreError as exc:  # e.g. the study was cancelled for this site while we waited
        return SiteOutcome(site=site, status="cancelled" if "cancelled" in str(exc) else "failed", reason=str(exc))
    if bundles_dir is not None:
        # gzip-compressed copy (~35x smaller); read_bundle and `coordinator verify` read it as is
        write_atomic(bundles_dir / f"{site}.bundle", packing.pack(data))
    return SiteOutcome(site=site, status="done")


def _ask(grid: Grid, nodes: list[int], kind: str, manifest: StudyManifest, timeout: float,
         cox_first: bool = False) -> list[Message]:
    if not nodes:
        return []
    if kind == P.COLLECT_RECORD:
        record = ConfigRecord({P.MANIFEST_ID: manifest.manifest_id})
    else:
        record = ConfigRecord({P.JSON: render(manifest).decode("utf-8")})
    if cox_first:
        record[P.COX_FIRST] = True
    return send_and_receive(grid, _messages(nodes, kind, record, manifest.manifest_id), timeout=timeout)


def _cox_part(reply: Message) -> dict[int, dict]:
    """The Cox answer a site put in its study reply, shaped like a ``query.cox`` reply; {} without one."""
    r = reply.content[P.REPLY_RECORD]
    if P.COX_STATUS not in r:
        return {}
    part = {"node": reply.metadata.src_node_id, P.SITE: str(r[P.SITE]), P.STATUS: str(r[P.COX_STATUS]),
            P.REASON: str(r.get(P.COX_REASON, ""))}
    part.update({k: r[k] for k in (P.COLUMNS, P.LOGLIK, P.SCORE, P.INFO) if k in r})
    return {reply.metadata.src_node_id: part}


def _reply_site(reply: Message) -> tuple[str, str] | None:
    if reply.has_error():
        return None
    r = reply.content[P.REPLY_RECORD]
    return str(r[P.SITE]), str(r[P.STATUS])


def send_study(grid: Grid, manifest: StudyManifest, *, store, trust_dir: str | Path, reply_timeout: float,
               node_wait: float = 30.0, bundles_dir: Path | None = None, collect_only: bool = False,
               cox_first: dict[int, dict] | None = None) -> StudyOutcome:
    """Send (or, with ``collect_only``, ask again for) a signed manifest; judge and record every answer.

    ``cox_first`` (a dict to fill): the sites are also asked for the Cox fit's first answer with
    their release (``cox_first`` in the request); the answers of the sites whose bundle was
    accepted go into the dict by Flower node, as :func:`coordinator.flower.cox_rounds.fit_network_cox`
    takes them. A site whose reply has none (an older agent) is asked by the fit itself.

    Resuming (a manifest already sent, e.g. after a coordinator restart): sites with a final
    answer in the store (done, refused, rejected, cancelled) are not asked again where their
    Flower node is known from an earlier reply; every other node gets ``query.collect``,
    never the manifest a second time, except a site that never got it (still ``pending``),
    which gets the manifest after answering ``unknown``. Cancelled sites' answers are not stored.
    """
    from coordinator.store import ops

    if manifest.signature is None:
        raise CoordinatorError("the manifest is not signed; sign it with the coordinator key first")
    started = time.monotonic()
    trust_dir = Path(trust_dir)
    store.add_manifest(manifest)
    mid = manifest.manifest_id
    before = {s.site: s for s in store.site_statuses(mid)}
    final = {site: s for site, s in before.items() if s.has_bundle or s.status in FINAL_STATUSES}
    never_sent = {site for site, s in before.items() if s.status == "pending"}
    resume = collect_only or any(s.status != "pending" for s in before.values())
    known = ops.node_sites(store, mid)
    nodes = wait_for_nodes(grid, len(manifest.target_sites) - len(final), node_wait)
    ask = [n for n in nodes if known.get(n) not in final]
    for site in manifest.target_sites:
        if site not in final:
            store.set_site_status(mid, site, "sent")
    with_cox = cox_first is not None
    replies = _ask(grid, ask, P.COLLECT_RECORD if resume else P.MANIFEST_RECORD, manifest, reply_timeout, with_cox)
    if resume and not collect_only:  # sites that never received the manifest get it now
        first: list[int] = []
        for reply in replies:
            who = _reply_site(reply)
            if who and who[0] in never_sent and who[1] == "unknown":
                first.append(reply.metadata.src_node_id)
        replies += _ask(grid, first, P.MANIFEST_RECORD, manifest, reply_timeout, with_cox)
    outcomes: dict[str, SiteOutcome] = {}
    errors = {reply.metadata.src_node_id: str(reply.error.reason or f"error code {reply.error.code}")
              for reply in replies if reply.has_error()}
    for reply in replies:
        who = _reply_site(reply)
        if who and who[0] in manifest.target_sites:
            ops.note_node(store, mid, reply.metadata.src_node_id, who[0])
        if who and who[0] in final:
            continue  # a final answer is kept; a duplicate adds nothing
        outcome = _judge(reply, manifest, trust_dir, store, bundles_dir)
        if outcome is not None and (outcome.site not in outcomes or outcome.status == "done"):
            outcomes[outcome.site] = outcome
        if with_cox and outcome is not None and outcome.status == "done":
            cox_first.update(_cox_part(reply))
    for site in manifest.target_sites:
        if site in final:
            old = final[site]
            outcomes[site] = SiteOutcome(site=site, status="done" if old.has_bundle else old.status,
                                         reason="answered earlier" if old.has_bundle else (old.reason or ""))
            continue
        outcome = outcomes.setdefault(site, SiteOutcome(
            site=site, status="missing", reason=_missing_reason(site, manifest, known, outcomes, errors,
                                                                reply_timeout)))
        if outcome.status != "done" and ops.is_cancelled(store, mid):  # cancelled while we waited
            outcome = outcomes[site] = SiteOutcome(site=site, status="cancelled", reason="study cancelled")
        store.set_site_status(mid, site, outcome.status, outcome.reason or None)
        ops.propagate_to_parent(store, mid, site, outcome.status, outcome.reason or None)
    done = sum(o.status == "done" for o in outcomes.values())
    result = StudyOutcome(manifest_id=mid, study_id=manifest.study_id,
                          sites=[outcomes[s] for s in manifest.target_sites], done=done,
                          min_sites=manifest.min_sites, complete=done >= manifest.min_sites,
                          elapsed_seconds=round(time.monotonic() - started, 2))
    log.info("study %s: %d of %d sites done", manifest.study_id, done, len(manifest.target_sites))
    return result


def _missing_reason(site: str, manifest: StudyManifest, known: dict[int, str], outcomes: dict[str, SiteOutcome],
                    errors: dict[int, str], reply_timeout: float) -> str:
    """Why a site has no answer: Flower's own error for its node (e.g. "Node Unavailable" for a
    SuperNode that stopped heartbeating) where the node is known to be that site's, or is the only
    unexplained error left for the only unexplained site; else no answer within the timeout."""
    mine = [n for n, who in known.items() if who == site and n in errors]
    if not mine:
        unexplained = [n for n in errors if known.get(n) not in outcomes]
        silent = [s for s in manifest.target_sites if s not in outcomes]
        mine = unexplained if len(unexplained) == 1 and silent == [site] else []
    if mine:
        return f"{errors[mine[0]].removeprefix('Error: ')} (reported by Flower for node {mine[0]})"
    return f"no answer within {reply_timeout:g} s (SuperNode down, or slow)"


def require_complete(outcome: StudyOutcome) -> None:
    if not outcome.complete:
        missing = "; ".join(f"{s.site}: {s.status}" + (f" ({s.reason})" if s.reason else "")
                            for s in outcome.sites if s.status != "done")
        exc = StudyIncomplete(f"study {outcome.study_id}: only {outcome.done} of {len(outcome.sites)} sites "
                              f"answered, the study needs {outcome.min_sites}: {missing}")
        exc.outcome = outcome.model_dump()
        raise exc
