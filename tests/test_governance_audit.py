"""Audit verify/show, and canary patient ids: no person identifier in anything the agent writes."""

from __future__ import annotations

import hashlib
import json
import re

import duckdb
import pytest

from optima_common.bundle import write_manifest
from optima_common.errors import ExitCode
from site_agent.audit import AuditLog
from site_agent.cli import main
from site_agent.config import load_config
from site_agent.governance.outbox import Outbox
from site_agent.governance.release_history import ReleaseHistory
from site_agent.policy import ManifestPolicy, PolicyRefusal
from tests.factories import (
    clone_persons,
    make_bundle,
    make_keys,
    make_manifest,
    run_site,
    write_site_config,
)

OFFSET = 987_654_000  # every person_id becomes 987654001 … 987655500 (CDM ids are 32-bit integers)
CANARY = re.compile(rb"(?<![0-9a-f])98765[45][0-9]{3}(?![0-9a-f])")  # any of them, as a number


@pytest.fixture(scope="module")
def canary_cdm(tmp_path_factory):
    from site_agent.cdm.synth import generate_site

    path = tmp_path_factory.mktemp("canary") / "canary.duckdb"
    generate_site(out=path, persons=1500, site="site_a", profile="oncology", seed=21)
    con = duckdb.connect(str(path))
    ids = [r[0] for r in con.execute("SELECT person_id FROM person").fetchall()]
    con.close()
    clone_persons(path, ids, OFFSET)
    con = duckdb.connect(str(path))
    for (table,) in con.execute("SELECT DISTINCT table_name FROM information_schema.columns "
                                "WHERE column_name = 'person_id' AND table_schema = 'main'").fetchall():
        con.execute(f"DELETE FROM main.{table} WHERE person_id < {OFFSET}")
    con.close()
    return path


def _grep_state(state_dir) -> list[str]:
    hits = []
    for f in sorted(p for p in state_dir.rglob("*") if p.is_file()):
        if CANARY.search(f.read_bytes()):
            hits.append(str(f.relative_to(state_dir)))
    return hits


def test_no_patient_identifier_in_anything_the_agent_writes(canary_cdm, tmp_path, capsys):
    keys = make_keys(tmp_path / "keys")
    cfg_path = write_site_config(tmp_path, keys, cdm_url=f"duckdb:///{canary_cdm}", extra="review_mode = true")
    cfg = load_config(cfg_path)
    c = str(cfg_path)
    m = make_manifest(keys)
    assert main(["-v", "dry-run", str(write_manifest(m, tmp_path / "m.json")), "--config", c]) == 0
    policy = ManifestPolicy.from_config(cfg)
    decision = policy.check(m)
    with pytest.raises(PolicyRefusal):
        policy.check(make_manifest(keys, target_sites=("site_b",)))

    result = run_site(canary_cdm)  # the agent's own cohort and diagnostics code on the canary CDM
    history = ReleaseHistory(cfg.state_dir)
    guarded, _ = history.guard(result, decision.effective_min_cell_count)
    history.record(guarded, m.manifest_id)
    box, audit = Outbox(cfg.state_dir), AuditLog(cfg.state_dir / "audit.jsonl")
    rid = box.put(make_bundle(guarded, cfg.site_key, m.manifest_id, tmp_path), audit=audit, study_id=m.study_id)
    for argv in (["review"], ["review", "show", rid], ["review", "show", rid, "--json"]):
        assert main(["-v", *argv, "--config", c]) == 0
    sha = box.item(rid).sha256
    assert main(["-v", "approve", rid, "--sha256", sha, "--reviewer", "dpo", "--config", c]) == 0
    assert box.decision_for(m.manifest_id)[0] == "approved"
    box.mark_sent(m.manifest_id, audit=audit)
    for argv in (["audit", "verify"], ["audit", "show"], ["audit", "show", "--json"], ["keys", "list"]):
        assert main(["-v", *argv, "--config", c]) == 0
    printed = capsys.readouterr()

    # the canary is really there, in the CDM and in the cohorts the site built
    con = duckdb.connect(str(canary_cdm), read_only=True)
    ids = [str(r[0]).encode() for r in con.execute("SELECT person_id FROM person").fetchall()]
    in_cohort = con.execute(f"SELECT count(*) FROM results.cohort WHERE subject_id > {OFFSET}").fetchone()[0]
    con.close()
    assert len(ids) == 1500 and all(CANARY.fullmatch(i) for i in ids) and in_cohort > 0
    events = {e["event"] for e in audit.entries()}
    assert {"dry_run", "accepted", "refused", "queued_for_review", "review_approved", "review_sent"} <= events
    written = [p for p in cfg.state_dir.rglob("*") if p.is_file()]
    assert len(written) >= 6  # audit log, nonce store, outbox item + bundle, release history, …
    assert _grep_state(cfg.state_dir) == []
    planted = tmp_path / "planted"  # the grep itself finds an id when one is there
    planted.mkdir()
    (planted / "log.txt").write_bytes(b"subject " + ids[7] + b" seen\n")
    assert _grep_state(planted) == ["log.txt"]
    assert not CANARY.search(printed.out.encode()) and not CANARY.search(printed.err.encode())


