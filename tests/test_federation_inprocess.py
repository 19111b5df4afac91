"""Both Flower apps in process: the coordinator's study flow against the site's ClientApp.

The sites run the real analyses on real (small, synthetic) DuckDB CDMs; only the transport
is replaced (tests/flower_inprocess.py). Each refusal the trust model promises is checked
with its audit entry, and every released count is checked against the minimum cell count.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import re

import pandas as pd
import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp

from coordinator.flower.inprocess import InProcessGrid
from coordinator.flower.study import require_complete, send_study
from coordinator.store import ResultsStore
from coordinator.trust.manifest import sign_manifest
from optima_common.bundle import StudyManifest, load_private_key
from optima_common.errors import StudyIncomplete
from site_agent import client_app as site_app
from site_agent.audit import AuditLog
from tests.federation_sites import build_network


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    return build_network(tmp_path_factory.mktemp("fed"))


@pytest.fixture()
def store(tmp_path):
    return ResultsStore.open(tmp_path / "store.sqlite3")


def audit_events(net, site: str) -> list[dict]:
    return list(AuditLog(net.configs[site].parent / "state" / "audit.jsonl").entries())


def released_counts(csv_text: str) -> pd.Series:
    df = pd.read_csv(io.StringIO(csv_text), dtype=str, keep_default_na=False)
    counts = df[df["estimate_name"].str.contains("count") & (df["variable_name"] != "settings")]
    return pd.to_numeric(counts["estimate_value"], errors="coerce").dropna()


def test_study_round_trip_three_sites(net, store, tmp_path):
    manifest = net.manifest(min_cell_count=2)  # asks for 2: every site's floor of 5 wins
    grid = InProcessGrid(site_app.app, net.node_configs())
    outcome = send_study(grid, manifest, store=store, trust_dir=net.trust, reply_timeout=120,
                         bundles_dir=tmp_path / "bundles")
    assert [(s.site, s.status) for s in outcome.sites] == [(s, "done") for s in net.configs]
    assert outcome.complete and outcome.done == 3
    bundles = store.bundles(manifest.manifest_id)
    assert sorted(b.site for b in bundles) == sorted(net.configs)
    for b in bundles:
        assert b.suppression.min_cell_count == 5 and b.suppression.site_floor == 5
        values = released_counts(b.results_csv)
        assert len(values) > 20
        assert not ((values >= 1) & (values < 5)).any(), b.site  # no count 1..4 ever leaves a site
        assert (tmp_path / "bundles" / f"{b.site}.bundle").is_file()
        types = set(pd.read_csv(io.StringIO(b.results_csv), dtype=str)["variable_level"].dropna())
        assert types  # the CSV is a real summarised_result, not an empty shell
        events = [e["event"] for e in audit_events(net, b.site) if e["manifest_id"] == manifest.manifest_id]
        assert events == ["accepted", "released"]
    # a second answer from the same site adds nothing (restarted site / duplicate reply)
    grid2 = InProcessGrid(site_app.app, net.node_configs())
    again = send_study(grid2, manifest, store=store, trust_dir=net.trust, reply_timeout=60, collect_only=True)
    assert again.done == 3 and len(store.bundles(manifest.manifest_id)) == 3


def test_replayed_manifest_is_refused_and_audited(net, store):
    manifest = net.manifest(sites=["site_north"], min_sites=1, analyses=("cohort_counts",))
    send_study(InProcessGrid(site_app.app, net.node_configs(["site_north"])), manifest, store=store,
               trust_dir=net.trust, reply_timeout=60)
    other = ResultsStore.open(store.engine.url.database + ".2")  # a coordinator that lost its store
    replay = send_study(InProcessGrid(site_app.app, net.node_configs(["site_north"])), manifest, store=other,
                        trust_dir=net.trust, reply_timeout=60)
    assert replay.sites[0].status == "refused" and replay.sites[0].reason.startswith("replay")
    last = audit_events(net, "site_north")[-1]
    assert last["event"] == "refused" and last["detail"]["check"] == "replay"


@pytest.mark.parametrize("case", ["expired", "unknown_signer", "tampered_after_signing", "unknown_cohort_hash"])
def test_bad_manifests_are_refused_with_an_audit_entry(net, store, case):
    site = "site_south"
    if case == "expired":
        manifest = net.manifest(sites=[site], min_sites=1, valid_for=dt.timedelta(seconds=1),)
        manifest = sign_manifest(manifest.model_copy(update={
            "issued_at": manifest.issued_at - dt.timedelta(hours=2),
            "expires_at": manifest.issued_at - dt.timedelta(hours=1)}), load_private_key(net.coordinator_key))
        check = "expired"
    elif case == "unknown_signer":  # a coordinator key substituted in transit
        manifest = net.manifest(sites=[site], min_sites=1, signer=net.rogue_key)
        check = "signature"
    elif case == "tampered_after_signing":
        signed = net.manifest(sites=[site], min_sites=1)
        manifest = StudyManifest.model_validate({**signed.model_dump(), "min_cell_count": 1})
        check = "signature"
    else:
        signed = net.manifest(sites=[site], min_sites=1, analyses=("cohort_counts",))
        cohorts = [c.model_dump() for c in signed.cohorts]
        cohorts[0]["expression"] = {**cohorts[0]["expression"], "QualifiedLimit": {"Type": "All"}}
        import hashlib

        from site_agent.policy import cohort_file_bytes
        cohorts[0]["sha256"] = hashlib.sha256(cohort_file_bytes(cohorts[0]["expression"])).hexdigest()
        manifest = sign_manifest(StudyManifest.model_validate({**signed.model_dump(), "cohorts": cohorts,
                                                               "signature": None}),
                                 load_private_key(net.coordinator_key))
        # the site cannot even reproduce the hash from a definition it has never approved
        check = "cohort_hash"
    before = len(audit_events(net, site))
    outcome = send_study(InProcessGrid(site_app.app, net.node_configs([site])), manifest, store=store,
                         trust_dir=net.trust, reply_timeout=60)
    assert outcome.sites[0].status == "refused", outcome
    assert outcome.sites[0].reason.startswith(check)
    new = audit_events(net, site)[before:]
    assert [e["event"] for e in new] == ["refused"] and new[0]["detail"]["check"] == check
    assert store.bundles(manifest.manifest_id) == []
    with pytest.raises(StudyIncomplete, match="only 0 of 1 sites answered"):
        require_complete(outcome)


def test_site_gone_mid_round_is_reported_with_flowers_reason(net, store):
    """A SuperNode that stopped heartbeating: the SuperLink answers "Node Unavailable" for it; the
    site's reason must say so, not a generic timeout."""
    manifest = net.manifest(min_sites=2, analyses=("cohort_counts",))
    grid = InProcessGrid(site_app.app, net.node_configs(), unavailable=[3])
    outcome = send_study(grid, manifest, store=store, trust_dir=net.trust, reply_timeout=60, node_wait=0)
    status = {s.site: s for s in outcome.sites}
    assert status["site_east"].status == "missing"
    assert status["site_east"].reason.startswith("Node Unavailable"), status["site_east"].reason
    assert "node 3" in status["site_east"].reason and "no answer within" not in status["site_east"].reason
    assert outcome.complete and outcome.elapsed_seconds < 30  # not held until the 60 s timeout


