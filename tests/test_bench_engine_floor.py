"""benchmarks/bench_engine_floor.py: the same primitives on DuckDB and PostgreSQL, checked to agree."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_engine_floor.py"

pytestmark = pytest.mark.postgres


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


def test_every_primitive_timed_on_both_engines_one_core_and_all(eunomia_duckdb, pg_url, eunomia_pg_schema):
    proc = _run("--cdm", str(eunomia_duckdb), "--pg", pg_url, "--pg-schema", eunomia_pg_schema, "--repeat", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_engine_floor import PRIMITIVES

    rows = [line.split() for line in proc.stdout.splitlines()[1:] if line.strip()]
    assert [(r[0], r[1]) for r in rows] == [(n, c) for c in ("1", "all") for n in PRIMITIVES]
    for r in rows:
        duck_s, pg_s, ratio = float(r[2]), float(r[4]), float(r[6])
        assert duck_s >= 0 and pg_s > 0 and ratio >= 0  # a ratio under 0.05 prints as 0.0
        if duck_s >= 0.05:  # printed to 3 decimals: the quotient of small ones is not the printed ratio
            assert ratio == pytest.approx(pg_s / duck_s, rel=0.05, abs=0.1)


def test_a_different_cdm_is_refused_not_timed(eunomia_duckdb, pg_url, eunomia_pg_schema, tmp_path):
    """The engines' answers are compared: a DuckDB file that is not the PostgreSQL CDM stops the run."""
    other = tmp_path / "other.duckdb"
    shutil.copy(eunomia_duckdb, other)
    con = duckdb.connect(str(other))
    (n,) = con.execute("SELECT count(*) FROM measurement").fetchone()
    assert n > 0
    con.execute("DELETE FROM measurement WHERE person_id % 2 = 0")
    con.close()
    proc = _run("--cdm", str(other), "--pg", pg_url, "--pg-schema", eunomia_pg_schema, "--repeat", "1",
                "--only", "scan")
    assert proc.returncode != 0
    assert "the engines disagree" in proc.stderr and "not the same CDM" in proc.stderr


def test_bad_arguments_answer_one_line(tmp_path, pg_url, eunomia_duckdb):
    missing = _run("--cdm", str(tmp_path / "nope.duckdb"), "--pg", pg_url)
    assert missing.returncode != 0 and "no DuckDB file at" in missing.stderr
    unknown = _run("--cdm", str(tmp_path / "nope.duckdb"), "--pg", pg_url, "--only", "scan,teleport")
    assert unknown.returncode != 0 and "unknown primitive(s) teleport" in unknown.stderr
    neither = _run("--cdm", str(tmp_path / "nope.duckdb"))
    assert neither.returncode != 0 and "give one of --pg URL or --pg-root DIR" in neither.stderr
    unreachable = _run("--cdm", str(eunomia_duckdb), "--pg", "postgresql+psycopg2://nobody@127.0.0.1:1/none")
    assert unreachable.returncode != 0
    assert "cannot open the PostgreSQL CDM" in unreachable.stderr and "Traceback" not in unreachable.stderr
