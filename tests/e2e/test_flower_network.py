"""End to end over a real local Flower deployment: SuperLink + SuperNodes as processes, TLS with
the network's own CA, SuperNode authentication, the ServerApp started with ``flwr run``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coordinator.flower.network import LocalNetwork, NodeSpec, free_port
from coordinator.store import ResultsStore
from coordinator.trust.pki import create_node_key
from optima_common.bundle import write_manifest
from tests.conftest import REPO
from tests.federation_sites import SITES, build_network

pytestmark = pytest.mark.slow


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line or environment names ``text`` (our network's folder)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            env = Path(f"/proc/{pid}/environ").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        except OSError:
            continue
        if state != "Z" and (text.encode() in cmd or text.encode() in env):
            found.append(int(pid))
    return found


def job(net, root: Path, manifest, **over) -> dict:
    path = write_manifest(manifest, root / f"manifest-{manifest.manifest_id}.json")
    return {"manifest": str(path), "store": str(root / "store.sqlite3"), "trust": str(net.trust),
            "out": str(root / "out"), "reply_timeout": 120, "node_wait": 30, "report": False, **over}


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    return build_network(tmp_path_factory.mktemp("e2e"), SITES)


def test_study_over_tls_with_node_auth(net, tmp_path):
    manifest = net.manifest(sites=["site_north", "site_south"], analyses=("cohort_counts", "sclc_study"))
    nodes = [NodeSpec(s, net.configs[s]) for s in ("site_north", "site_south")]
    workdir = tmp_path / "network"
    with LocalNetwork(workdir, nodes) as network:
        assert network.secure and (workdir / "pki" / "ca.crt").is_file()
        outcome = network.run("study", job(net, tmp_path, manifest), timeout=300)
    assert outcome["ok"], outcome
    assert [(s["site"], s["status"]) for s in outcome["outcome"]["sites"]] == [("site_north", "done"),
                                                                              ("site_south", "done")]
    store = ResultsStore.open(tmp_path / "store.sqlite3")
    assert sorted(b.site for b in store.bundles(manifest.manifest_id)) == ["site_north", "site_south"]
    for site in ("site_north", "site_south"):  # each bundle is one self-contained file the CLI verifies
        proc = subprocess.run([sys.executable, "-m", "coordinator.cli.main", "verify",
                               str(tmp_path / "out" / "bundles" / f"{site}.bundle"), "--trust", str(net.trust)],
                              capture_output=True, text=True, cwd=REPO)
        assert proc.returncode == 0 and proc.stdout.startswith(f"OK: bundle from site {site}"), proc.stderr
    time.sleep(1)
    assert processes_mentioning(str(workdir)) == []  # nothing left running


def test_killed_and_unregistered_sites_are_reported_missing(net, tmp_path):
    manifest = net.manifest(min_sites=1, analyses=("cohort_counts",))
    workdir = tmp_path / "network"
    with LocalNetwork(workdir, [NodeSpec("site_north", net.configs["site_north"]),
                                NodeSpec("site_south", net.configs["site_south"])]) as network:
        network.kill_node("site_south")  # a crashed site: registered, then gone
        create_node_key(network.pki, "site_east")  # a SuperNode whose key was never registered
        network._spawn("supernode-site_east", [
            str(Path(sys.executable).parent / "flower-supernode"), "--root-certificates", str(network.pki.ca_cert),
            "--superlink", f"127.0.0.1:{network.port}", "--auth-supernode-private-key",
            str(network.pki.node_key("site_east")), "--port", str(free_port()), "--node-config",
            f'site-config="{net.configs["site_east"]}"', "--max-retries", "2"], "home-site_east")
        started = time.monotonic()
        outcome = network.run("study", job(net, tmp_path, manifest, reply_timeout=30, node_wait=5), timeout=240)
        elapsed = time.monotonic() - started
        intruder_log = (workdir / "logs" / "supernode-site_east.log").read_text(errors="replace")
    status = {s["site"]: s for s in outcome["outcome"]["sites"]}
    assert outcome["ok"] and status["site_north"]["status"] == "done"
    for site in ("site_south", "site_east"):
        assert status[site]["status"] == "missing" and "no answer within 30 s" in status[site]["reason"]
    assert elapsed < 120  # reported missing within a bounded time, not a hang
    assert "site_east" not in ResultsStore.open(tmp_path / "store.sqlite3").answered_sites(manifest.manifest_id)
    assert "failed to activate supernode" in intruder_log.lower(), intruder_log[-2000:]  # refused by the link
    time.sleep(1)
    assert processes_mentioning(str(workdir)) == []
