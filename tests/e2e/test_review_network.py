"""Acceptance over a real local Flower deployment (SuperLink + 2 SuperNodes, TLS, node auth): a site in review
mode shows as awaiting review, ``site-agent approve`` releases it, and ``collect`` completes the study."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from coordinator.demo.sites import DemoSite
from coordinator.flower.network import LocalNetwork, NodeSpec
from coordinator.store import ResultsStore
from optima_common.bundle import write_manifest
from tests.conftest import REPO
from tests.e2e.test_flower_network import processes_mentioning
from tests.federation_sites import build_network

pytestmark = pytest.mark.slow

SITES = (DemoSite("site_north", "oncology", 700, 51), DemoSite("site_east", "oncology", 500, 53))


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, cwd=REPO, timeout=120, check=False)


def test_review_site_then_approve_then_collect_over_flower(tmp_path):
    net = build_network(tmp_path / "sites", SITES, review=("site_east",))
    manifest = net.manifest(min_sites=2, analyses=("cohort_counts",))
    path = write_manifest(manifest, tmp_path / "manifest.json")
    store = tmp_path / "store.sqlite3"
    job = {"manifest": str(path), "store": str(store), "trust": str(net.trust), "out": str(tmp_path / "out"),
           "reply_timeout": 90, "node_wait": 30, "report": False}
    workdir = tmp_path / "network"
    started = time.monotonic()
    with LocalNetwork(workdir, [NodeSpec(s, net.configs[s]) for s in net.configs]) as network:
        first = network.run("study", job, timeout=240)
        status = {s["site"]: s for s in first["outcome"]["sites"]}
        assert not first["ok"] and status["site_north"]["status"] == "done", first
        assert status["site_east"]["status"] == "awaiting_review"
        shown = run("coordinator.cli.main", "status", str(path), "--store", str(store))
        assert shown.returncode == 0 and "awaiting review" in next(
            ln for ln in shown.stdout.splitlines() if ln.strip().startswith("site_east")), shown.stdout

        review_id = status["site_east"]["reason"].removeprefix("queued for review as ")
        cfg = str(net.configs["site_east"])
        view = run("site_agent.cli", "review", "show", review_id, "--config", cfg, "--json")
        sha = json.loads(view.stdout)["file_sha256"]
        approved = run("site_agent.cli", "approve", review_id, "--sha256", sha, "--config", cfg, "--reviewer", "dr_r")
        assert approved.returncode == 0, approved.stderr

        second = network.run("collect", job, timeout=240)
    elapsed = time.monotonic() - started
    assert second["ok"], second
    assert [(s["site"], s["status"]) for s in second["outcome"]["sites"]] == [("site_north", "done"),
                                                                             ("site_east", "done")]
    with ResultsStore.open(store) as results:
        assert sorted(b.site for b in results.bundles(manifest.manifest_id)) == ["site_east", "site_north"]
        assert {s.site: s.status for s in results.site_statuses(manifest.manifest_id)} == {
            "site_north": "done", "site_east": "done"}
    done = run("coordinator.cli.main", "status", manifest.manifest_id, "--store", str(store))
    assert "2 of 2 sites done (minimum 2): complete" in done.stdout
    print(f"review round trip over Flower: {elapsed:.1f} s")
    time.sleep(1)
    assert processes_mentioning(str(workdir)) == []
