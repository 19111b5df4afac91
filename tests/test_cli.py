"""The site-agent command line: JSON purity, one-line errors, exit codes, PostgreSQL URLs."""

from __future__ import annotations

import json
import subprocess
import sys

import psycopg2
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import REPO

GIB = REPO / "tests" / "data" / "gi_bleed_adults.json"


def agent(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "site_agent", *args], capture_output=True, text=True, cwd=REPO)


def test_cohorts_json_stdout_is_only_json(eunomia_cdm):
    url, schema, write = eunomia_cdm
    proc = agent("-v", "cohorts", "--cdm", url, "--cdm-schema", schema, "--write-schema", write,
                 "--definitions", str(GIB), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [set(r) for r in rows] == [{"cohort_definition_id", "cohort_name", "number_records", "number_subjects"}]
    assert rows[0]["cohort_name"] == "gi_bleed_adults" and rows[0]["number_subjects"] > 400
    assert "built cohort" in proc.stderr  # -v logs go to stderr, never stdout


def test_cdm_check_cli(eunomia_cdm):
    url, schema, write = eunomia_cdm
    proc = agent("cdm", "check", "--cdm", url, "--cdm-schema", schema, "--write-schema", write, "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["persons"] == 2694 and report["cdm_version"] == "v5.3.1"


@pytest.mark.parametrize("args, code, needle", [
    (["cdm", "check", "--cdm", "nowhere.duckdb"], 3, "no DuckDB file"),
    (["cdm", "check", "--cdm", "mysql://u@h/db"], 2, "not supported"),
    (["cdm", "check", "--cdm", "postgresql+psycopg2://u:pw@127.0.0.1:9/x"], 3, "cannot connect"),
    (["cohorts", "--cdm", "nowhere.duckdb", "--definitions", "missing.json"], 5, "no such file"),
])
def test_errors_are_one_line(args, code, needle):
    proc = agent(*args)
    assert proc.returncode == code
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert proc.stdout == ""


def test_malformed_definition_one_line(tmp_path, eunomia_duckdb):
    bad = tmp_path / "broken.json"
    bad.write_text('{"ConceptSets": [')
    proc = agent("cohorts", "--cdm", str(eunomia_duckdb), "--definitions", str(bad))
    assert proc.returncode == 5
    assert proc.stderr.strip().count("\n") == 0 and "broken.json" in proc.stderr and "malformed JSON" in proc.stderr


def test_read_only_role_builds_cohorts(pg_url, eunomia_pg_schema):
    """deploy/postgres/site_agent_role.sql: the agent can build cohorts but not touch the CDM."""
    u = make_url(pg_url)
    admin = psycopg2.connect(host=u.host, port=u.port, user=u.username, dbname=u.database)
    admin.autocommit = True
    sql = (REPO / "deploy" / "postgres" / "site_agent_role.sql").read_text()
    sql = sql.replace(":agent_password", "'pw'").replace(':"DBNAME"', f'"{u.database}"')
    sql = sql.replace(" cdm ", f" {eunomia_pg_schema} ").replace("SCHEMA cdm", f"SCHEMA {eunomia_pg_schema}")
    sql = sql.replace("results", "agent_results")
    with admin.cursor() as cur:
        cur.execute("DROP SCHEMA IF EXISTS agent_results CASCADE")
        cur.execute("DROP OWNED BY optima_agent" if _role_exists(cur) else "SELECT 1")
        cur.execute("DROP ROLE IF EXISTS optima_agent")
        cur.execute(sql)
    agent_url = f"postgresql+psycopg2://optima_agent:pw@{u.host}:{u.port}/{u.database}"
    proc = agent("cohorts", "--cdm", agent_url, "--cdm-schema", eunomia_pg_schema, "--write-schema", "agent_results",
                 "--definitions", str(GIB), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["number_subjects"] > 400
    agent_conn = psycopg2.connect(host=u.host, port=u.port, user="optima_agent", password="pw", dbname=u.database)
    try:
        with agent_conn.cursor() as cur, pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute(f"DELETE FROM {eunomia_pg_schema}.person")
    finally:
        agent_conn.close()
        admin.close()


def _role_exists(cur) -> bool:
    cur.execute("SELECT 1 FROM pg_roles WHERE rolname = 'optima_agent'")
    return cur.fetchone() is not None