def _log(tmp_path):
    keys = make_keys(tmp_path / "keys")
    cfg_path = write_site_config(tmp_path, keys)
    log = AuditLog(load_config(cfg_path).state_dir / "audit.jsonl")
    for i in range(6):
        log.append("accepted" if i % 2 else "refused", manifest_id=f"m{i % 3}", study_id="s", detail={"i": i})
    return str(cfg_path), log


def test_audit_verify_reports_the_first_broken_entry(tmp_path, capsys):
    cfg, log = _log(tmp_path)
    assert main(["audit", "verify", "--config", cfg]) == 0
    assert "6 entries, chain intact" in capsys.readouterr().out
    lines = log.path.read_text().splitlines(keepends=True)
    lines[3] = lines[3].replace('"i":3', '"i":30')
    log.path.write_text("".join(lines))
    assert main(["audit", "verify", "--config", cfg]) == ExitCode.AUDIT_LOG
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "chain broken at entry 4" in err and "edited" in err


def test_audit_verify_without_a_log(tmp_path, capsys):
    keys = make_keys(tmp_path / "keys")
    assert main(["audit", "verify", "--config", str(write_site_config(tmp_path, keys))]) == 0
    assert "no audit log yet" in capsys.readouterr().out


def test_audit_show_filters(tmp_path, capsys):
    cfg, _ = _log(tmp_path)
    assert main(["audit", "show", "--manifest", "m1", "--json", "--config", cfg]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["seq"], r["manifest_id"]) for r in rows] == [(2, "m1"), (5, "m1")]
    assert main(["audit", "show", "--event", "refused", "--limit", "2", "--config", cfg]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and out[1].split()[0] == "3" and out[2].split()[0] == "5"
    assert main(["audit", "show", "--event", "nothing", "--config", cfg]) == 0
    assert "no matching" in capsys.readouterr().out
    assert main(["audit", "show", "--limit", "0", "--config", cfg]) == 2


def test_canary_through_the_client_app_in_review_mode(canary_cdm, tmp_path, capsys):
    """The site's query handler end to end (policy -> diagnostics on the CDM -> outbox -> approve -> collect)."""
    from site_agent.service import Site

    keys = make_keys(tmp_path / "keys")
    cfg_path = write_site_config(tmp_path, keys, cdm_url=f"duckdb:///{canary_cdm}", extra="review_mode = true")
    cfg = load_config(cfg_path)
    m = make_manifest(keys, analyses=("cohort_counts",))
    site = Site(cfg)
    status, reason, text = site.answer_manifest(m.model_dump_json())
    assert (status, text) == ("awaiting_review", "") and reason.startswith("queued for review")
    assert site.collect(m.manifest_id)[0] == "awaiting_review"
    [item] = Outbox(cfg.state_dir).pending()
    assert main(["approve", item.id, "--sha256", item.sha256, "--reviewer", "dpo", "--config", str(cfg_path)]) == 0
    status, _, text = site.collect(m.manifest_id)
    assert status == "done" and hashlib.sha256(text.encode("utf-8")).hexdigest() == item.sha256
    assert "Number subjects" in text
    assert _grep_state(cfg.state_dir) == []
    printed = capsys.readouterr()
    assert not CANARY.search(printed.out.encode()) and not CANARY.search(printed.err.encode())
