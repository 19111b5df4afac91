"""study resend (new signed manifest for one site, linked so its bundle counts for the study) and study cancel
(unfinished sites cancelled; a later answer is not stored), through both apps in process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from coordinator.cli.main import main
from coordinator.demo.sites import DemoSite
from coordinator.flower.inprocess import InProcessGrid
from coordinator.flower.operations import cancel, resend
from coordinator.flower.study import send_study
from coordinator.store import ResultsStore, StoreError, ops
from optima_common.bundle import (
    key_id,
    load_private_key,
    load_public_key,
    load_trust_dir,
    read_manifest,
    verify,
    write_manifest,
)
from optima_common.errors import CoordinatorError
from site_agent import client_app as site_app
from tests.conftest import REPO
from tests.federation_sites import build_network

SITES = (DemoSite("site_north", "oncology", 700, 31), DemoSite("site_east", "oncology", 500, 33))


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    return build_network(tmp_path_factory.mktemp("ops_resend"), SITES, review=("site_east",))


def test_resend_to_a_missing_site_counts_for_the_study(net, tmp_path, capsys):
    store_path = tmp_path / "store.sqlite3"
    store = ResultsStore.open(store_path)
    manifest = net.manifest(sites=["site_north"], min_sites=1, analyses=("cohort_counts",))
    nodes = net.node_configs(["site_north"])
    first = send_study(InProcessGrid(site_app.app, nodes, dead=[1]), manifest, store=store, trust_dir=net.trust,
                       reply_timeout=3, node_wait=0)
    assert first.sites[0].status == "missing"
    manifest_file = write_manifest(manifest, tmp_path / "manifest.json")
    # the CLI signs and records the re-send (--no-send: no Flower network in this test)
    capsys.readouterr()
    assert main(["study", "resend", str(manifest_file), "--site", "site_north", "--key", str(net.coordinator_key),
                 "--store", str(store_path), "--out", str(tmp_path / "resend"), "--no-send"]) == 0
    (child_file,) = (tmp_path / "resend").glob("manifest-*.json")
    child = read_manifest(child_file)
    verify(child, load_trust_dir(net.coordinator_pub.parent))  # a valid signature ...
    assert child.signature.key_id == key_id(load_public_key(net.coordinator_pub))  # ... by the coordinator key
    assert child.manifest_id != manifest.manifest_id and child.nonce != manifest.nonce
    assert child.target_sites == ("site_north",) and child.min_sites == 1
    assert child.cohorts == manifest.cohorts and child.analyses == manifest.analyses
    assert child.parameters == manifest.parameters and child.min_cell_count == manifest.min_cell_count
    assert ops.children(store, manifest.manifest_id) == [(child.manifest_id, "site_north")]
    assert {s.site: s.status for s in store.site_statuses(manifest.manifest_id)} == {"site_north": "sent"}

    done = send_study(InProcessGrid(site_app.app, nodes), child, store=store, trust_dir=net.trust, reply_timeout=120)
    assert done.complete
    parent = {s.site: s for s in store.site_statuses(manifest.manifest_id)}["site_north"]
    assert parent.status == "done" and child.manifest_id in parent.reason
    counted = ops.study_bundles(store, manifest.manifest_id)
    assert [(b.site, b.manifest_id) for b in counted] == [("site_north", child.manifest_id)]
    capsys.readouterr()
    assert main(["status", manifest.manifest_id, "--store", str(store_path)]) == 0
    text = capsys.readouterr().out
    assert "1 of 1 sites done" in text and f"re-sent to site_north as manifest {child.manifest_id}" in text
    # the study listing folds the re-send into its study
    assert main(["status", "--store", str(store_path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["manifest_id"] for r in rows] == [manifest.manifest_id] and rows[0]["state"] == "complete"
    # `report STUDY` and `status STUDY` name the same manifest after the re-send: the original one
    # (the re-send is newer in the store and must not win)
    assert ops.resolve_study(store, manifest.study_id) == manifest.manifest_id
    capsys.readouterr()
    assert main(["status", manifest.study_id, "--store", str(store_path)]) == 0
    assert manifest.manifest_id in capsys.readouterr().out
    assert main(["report", manifest.study_id, "--store", str(store_path), "--out", str(tmp_path / "report")]) == 0
    assert manifest.manifest_id in (tmp_path / "report" / "report.html").read_text()
    with pytest.raises(CoordinatorError, match="already answered"):
        resend(store, manifest.manifest_id, "site_north", load_private_key(net.coordinator_key))
    with pytest.raises(CoordinatorError, match="not a target"):
        resend(store, manifest.manifest_id, "site_west", load_private_key(net.coordinator_key))


def test_cancel_marks_unfinished_sites_and_drops_a_later_answer(net, tmp_path, capsys):
    store_path = tmp_path / "store.sqlite3"
    store = ResultsStore.open(store_path)
    manifest = net.manifest(min_sites=2, analyses=("cohort_counts",))
    first = send_study(InProcessGrid(site_app.app, net.node_configs()), manifest, store=store, trust_dir=net.trust,
                       reply_timeout=120)
    status = {s.site: s for s in first.sites}
    assert status["site_north"].status == "done" and status["site_east"].status == "awaiting_review"
    capsys.readouterr()
    assert main(["study", "cancel", manifest.manifest_id, "--store", str(store_path), "--reason", "protocol changed"]) == 0
    assert "site_east marked cancelled" in capsys.readouterr().out
    now = {s.site: s for s in store.site_statuses(manifest.manifest_id)}
    assert now["site_north"].status == "done" and now["site_east"].status == "cancelled"
    assert now["site_east"].reason == "protocol changed"

    # the site's reviewer approves anyway; the coordinator's next collection must not store it
    review_id = status["site_east"].reason.removeprefix("queued for review as ")
    cfg = str(net.configs["site_east"])
    shown = subprocess.run([sys.executable, "-m", "site_agent.cli", "review", "show", review_id, "--config", cfg,
                            "--json"], capture_output=True, text=True, cwd=REPO, check=False)
    sha = json.loads(shown.stdout)["file_sha256"]
    approve = subprocess.run([sys.executable, "-m", "site_agent.cli", "approve", review_id, "--sha256", sha,
                              "--config", cfg, "--reviewer", "dr_review"], capture_output=True, text=True, cwd=REPO,
                             check=False)
    assert approve.returncode == 0, approve.stderr
    again = send_study(InProcessGrid(site_app.app, net.node_configs()), manifest, store=store, trust_dir=net.trust,
                       reply_timeout=120, collect_only=True)
    assert {s.site: s.status for s in again.sites}["site_east"] == "cancelled"
    assert [b.site for b in store.bundles(manifest.manifest_id)] == ["site_north"]
    # a bundle the site did release (e.g. handed over as a file) is refused by the store itself
    site_bundle = _approved_bundle(cfg, manifest.manifest_id)
    with pytest.raises(StoreError, match="cancelled"):
        store.add_bundle(*site_bundle)
    with pytest.raises(CoordinatorError, match="cancelled"):
        resend(store, manifest.manifest_id, "site_east", load_private_key(net.coordinator_key))


def _approved_bundle(cfg: str, manifest_id: str):
    from optima_common.bundle import ResultBundle, render
    from site_agent.config import load_config
    from site_agent.governance.outbox import Outbox

    state, bundle = Outbox(load_config(cfg).state_dir).decision_for(manifest_id)
    assert state == "approved" and isinstance(bundle, ResultBundle)
    return bundle, render(bundle)


def test_cancel_and_status_bad_input(tmp_path, capsys):
    store_path = tmp_path / "store.sqlite3"
    ResultsStore.open(store_path).close()
    for argv, message in [(["study", "cancel", "nope", "--store", str(store_path)], "neither a manifest file"),
                          (["status", "x.json", "--store", str(store_path)], "manifest file not found"),
                          (["status", "--store", str(tmp_path / "absent.sqlite3")], "not found")]:
        capsys.readouterr()
        assert main(argv) != 0
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(StoreError, match="not in the results store"):
        cancel(ResultsStore.open(store_path), "0" * 32)
