"""`cdm copy` leaves the OHDSI primary keys and indexes on PostgreSQL; `cdm check` warns without them."""

from __future__ import annotations

import subprocess
import sys

import psycopg2
import pytest

from site_agent.cdm import connect_cdm
from site_agent.cdm.indexes import NEEDED_INDEXES, missing_indexes
from site_agent.cdm.transfer import _pg_dsn, copy_duckdb_to_postgres
from tests.conftest import REPO

pytestmark = pytest.mark.postgres


def _pg(pg_url, sql: str, *args) -> list[tuple]:
    with psycopg2.connect(**_pg_dsn(pg_url)) as con, con.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall() if cur.description else []


def test_copy_creates_primary_keys_indexes_and_statistics(pg_url, eunomia_pg_schema):
    pks = {t for (t,) in _pg(pg_url, "SELECT tc.table_name FROM information_schema.table_constraints tc "
                                     "WHERE tc.table_schema = %s AND tc.constraint_type = 'PRIMARY KEY'",
                             eunomia_pg_schema)}
    assert {"person", "observation_period", "condition_occurrence", "concept"} <= pks
    # Eunomia repeats some drug_exposure_ids: that key cannot exist, a plain index stands in for it
    assert "drug_exposure" not in pks
    indexed = {(t, c) for t, c in _pg(pg_url, "SELECT t.relname, a.attname FROM pg_index i "
                                              "JOIN pg_class t ON t.oid = i.indrelid "
                                              "JOIN pg_namespace n ON n.oid = t.relnamespace "
                                              "JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = i.indkey[0] "
                                              "WHERE n.nspname = %s", eunomia_pg_schema)}
    assert {(t, c) for t, cols in NEEDED_INDEXES.items() for c in cols} <= indexed
    analyzed = dict(_pg(pg_url, "SELECT relname, last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL "
                                "FROM pg_stat_user_tables WHERE schemaname = %s", eunomia_pg_schema))
    assert analyzed["person"] and analyzed["condition_occurrence"]
    with connect_cdm(pg_url, cdm_schema=eunomia_pg_schema, write_schema="idx_results") as cdm:
        assert missing_indexes(cdm) == []


def test_copy_names_keys_the_data_violates(pg_url, eunomia_duckdb):
    import duckdb

    with duckdb.connect(str(eunomia_duckdb), read_only=True) as con:
        dups = con.execute("SELECT count(*) - count(DISTINCT drug_exposure_id) FROM drug_exposure").fetchone()[0]
    assert dups > 0  # the fact the warning must report, counted independently
    report = copy_duckdb_to_postgres(eunomia_duckdb, pg_url, "eunomia_copy_check", cdm_version="5.3")
    assert report.rows["person"] == 2694
    assert [w for w in report.warnings if "drug_exposure.drug_exposure_id" in w]
    assert not [w for w in report.warnings if ".person." in w or "condition_occurrence." in w]


def test_check_warns_about_a_schema_without_indexes(pg_url, eunomia_pg_schema):
    bare = "eunomia_noidx"
    _pg(pg_url, f"DROP SCHEMA IF EXISTS {bare} CASCADE; CREATE SCHEMA {bare}")
    for (table,) in _pg(pg_url, "SELECT tablename FROM pg_tables WHERE schemaname = %s", eunomia_pg_schema):
        _pg(pg_url, f'CREATE TABLE {bare}."{table}" AS SELECT * FROM {eunomia_pg_schema}."{table}"')
    with connect_cdm(pg_url, cdm_schema=bare, write_schema="idx_results") as cdm:
        missing = missing_indexes(cdm)
    assert f"{bare}.person(person_id)" in missing and f"{bare}.condition_occurrence(condition_concept_id)" in missing
    proc = subprocess.run([sys.executable, "-m", "site_agent", "cdm", "check", "--cdm", pg_url, "--cdm-schema", bare,
                           "--write-schema", "idx_results"], capture_output=True, text=True, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("\n") == 1 and "warning: no index on" in proc.stderr and "person(person_id)" in proc.stderr


def test_duckdb_needs_no_indexes(eunomia_duckdb):
    with connect_cdm(str(eunomia_duckdb), write_schema="idx_results") as cdm:
        assert missing_indexes(cdm) == []
