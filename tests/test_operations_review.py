"""Acceptance in process: a site in review mode shows as awaiting review, the real ``site-agent approve``
releases it, and the coordinator's next collection completes the study; plus status output and a
coordinator restarted mid-study that resumes without asking the sites that answered."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from coordinator.cli.main import main
from coordinator.demo.sites import DemoSite
from coordinator.flower.inprocess import InProcessGrid
from coordinator.flower.study import send_study
from coordinator.store import ResultsStore, ops
from optima_common.bundle import write_manifest
from site_agent import client_app as site_app
from site_agent.audit import AuditLog
from tests.conftest import REPO
from tests.federation_sites import build_network

SITES = (DemoSite("site_north", "oncology", 800, 21), DemoSite("site_south", "primary-care", 600, 22),
         DemoSite("site_east", "oncology", 500, 23))


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    return build_network(tmp_path_factory.mktemp("ops_review"), SITES, review=("site_east",))


def site_agent(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "site_agent.cli", *argv], capture_output=True, text=True, cwd=REPO, check=False)


def audit_events(net, site: str, manifest_id: str) -> list[str]:
    log = AuditLog(net.configs[site].parent / "state" / "audit.jsonl")
    return [e["event"] for e in log.entries() if e.get("manifest_id") == manifest_id]


def status_lines(capsys, *argv) -> str:
    capsys.readouterr()
    assert main(["status", *argv]) == 0
    return capsys.readouterr().out


def test_review_site_awaits_then_approve_and_collect_complete_the_study(net, tmp_path, capsys):
    store_path = tmp_path / "store.sqlite3"
    store = ResultsStore.open(store_path)
    manifest = net.manifest(min_sites=3, analyses=("cohort_counts",))
    manifest_file = write_manifest(manifest, tmp_path / "manifest.json")
    first = send_study(InProcessGrid(site_app.app, net.node_configs()), manifest, store=store, trust_dir=net.trust,
                       reply_timeout=120)
    by_site = {s.site: s for s in first.sites}
    assert by_site["site_east"].status == "awaiting_review" and not first.complete and first.done == 2
    review_id = by_site["site_east"].reason.removeprefix("queued for review as ")

    text = status_lines(capsys, str(manifest_file), "--store", str(store_path))
    east = next(ln for ln in text.splitlines() if ln.strip().startswith("site_east"))
    assert "awaiting review" in east and review_id in east and "2 of 3 sites done" in text
    assert "not complete" in text
    doc = json.loads(status_lines(capsys, manifest.study_id, "--store", str(store_path), "--json"))
    assert {s["site"]: s["status"] for s in doc["sites"]} == {"site_north": "done", "site_south": "done",
                                                               "site_east": "awaiting_review"}
    assert all(s["first_sent_at"] and s["updated_at"] for s in doc["sites"])
    listing = status_lines(capsys, "--store", str(store_path))
    assert manifest.manifest_id in listing and "2/3" in listing and "in progress" in listing

    cfg = str(net.configs["site_east"])
    shown = site_agent("review", "show", review_id, "--config", cfg, "--json")
    assert shown.returncode == 0, shown.stderr
    sha = json.loads(shown.stdout)["file_sha256"]
    approved = site_agent("approve", review_id, "--sha256", sha, "--config", cfg, "--reviewer", "dr_review")
    assert approved.returncode == 0 and "approved" in approved.stdout, approved.stderr

    grid = InProcessGrid(site_app.app, net.node_configs())  # the coordinator's next collection (a new run)
    second = send_study(grid, manifest, store=ResultsStore.open(store_path), trust_dir=net.trust, reply_timeout=120,
                        collect_only=True)
    assert second.complete and second.done == 3
    # only the reviewing site was asked again; north and south were known and final
    assert [(m.metadata.message_type, m.metadata.dst_node_id) for m in grid.sent] == [("query.collect", 3)]
    raw = {b.site: r for b, r in store.bundles_raw(manifest.manifest_id)}
    assert hashlib.sha256(raw["site_east"]).hexdigest() == sha  # what the reviewer saw is what was stored
    assert audit_events(net, "site_east", manifest.manifest_id).count("accepted") == 1
    text = status_lines(capsys, manifest.manifest_id, "--store", str(store_path))
    assert "3 of 3 sites done (minimum 3): complete" in text


def test_restarted_coordinator_resumes_without_reasking_answered_sites(net, tmp_path):
    store_path = tmp_path / "store.sqlite3"
    manifest = net.manifest(sites=["site_north", "site_south"], min_sites=2, analyses=("cohort_counts",))
    nodes = net.node_configs(["site_north", "site_south"])
    # run 1: site_south's SuperNode is down; north answers
    first = send_study(InProcessGrid(site_app.app, nodes, dead=[2]), manifest, store=ResultsStore.open(store_path),
                       trust_dir=net.trust, reply_timeout=5, node_wait=0)
    assert [(s.site, s.status) for s in first.sites] == [("site_north", "done"), ("site_south", "missing")]
    north_before = audit_events(net, "site_north", manifest.manifest_id)
    # site_south gets the manifest through another run whose coordinator died before judging the reply
    from flwr.app import ConfigRecord, Message, RecordDict

    from optima_common.bundle import render
    lost = InProcessGrid(site_app.app, nodes)
    lost.send_and_receive([Message(RecordDict({"manifest": ConfigRecord({"json": render(manifest).decode()})}),
                                   dst_node_id=2, message_type="query", group_id="x")], timeout=120)
    assert audit_events(net, "site_south", manifest.manifest_id) == ["accepted", "released"]

    # the restarted coordinator resumes from its store: `study send` again never re-sends the manifest
    grid = InProcessGrid(site_app.app, nodes)
    resumed = send_study(grid, manifest, store=ResultsStore.open(store_path), trust_dir=net.trust, reply_timeout=120)
    assert resumed.complete and [s.status for s in resumed.sites] == ["done", "done"]
    assert [(m.metadata.message_type, m.metadata.dst_node_id) for m in grid.sent] == [("query.collect", 2)]
    assert audit_events(net, "site_north", manifest.manifest_id) == north_before  # not asked again
    assert audit_events(net, "site_south", manifest.manifest_id) == ["accepted", "released"]  # ran once
    store = ResultsStore.open(store_path)
    assert sorted(b.site for b in store.bundles(manifest.manifest_id)) == ["site_north", "site_south"]
    assert ops.node_sites(store, manifest.manifest_id) == {1: "site_north", 2: "site_south"}
    # once every site is final, a further collection asks nobody at all
    idle = InProcessGrid(site_app.app, nodes)
    again = send_study(idle, manifest, store=store, trust_dir=net.trust, reply_timeout=5, collect_only=True)
    assert again.complete and idle.sent == []
