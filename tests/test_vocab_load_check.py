"""``site-agent cdm vocab load`` (Athena download -> DuckDB / PostgreSQL, all or nothing) and
``site-agent vocab check`` (what a site's vocabulary will miss), on real databases.

Fixture: ``tests/data/athena_small`` in Athena's exact format (see its README). Expectations are
written from the fixture's contents, before running.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import pytest

from site_agent.cli import main

FIXTURE = Path(__file__).resolve().parent / "data" / "athena_small"
EXPECTED_ROWS = {"concept": 61, "concept_ancestor": 97, "concept_relationship": 46, "concept_synonym": 3,
                 "vocabulary": 6, "domain": 4, "concept_class": 6, "relationship": 4}
MISSING = (4155297, 40480519)  # Malignant neoplasm of skin, Intensity modulated radiation therapy


def _run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_load_into_new_duckdb(tmp_path, capsys):
    db = tmp_path / "cdm.duckdb"  # (a file named like the schema would clash in DuckDB)
    rc, out, err = _run(capsys, "cdm", "vocab", "load", str(FIXTURE), "--cdm", str(db), "--vocab-schema", "vocab")
    assert rc == 0, err
    assert "loaded 227 rows into 8 vocabulary tables of schema vocab" in out
    con = duckdb.connect(str(db), read_only=True)
    for table, n in EXPECTED_ROWS.items():
        assert con.execute(f"select count(*) from vocab.{table}").fetchone()[0] == n, table
    # no quoting in Athena files: the bare double quotes are part of the name
    assert con.execute("select concept_synonym_name from vocab.concept_synonym where concept_id = 4070879").fetchone()[0] \
        == 'Lobectomy of lung "lobectomy"'
    row = con.execute("select valid_start_date::varchar, valid_end_date::varchar, invalid_reason, standard_concept "
                      "from vocab.concept where concept_id = 45600511").fetchone()
    assert row == ("1970-01-01", "2099-12-31", None, None)


@pytest.mark.postgres
def test_load_into_postgresql(pg_url, capsys):
    import psycopg2
    from sqlalchemy.engine import make_url

    rc, _, err = _run(capsys, "cdm", "vocab", "load", str(FIXTURE), "--cdm", pg_url, "--vocab-schema", "vocab_fx")
    assert rc == 0, err
    u = make_url(pg_url)
    with psycopg2.connect(host=u.host, port=u.port, user=u.username, dbname=u.database) as con, con.cursor() as cur:
        for table, n in EXPECTED_ROWS.items():
            cur.execute(f"select count(*) from vocab_fx.{table}")
            assert cur.fetchone()[0] == n, table
        cur.execute("select concept_synonym_name from vocab_fx.concept_synonym where concept_id = 4070879")
        assert cur.fetchone()[0] == 'Lobectomy of lung "lobectomy"'
        cur.execute("select valid_end_date::text from vocab_fx.concept where concept_id = 4155297")
        assert cur.fetchone()[0] == "2099-12-31"
        cur.execute("select indexname from pg_indexes where schemaname = 'vocab_fx'")
        assert {"idx_concept_concept_id", "idx_concept_ancestor_id_2", "idx_concept_relationship_id_1",
                "xpk_concept"} <= {r[0] for r in cur.fetchall()}
    # a truncated file afterwards: one line, exit 18, and the loaded vocabulary is untouched
    bad = _truncated_copy()
    rc, _, err = _run(capsys, "cdm", "vocab", "load", str(bad), "--cdm", pg_url, "--vocab-schema", "vocab_fx")
    assert rc == 18 and err.count("\n") == 1 and "CONCEPT_ANCESTOR.csv looks truncated" in err
    # a short row inside a file: COPY fails inside the transaction, everything is rolled back
    short = _truncated_copy(cut_mid_line=False)
    lines = (short / "CONCEPT_RELATIONSHIP.csv").read_text().splitlines(keepends=True)
    lines[5] = "4112752\t4155297\n"
    (short / "CONCEPT_RELATIONSHIP.csv").write_text("".join(lines))
    (short / "CONCEPT.csv").write_text((FIXTURE / "CONCEPT.csv").read_text().splitlines(keepends=True)[0]
                                       + "".join((FIXTURE / "CONCEPT.csv").read_text().splitlines(keepends=True)[1:10]))
    rc, _, err = _run(capsys, "cdm", "vocab", "load", str(short), "--cdm", pg_url, "--vocab-schema", "vocab_fx")
    assert rc == 18 and err.count("\n") == 1 and "CONCEPT_RELATIONSHIP.csv: cannot load" in err
    with psycopg2.connect(host=u.host, port=u.port, user=u.username, dbname=u.database) as con, con.cursor() as cur:
        cur.execute("select count(*) from vocab_fx.concept_ancestor")
        assert cur.fetchone()[0] == EXPECTED_ROWS["concept_ancestor"]
        cur.execute("select count(*) from vocab_fx.concept")  # CONCEPT.csv (9 rows) was loaded first, then undone
        assert cur.fetchone()[0] == EXPECTED_ROWS["concept"]


_TMP = []


def _truncated_copy(*, cut_mid_line: bool = True) -> Path:
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="athena-trunc-"))
    _TMP.append(d)
    for f in FIXTURE.glob("*.csv"):
        shutil.copy(f, d / f.name)
    data = (d / "CONCEPT_ANCESTOR.csv").read_bytes()
    (d / "CONCEPT_ANCESTOR.csv").write_bytes(data[: len(data) // 2 + 3] if cut_mid_line else data)
    return d


def test_bad_folders_one_line_and_nothing_written(tmp_path, capsys):
    db = tmp_path / "new.duckdb"
    # not a folder
    rc, _, err = _run(capsys, "cdm", "vocab", "load", str(FIXTURE / "CONCEPT.csv"), "--cdm", str(db))
    assert rc == 2 and err.count("\n") == 1 and "is not a folder" in err and not db.exists()
    # a folder, but not an Athena download
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = _run(capsys, "cdm", "vocab", "load", str(empty), "--cdm", str(db))
    assert rc == 2 and "does not look like an Athena vocabulary download" in err and not db.exists()
    # one file missing
    partial = tmp_path / "partial"
    shutil.copytree(FIXTURE, partial)
    (partial / "CONCEPT_SYNONYM.csv").unlink()
    rc, _, err = _run(capsys, "cdm", "vocab", "load", str(partial), "--cdm", str(db))
    assert rc == 2 and err.count("\n") == 1 and "missing CONCEPT_SYNONYM.csv" in err and not db.exists()
    # a truncated file: nothing written, and a DuckDB file created for the load is removed again
    rc, _, err = _run(capsys, "cdm", "vocab", "load", str(_truncated_copy()), "--cdm", str(db))
    assert rc == 18 and err.count("\n") == 1 and "CONCEPT_ANCESTOR.csv looks truncated" in err and not db.exists()


def test_truncated_row_inside_keeps_previous_vocabulary(tmp_path, capsys):
    db = tmp_path / "v.duckdb"
    assert _run(capsys, "cdm", "vocab", "load", str(FIXTURE), "--cdm", str(db))[0] == 0
    bad = tmp_path / "bad"
    shutil.copytree(FIXTURE, bad)
    lines = (bad / "CONCEPT_RELATIONSHIP.csv").read_text().splitlines(keepends=True)
    lines[5] = "4112752\t4155297\n"  # a short row in the middle (last line still complete)
    (bad / "CONCEPT_RELATIONSHIP.csv").write_text("".join(lines))
    rc, _, err = _run(capsys, "cdm", "vocab", "load", str(bad), "--cdm", str(db))
    assert rc == 18 and err.count("\n") == 1 and "CONCEPT_RELATIONSHIP.csv: cannot load" in err
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("select count(*) from main.concept_relationship").fetchone()[0] == EXPECTED_ROWS["concept_relationship"]
    assert con.execute("select count(*) from main.concept").fetchone()[0] == EXPECTED_ROWS["concept"]


# ------------------------------------------------------------------ vocab check


def _site_missing_two(tmp_path) -> Path:
    """A CDM whose vocabulary is the fixture without 4155297 and 40480519, with unmapped records."""
    from site_agent.cdm import connect_cdm
    from site_agent.cdm.ddl import cdm_ddl
    from site_agent.cdm.vocab_load import load_vocabulary

    vocab = tmp_path / "athena"
    shutil.copytree(FIXTURE, vocab)
    for name in ("CONCEPT.csv", "CONCEPT_ANCESTOR.csv", "CONCEPT_RELATIONSHIP.csv", "CONCEPT_SYNONYM.csv"):
        keep = [line for line in (vocab / name).read_text().splitlines(keepends=True)
                if not {str(cid) for cid in MISSING} & set(line.split("\t")[:2])]
        (vocab / name).write_text("".join(keep))
    db = tmp_path / "site.duckdb"
    con = duckdb.connect(str(db))
    for stmt in cdm_ddl("duckdb", "5.4", "main"):
        con.execute(stmt)
    con.execute("insert into person (person_id, gender_concept_id, year_of_birth, race_concept_id, ethnicity_concept_id)"
                " select i, 8507, 1950, 0, 0 from range(1, 6) t(i)")
    rows = [  # person, concept, source value, source concept
        (1, 0, "C50.919", 45600511), (2, 0, "C50.919", 45600511),     # ICD10CM code the ETL left unmapped -> Breast cancer
        (3, 0, "small cell lung carcinoma, hospital code", 0),        # local text code -> SCLC (by name)
        (3, 0, "small cell lung carcinoma, hospital code", 0),
        (4, 0, "hip fracture, hospital code", 0),                     # unmapped, but nothing to do with the network
        (5, 4110591, "C34.90", 0),                                    # mapped: not reported
    ]
    for i, (pid, cid, sv, sc) in enumerate(rows, 1):
        con.execute("insert into condition_occurrence (condition_occurrence_id, person_id, condition_concept_id,"
                    " condition_start_date, condition_type_concept_id, condition_source_value, condition_source_concept_id)"
                    " values (?, ?, ?, DATE '2015-01-01', 32817, ?, ?)", [i, pid, cid, sv, sc])
    con.close()
    with connect_cdm(str(db)) as cdm:
        load_vocabulary(cdm, vocab)
    return db


def _check_site(report):
    by_name = {s.name: s for s in report.concept_sets}
    missing = {i.concept_id for s in report.concept_sets for i in s.missing}
    assert missing == set(MISSING)
    assert [i.concept_id for i in by_name["Malignancy other than skin or lung"].missing] == [4155297]
    assert [i.concept_id for i in by_name["Lung radiotherapy"].missing] == [40480519]
    assert [i.concept_id for i in by_name["Intensity modulated radiotherapy"].missing] == [40480519]
    assert not any(s.non_standard or s.invalid for s in report.concept_sets)
    # descendants resolve through the site's concept_ancestor: NSCLC + its two leaves
    assert by_name["NSCLC"].resolved == 3
    breast = [(u.source_value, u.records, u.persons, u.why) for u in by_name["Breast cancer"].unmapped]
    assert breast == [("C50.919", 2, 2, "maps-to")]
    sclc = [(u.source_value, u.records, u.persons, u.why) for u in by_name["SCLC"].unmapped]
    assert sclc == [("small cell lung carcinoma, hospital code", 2, 1, "name")]
    assert not by_name["NSCLC"].unmapped  # "small cell" is not "non-small cell"
    assert all(u.source_value != "hip fracture, hospital code" for s in report.concept_sets for u in s.unmapped)


def test_vocab_check_names_what_the_site_will_miss(tmp_path, capsys):
    from site_agent.cdm import connect_cdm
    from site_agent.cdm.vocab_check import check_vocabulary

    db = _site_missing_two(tmp_path)
    with connect_cdm(str(db)) as cdm:
        _check_site(check_vocabulary(cdm))
    rc, out, err = _run(capsys, "vocab", "check", "--cdm", str(db))
    assert rc == 0, err
    assert "missing          4155297 Malignant neoplasm of skin" in out
    assert "missing         40480519 Intensity modulated radiation therapy" in out
    assert "source value 'C50.919'" in out and "hip fracture" not in out
    rc, out, _ = _run(capsys, "vocab", "check", "--cdm", str(db), "--json")
    doc = json.loads(out)
    assert {i["concept_id"] for s in doc["concept_sets"] for i in s["items"] if i["status"] == "missing"} == set(MISSING)


@pytest.mark.postgres
def test_vocab_check_on_postgresql(tmp_path, pg_url):
    from site_agent.cdm import connect_cdm
    from site_agent.cdm.transfer import copy_duckdb_to_postgres
    from site_agent.cdm.vocab_check import check_vocabulary

    db = _site_missing_two(tmp_path)
    copy_duckdb_to_postgres(db, pg_url, "vcheck")
    with connect_cdm(pg_url, cdm_schema="vcheck") as cdm:
        _check_site(check_vocabulary(cdm))


def test_vocab_check_bad_input_one_line(tmp_path, capsys):
    rc, _, err = _run(capsys, "vocab", "check", "--cdm", str(tmp_path / "none.duckdb"))
    assert rc == 3 and err.count("\n") == 1
    db = _site_missing_two(tmp_path)
    rc, _, err = _run(capsys, "vocab", "check", "--cdm", str(db), "--definitions", str(tmp_path / "nope"))
    assert rc == 5 and err.count("\n") == 1 and "no such file or folder" in err
    duckdb.connect(str(tmp_path / "empty.duckdb")).close()
    rc, _, err = _run(capsys, "vocab", "check", "--cdm", str(tmp_path / "empty.duckdb"))
    assert rc == 4 and err.count("\n") == 1 and "has no concept, concept_ancestor, concept_relationship table" in err


def test_saved_check_gives_the_review_page_its_line(tmp_path, capsys):
    from site_agent.cdm.vocab_check import saved_summary

    db = _site_missing_two(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    assert saved_summary(state) is None
    rc, _, err = _run(capsys, "vocab", "check", "--cdm", str(db), "--out", str(state / "vocab_check.json"))
    assert rc == 0, err
    line = saved_summary(state)
    assert "2 concept ids missing" in line and "(missing: 4155297, 40480519)" in line
    assert "2 unmapped source codes look relevant" in line  # C50.919 and the local SCLC text code
    rc, _, err = _run(capsys, "vocab", "check", "--cdm", str(db), "--out", str(tmp_path / "no" / "x.json"))
    assert rc == 2 and err.count("\n") == 1 and "cannot write" in err


def test_review_show_prints_the_saved_vocab_check(tmp_path, capsys):
    from site_agent.audit import AuditLog
    from site_agent.governance.outbox import Outbox
    from tests.factories import make_bundle, make_keys, write_site_config
    from tests.test_governance_outbox import _result

    keys = make_keys(tmp_path / "keys")
    cfg = str(write_site_config(tmp_path, keys))
    state = tmp_path / "state"
    rid = Outbox(state).put(make_bundle(_result(), keys["site_a"], "manifest-1", tmp_path),
                            audit=AuditLog(state / "audit.jsonl"), study_id="lung")
    assert main(["review", "show", rid, "--config", cfg]) == 0
    assert "vocabulary check: none saved" in capsys.readouterr().out
    db = _site_missing_two(tmp_path)
    assert _run(capsys, "vocab", "check", "--cdm", str(db), "--out", str(state / "vocab_check.json"))[0] == 0
    assert main(["review", "show", rid, "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert "2 concept ids missing" in out and "(missing: 4155297, 40480519)" in out


def test_demo_site_saves_its_vocab_check(tmp_path):
    """The demo runs `vocab check` for each site into its state folder (what `review show` prints)."""
    from coordinator.demo.sites import DemoSite, prepare_site
    from optima_common.keys import generate_keypair
    from site_agent.cdm.vocab_check import saved_summary

    _, pub = generate_keypair(tmp_path / "coord", "coordinator")
    prepared = prepare_site(tmp_path / "sites", DemoSite("onc_x", "oncology", 1500, 2),
                            catalog=(FIXTURE.parents[2] / "cohort_definitions" / "catalog.json").resolve(),
                            coordinator_pub=pub, trust=tmp_path / "trust", echo=lambda m: None)
    line = saved_summary(prepared.folder / "state")
    # the synthetic vocabulary holds every network concept; its unmapped local lung codes are named
    assert line and "0 concept ids missing, 0 non-standard, 0 invalid" in line
    assert "unmapped source codes look relevant" in line and not line.endswith("; 0 unmapped source codes look relevant")