def test_dead_site_is_missing_and_quorum_decides(net, store):
    manifest = net.manifest(min_sites=2, analyses=("cohort_counts",))
    grid = InProcessGrid(site_app.app, net.node_configs(), dead=[3])  # site_east's SuperNode is gone
    outcome = send_study(grid, manifest, store=store, trust_dir=net.trust, reply_timeout=20, node_wait=0)
    status = {s.site: s for s in outcome.sites}
    assert status["site_east"].status == "missing" and "no answer within 20 s" in status["site_east"].reason
    assert outcome.complete and outcome.done == 2 and outcome.elapsed_seconds < 60
    strict = net.manifest(min_sites=3, analyses=("cohort_counts",))
    outcome = send_study(InProcessGrid(site_app.app, net.node_configs(), dead=[3]), strict, store=store,
                         trust_dir=net.trust, reply_timeout=5, node_wait=0)
    with pytest.raises(StudyIncomplete, match="only 2 of 3 sites answered, the study needs 3: site_east: missing"):
        require_complete(outcome)
    assert {s.site: s.status for s in store.site_statuses(strict.manifest_id)}["site_east"] == "missing"


def test_tampered_bundle_is_refused_by_the_coordinator(net, store):
    evil = ClientApp()

    @evil.query()
    def _tamper(msg: Message, context):  # a man in the middle edits a released count
        reply = site_app.query(msg, context)
        r = reply.content["reply"]
        doc = json.loads(str(r["bundle"]))
        doc["results_csv"] = re.sub(r'"integer","(\d+)"', lambda m: f'"integer","{int(m[1]) + 1}"',
                                    doc["results_csv"], count=1)
        text = json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        assert text != str(r["bundle"])
        return Message(RecordDict({"reply": ConfigRecord({**dict(r), "bundle": text})}), reply_to=msg)

    manifest = net.manifest(sites=["site_north"], min_sites=1, analyses=("cohort_counts",))
    outcome = send_study(InProcessGrid(evil, net.node_configs(["site_north"])), manifest, store=store,
                         trust_dir=net.trust, reply_timeout=60)
    assert outcome.sites[0].status == "failed"
    assert "bundle refused" in outcome.sites[0].reason and "bad signature" in outcome.sites[0].reason
    assert store.bundles(manifest.manifest_id) == []
