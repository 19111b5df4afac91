"""Review outbox: the hash the reviewer saw is the hash that is approved and sent."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from optima_common.bundle import (
    load_private_key,
    read_bundle,
    render,
    sign,
    write_bundle,
)
from optima_common.errors import ExitCode
from optima_common.results import SummarisedResult
from site_agent.audit import AuditLog
from site_agent.cli import main
from site_agent.governance.outbox import SHOWN_SUPPRESSED, Outbox, OutboxError
from site_agent.suppression import suppress
from tests.factories import make_bundle, make_keys, write_site_config


def _result() -> SummarisedResult:
    rows = [dict(cdm_name="site_a", group_name="cohort_name", group_level=c, variable_name=v,
                 estimate_name="count", estimate_type="integer", estimate_value=str(n))
            for c, n in (("sclc", 3), ("nsclc", 120)) for v in ("Number subjects", "Number records")]
    raw = SummarisedResult.from_records(rows, [dict(result_id=1, result_type="summarise_cohort_count",
                                                    package_name="optima-federated", package_version="0")])
    return suppress(raw, 5)


@pytest.fixture()
def site(tmp_path):
    keys = make_keys(tmp_path / "keys")
    cfg_path = write_site_config(tmp_path, keys)
    state = tmp_path / "state"
    return dict(keys=keys, config=cfg_path, state=state, box=Outbox(state), audit=AuditLog(state / "audit.jsonl"),
                bundle=make_bundle(_result(), keys["site_a"], "manifest-1", tmp_path))


def _events(audit: AuditLog) -> list[str]:
    return [e["event"] for e in audit.entries()]


def test_put_show_approve_send(site):
    box, audit, bundle = site["box"], site["audit"], site["bundle"]
    assert box.decision_for("manifest-1") == ("none", None)
    rid = box.put(bundle, audit=audit, study_id="lung")
    sha = hashlib.sha256(render(bundle)).hexdigest()
    assert box.put(bundle, audit=audit, study_id="lung") == rid  # same bytes again: same item
    [item] = box.pending()
    assert (item.id, item.manifest_id, item.study_id, item.sha256) == (rid, "manifest-1", "lung", sha)
    assert hashlib.sha256((site["state"] / "outbox" / f"{rid}.bundle").read_bytes()).hexdigest() == sha
    assert box.decision_for("manifest-1") == ("pending", None)

    view = box.show(rid)
    assert view.file_sha256 == sha and view.unchanged
    [table] = view.tables
    values = dict(zip(table.rows["group_level"] + "/" + table.rows["variable_name"], table.rows["estimate_value"]))
    assert values == {"nsclc/Number records": "120", "nsclc/Number subjects": "120",
                      "sclc/Number records": SHOWN_SUPPRESSED, "sclc/Number subjects": SHOWN_SUPPRESSED}
    assert table.suppressed == 2 and "3" not in set(table.rows["estimate_value"])

    item = box.approve(rid, reviewer="Dr Reviewer", audit=audit, expected_sha256=sha)
    assert item.status == "approved" and item.reviewer == "Dr Reviewer"
    state, sent = box.decision_for("manifest-1")
    assert state == "approved" and hashlib.sha256(render(sent)).hexdigest() == sha and sent == bundle
    box.mark_sent("manifest-1", audit=audit)
    box.mark_sent("manifest-1", audit=audit)  # idempotent
    assert box.items()[0].status == "sent" and box.pending() == []
    assert _events(audit) == ["queued_for_review", "review_approved", "review_sent"]
    approved = [e for e in audit.entries() if e["event"] == "review_approved"][0]
    assert approved["detail"]["bundle_sha256"] == sha and approved["manifest_id"] == "manifest-1"
    assert audit.verify()[0]


def _resigned_edit(site, rid: str) -> None:
    """An edit that keeps the file a validly signed, canonical bundle: only the hash can tell."""
    path = site["state"] / "outbox" / f"{rid}.bundle"
    b = read_bundle(path)
    edited = sign(b.model_copy(update={"results_csv": b.results_csv.replace('"120"', '"121"')}),
                  load_private_key(site["keys"]["site_a"]))
    assert edited.results_csv != b.results_csv
    write_bundle(edited, path)


def test_file_changed_after_review_is_not_approved(site):
    box, audit = site["box"], site["audit"]
    rid = box.put(site["bundle"], audit=audit)
    seen = box.show(rid).file_sha256
    _resigned_edit(site, rid)
    assert not box.show(rid).unchanged
    with pytest.raises(OutboxError, match="changed after it was queued"):
        box.approve(rid, reviewer="r", audit=audit, expected_sha256=seen)
    assert box.item(rid).status == "pending" and box.decision_for("manifest-1") == ("pending", None)
    assert _events(audit)[-1] == "review_refused"


def test_wrong_hash_is_not_approved(site):
    box, audit = site["box"], site["audit"]
    rid = box.put(site["bundle"], audit=audit)
    with pytest.raises(OutboxError, match="is not the bundle's"):
        box.approve(rid, reviewer="r", audit=audit, expected_sha256="0" * 64)
    assert box.item(rid).status == "pending"


def test_file_changed_after_approval_is_not_sent(site):
    box, audit = site["box"], site["audit"]
    rid = box.put(site["bundle"], audit=audit)
    box.approve(rid, reviewer="r", audit=audit, expected_sha256=box.show(rid).file_sha256)
    _resigned_edit(site, rid)
    with pytest.raises(OutboxError, match="changed after approval"):
        box.decision_for("manifest-1")


def test_reject_and_decided_items(site):
    box, audit = site["box"], site["audit"]
    rid = box.put(site["bundle"], audit=audit)
    with pytest.raises(OutboxError, match="needs a reason"):
        box.reject(rid, reason="  ", reviewer="r", audit=audit)
    item = box.reject(rid, reason="attrition table too detailed", reviewer="r", audit=audit)
    assert item.status == "rejected"
    assert box.decision_for("manifest-1") == ("rejected", "attrition table too detailed")
    with pytest.raises(OutboxError, match="already rejected"):
        box.approve(rid, reviewer="r", audit=audit)
    with pytest.raises(OutboxError, match="only an approved bundle"):
        box.mark_sent("manifest-1", audit=audit)
    other = make_bundle(_result(), site["keys"]["site_a"], "manifest-1", site["state"].parent)
    with pytest.raises(OutboxError, match="already has a different bundle"):
        box.put(other, audit=audit)
    with pytest.raises(OutboxError, match="unsigned"):
        box.put(site["bundle"].model_copy(update={"signature": None, "manifest_id": "m2"}), audit=audit)
    for bad in ("../../etc", "nope"):
        with pytest.raises(OutboxError, match="not a review id"):
            box.show(bad)
    assert _events(audit) == ["queued_for_review", "review_rejected"]


def test_cli_review_show_approve(site, capsys):
    box, audit = site["box"], site["audit"]
    rid = box.put(site["bundle"], audit=audit, study_id="lung")
    cfg = str(site["config"])
    assert main(["review", "--config", cfg]) == 0
    assert rid in capsys.readouterr().out
    assert main(["review", "show", rid, "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert SHOWN_SUPPRESSED in out and "signature: valid" in out and "summarise_cohort_count" in out
    sha = re.search(r"--sha256 ([0-9a-f]{64})", out).group(1)
    assert sha == box.item(rid).sha256
    assert main(["review", "show", rid, "--json", "--config", cfg]) == 0
    assert json.loads(capsys.readouterr().out)["file_sha256"] == sha
    assert main(["approve", rid, "--sha256", "f" * 64, "--config", cfg, "--reviewer", "r"]) == ExitCode.OUTBOX
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not the bundle's" in err
    assert main(["approve", rid, "--sha256", sha, "--config", cfg, "--reviewer", "r"]) == 0
    assert box.decision_for("manifest-1")[0] == "approved"
    assert main(["reject", "0123456789ab", "--reason", "x", "--config", cfg]) == ExitCode.OUTBOX
    assert "no review item" in capsys.readouterr().err
    assert main(["review", "--config", str(site["config"]) + ".missing"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
