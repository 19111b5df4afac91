"""Dry run: what a manifest would run and the policy's verdict, without the CDM or the nonce."""

from __future__ import annotations

import json

import pytest

from optima_common.bundle import write_manifest
from optima_common.errors import ExitCode
from site_agent.cli import main
from site_agent.config import load_config
from site_agent.governance.dry_run import dry_run
from site_agent.policy import ManifestPolicy, PolicyRefusal
from tests.factories import make_keys, make_manifest, write_site_config


@pytest.fixture()
def keys(tmp_path):
    return make_keys(tmp_path / "keys")


def test_dry_run_accepts_without_touching_cdm_or_nonce(tmp_path, keys):
    cfg = load_config(write_site_config(tmp_path, keys))  # its DuckDB file does not even exist
    m = make_manifest(keys)
    path = write_manifest(m, tmp_path / "m.json")
    report = dry_run(cfg, path)
    assert report.accepted and report.check is None and report.dialect == "duckdb"
    assert [(c.name, c.approved, c.problem) for c in report.cohorts] == [("lung_cancer_broad", True, None),
                                                                          ("sclc", True, None)]
    sql = "\n".join(report.cohorts[1].sql)
    assert "main.CONDITION_OCCURRENCE" in sql and "results.cohort" in sql
    assert not (tmp_path / "missing_cdm.duckdb").exists()
    policy = ManifestPolicy.from_config(cfg)
    assert not policy.nonces.seen(m.manifest_id, m.nonce)
    assert dry_run(cfg, path).accepted  # twice: still not consumed
    policy.check(m)  # the real query afterwards is accepted
    again = dry_run(cfg, path)
    assert not again.accepted and again.check == "replay"
    events = [(e["event"], e["detail"].get("would_accept")) for e in policy.audit.entries()]
    assert events == [("dry_run", True), ("dry_run", True), ("accepted", None), ("dry_run", False)]


def test_dry_run_explains_refusals(tmp_path, keys):
    cfg = load_config(write_site_config(tmp_path, keys))
    bad_analysis = dry_run(cfg, make_manifest(keys, analyses=("diagnostics", "row_level_export")))
    assert not bad_analysis.accepted and bad_analysis.check == "analysis"
    assert ("row_level_export", False) in bad_analysis.analyses
    unpinned = dry_run(cfg, make_manifest(keys, signer="coordinator2"))
    assert unpinned.check == "signature" and "not a pinned coordinator key" in unpinned.reason
    c = make_manifest(keys).cohorts[1]
    altered = c.model_copy(update={"expression": {**c.expression, "QualifiedLimit": {"Type": "All"}}})
    r = dry_run(cfg, make_manifest(keys).model_copy(update={"cohorts": (altered,)}))
    assert not r.accepted and r.check == "signature"  # edited after signing


def test_dry_run_marks_unapproved_cohort_and_renders_postgres(tmp_path, keys):
    # unreachable PostgreSQL: the dry run must not need it
    cfg = load_config(write_site_config(tmp_path, keys, cdm_url="postgresql+psycopg2://nobody@127.0.0.1:1/none"))
    cfg = cfg.model_copy(update={"approved_cohorts": cfg.approved_cohorts.model_copy(
        update={"catalogs": [], "files": [], "sha256": [make_manifest(keys).cohorts[0].sha256]})})
    r = dry_run(cfg, make_manifest(keys))
    assert r.dialect == "postgresql" and r.cdm_schema == "public"
    assert not r.accepted and r.check in ("cohort_not_approved", "cohort_hash")
    broad, sclc = r.cohorts
    assert broad.approved and not sclc.approved and "not approved" in sclc.problem
    assert sclc.sql and any("public.CONDITION_OCCURRENCE" in s for s in sclc.sql)


def test_cli_dry_run(tmp_path, keys, capsys):
    cfg = str(write_site_config(tmp_path, keys))
    good = write_manifest(make_manifest(keys), tmp_path / "good.json")
    assert main(["dry-run", str(good), "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert "WOULD BE ACCEPTED" in out and "nonce were not consumed" in out and "SQL statements" in out
    assert main(["dry-run", str(good), "--config", cfg, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cohorts"][0]["sql"]
    bad = write_manifest(make_manifest(keys, target_sites=("site_b",)), tmp_path / "bad.json")
    assert main(["dry-run", str(bad), "--config", cfg]) == 8
    assert "WOULD BE REFUSED (site)" in capsys.readouterr().out
    (tmp_path / "broken.json").write_text("{not json")
    assert main(["dry-run", str(tmp_path / "broken.json"), "--config", cfg]) == ExitCode.BUNDLE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "malformed JSON" in err
    assert main(["dry-run", str(tmp_path / "none.json"), "--config", cfg]) == ExitCode.BUNDLE
    assert "cannot read" in capsys.readouterr().err
    with pytest.raises(PolicyRefusal):  # sanity: the real policy refuses what the dry run refused
        ManifestPolicy.from_config(load_config(cfg)).check(make_manifest(keys, target_sites=("site_b",)))
