"""CDM access: URL handling, validation, Eunomia quirks fixed, read-only CDM schema."""

from __future__ import annotations

import hashlib

import duckdb
import pytest

from optima_common.errors import CdmConnectionError, CdmValidationError, ConfigError
from site_agent.cdm import connect_cdm, resolve_cdm_url
from site_agent.cdm.check import describe_cdm, validate_cdm
from site_agent.cdm.eunomia import packaged_eunomia_path, write_eunomia


def test_bare_duckdb_path_becomes_url(tmp_path):
    url = resolve_cdm_url(str(tmp_path / "x.duckdb"))
    assert url == f"duckdb:///{tmp_path / 'x.duckdb'}"
    assert resolve_cdm_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"
    with pytest.raises(ConfigError):
        resolve_cdm_url("not-a-url")


def test_missing_duckdb_file_is_reported_not_created(tmp_path):
    path = tmp_path / "missing.duckdb"
    with pytest.raises(CdmConnectionError, match="no DuckDB file"):
        connect_cdm(str(path))
    assert not path.exists()


def test_write_schema_may_not_be_cdm_schema(eunomia_duckdb):
    with pytest.raises(ConfigError, match="never writes into the CDM"):
        connect_cdm(str(eunomia_duckdb), cdm_schema="main", write_schema="main")


def test_unreachable_postgres_names_url_without_password():
    with pytest.raises(CdmConnectionError) as err:
        connect_cdm("postgresql+psycopg2://alice:s3cret@127.0.0.1:9/cdm")
    assert "s3cret" not in str(err.value) and "127.0.0.1:9" in str(err.value)


def test_unknown_schema(eunomia_duckdb):
    with pytest.raises(CdmConnectionError, match="schema 'nope' does not exist"):
        connect_cdm(str(eunomia_duckdb), cdm_schema="nope")


def test_eunomia_quirks_fixed(eunomia_duckdb):
    before = hashlib.sha256(packaged_eunomia_path().read_bytes()).hexdigest()
    con = duckdb.connect(str(eunomia_duckdb), read_only=True)
    try:
        cols = con.execute("SELECT table_name, column_name, data_type FROM information_schema.columns").fetchall()
        assert all(c == c.lower() for _, c, _ in cols)
        assert not any(c.startswith("column0") for _, c, _ in cols)
        types = {(t, c): ty for t, c, ty in cols}
        assert types[("concept_ancestor", "ancestor_concept_id")] in ("INTEGER", "BIGINT")
        orphans = con.execute(
            "SELECT count(*) FROM observation_period WHERE person_id NOT IN (SELECT person_id FROM person)"
        ).fetchone()[0]
        assert orphans == 0
        assert con.execute("SELECT count(*) FROM person").fetchone()[0] == 2694
        for empty in ("death", "location", "care_site", "provider", "cohort", "metadata"):
            if empty != "cohort":
                assert con.execute(f"SELECT count(*) FROM {empty}").fetchone()[0] == 0
    finally:
        con.close()
    # the packaged file is only ever attached read-only
    assert hashlib.sha256(packaged_eunomia_path().read_bytes()).hexdigest() == before


def test_eunomia_write_is_atomic_on_bad_target(tmp_path):
    target = tmp_path / "dir.duckdb"
    target.mkdir()
    with pytest.raises(ConfigError):
        write_eunomia(target)
    assert list(tmp_path.iterdir()) == [target]


def test_check_reports_versions_and_counts(eunomia_cdm):
    url, schema, write = eunomia_cdm
    with connect_cdm(url, cdm_schema=schema, write_schema=write) as cdm:
        report = describe_cdm(cdm)
    assert report.cdm_version == "v5.3.1"
    assert report.vocabulary_version == "v5.0 18-JAN-19"
    assert report.persons == 2694
    assert report.observation_periods == 2694


def test_check_names_missing_table(eunomia_cdm):
    url, schema, write = eunomia_cdm
    with connect_cdm(url, cdm_schema=schema, write_schema=write) as cdm:
        with cdm.transaction() as script:
            script.execute(f"ALTER TABLE {schema}.concept_ancestor RENAME TO concept_ancestor_gone")
        try:
            with pytest.raises(CdmValidationError, match=rf"missing {schema}\.concept_ancestor\b"):
                validate_cdm(cdm)
        finally:
            with cdm.transaction() as script:
                script.execute(f"ALTER TABLE {schema}.concept_ancestor_gone RENAME TO concept_ancestor")
