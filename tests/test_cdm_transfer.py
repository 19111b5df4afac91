"""CDM values are carried unchanged: a DuckDB CDM keeps the specification's float fields as
doubles, and `cdm copy` streams rows into PostgreSQL without changing them, stages nothing on
disk, and leaves the target as it was when a row is refused."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import tempfile
from decimal import Decimal

import duckdb
import psycopg2
import pyarrow as pa
import pytest

from optima_common.errors import CdmValidationError
from site_agent.cdm.ddl import cdm_ddl
from site_agent.cdm.transfer import CsvStream, _pg_dsn, copy_duckdb_to_postgres
from tests.conftest import REPO

# awkward values the CSV between the two databases must carry: separators, quotes, line breaks,
# non-ASCII text, an empty string against NULL, the text "NULL", fractional seconds, doubles
# that a short format would round
NOTES = [
    (1, 1, dt.date(2020, 1, 2), dt.datetime(2020, 1, 2, 3, 4, 5, 123456), 'a, "quoted" text', "line one\nline two"),
    (2, 1, dt.date(1900, 12, 31), dt.datetime(1850, 1, 1), "", "NULL"),
    (3, 2, dt.date(2099, 1, 1), None, None, "Ärztin ü 中文 ; tab\there"),
    (4, 2, dt.date(2020, 2, 29), dt.datetime(2020, 2, 29, 23, 59, 59, 999999), "\\N backslash", "  padded  "),
]
VALUES = [(1, 1, 0.1), (2, 1, 1e-7), (3, 2, 1 / 3), (4, 2, 123456789.123), (5, 2, None), (6, 1, -0.0001)]


def _source(path) -> None:
    with duckdb.connect(str(path)) as con:
        for stmt in cdm_ddl("duckdb", "5.4", "main"):
            con.execute(stmt)
        con.executemany("INSERT INTO person (person_id, gender_concept_id, year_of_birth, race_concept_id, "
                        "ethnicity_concept_id) VALUES (?, 8507, 1970, 0, 0)", [(1,), (2,)])
        con.executemany("INSERT INTO note (note_id, person_id, note_date, note_datetime, note_title, note_text, "
                        "note_type_concept_id, note_class_concept_id, encoding_concept_id, language_concept_id) "
                        "VALUES (?, ?, ?, ?, ?, ?, 0, 0, 0, 0)", NOTES)
        con.executemany("INSERT INTO measurement (measurement_id, person_id, measurement_concept_id, "
                        "measurement_date, measurement_type_concept_id, value_as_number) "
                        "VALUES (?, ?, 0, DATE '2020-01-01', 0, ?)", VALUES)


def _pg(pg_url, sql: str) -> list[tuple]:
    with psycopg2.connect(**_pg_dsn(pg_url)) as con, con.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall() if cur.description else []


@pytest.mark.postgres
def test_copy_carries_awkward_values_unchanged_and_stages_no_file(pg_url, tmp_path, monkeypatch):
    src = tmp_path / "awkward.duckdb"
    _source(src)
    staging = tmp_path / "tmp"
    staging.mkdir()
    monkeypatch.setenv("TMPDIR", str(staging))
    monkeypatch.setattr(tempfile, "tempdir", None)

    report = copy_duckdb_to_postgres(src, pg_url, "awkward_copy")

    assert report.rows["note"] == len(NOTES) and report.rows["measurement"] == len(VALUES)
    assert list(staging.iterdir()) == []
    notes = _pg(pg_url, "SELECT note_id, person_id, note_date, note_datetime, note_title, note_text "
                        "FROM awkward_copy.note ORDER BY note_id")
    assert notes == NOTES  # NULL stays NULL, "" stays "", "NULL" stays text, microseconds kept
    values = _pg(pg_url, "SELECT measurement_id, person_id, value_as_number FROM awkward_copy.measurement "
                         "ORDER BY measurement_id")
    # value_as_number is NUMERIC in PostgreSQL: it must hold the double's shortest round-trip text
    assert values == [(i, p, None if v is None else Decimal(repr(v))) for i, p, v in VALUES]
    assert all(v is None or float(d) == v for (_, _, v), (_, _, d) in zip(VALUES, values))


# rows PostgreSQL refuses: a birth year its INTEGER column cannot hold, a NULL in a NOT NULL column
REFUSED = {
    "out of range": ["ALTER TABLE person ALTER year_of_birth TYPE BIGINT",
                     "UPDATE person SET year_of_birth = 99999999999 WHERE person_id = 2"],
    "null": ["ALTER TABLE person ALTER gender_concept_id DROP NOT NULL",
             "UPDATE person SET gender_concept_id = NULL WHERE person_id = 2"],
}


@pytest.mark.postgres
@pytest.mark.parametrize("refused", sorted(REFUSED))
def test_a_refused_row_leaves_the_previous_schema_whole(pg_url, tmp_path, refused):
    src = tmp_path / "good.duckdb"
    _source(src)
    copy_duckdb_to_postgres(src, pg_url, "kept_copy")
    before = _pg(pg_url, "SELECT note_id, note_text FROM kept_copy.note ORDER BY note_id")

    bad = tmp_path / "bad.duckdb"
    _source(bad)
    with duckdb.connect(str(bad)) as con:
        for stmt in REFUSED[refused]:
            con.execute(stmt)
    with pytest.raises(CdmValidationError, match="refused a row of person"):
        copy_duckdb_to_postgres(bad, pg_url, "kept_copy")
    assert _pg(pg_url, "SELECT note_id, note_text FROM kept_copy.note ORDER BY note_id") == before
    assert _pg(pg_url, "SELECT count(*) FROM kept_copy.person") == [(2,)]

    proc = subprocess.run([sys.executable, "-m", "site_agent", "cdm", "copy", str(bad), "--to", pg_url,
                           "--schema", "kept_copy"], capture_output=True, text=True, cwd=REPO, check=False)
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0 and "person" in proc.stderr and "Traceback" not in proc.stderr
    assert _pg(pg_url, "SELECT note_id, note_text FROM kept_copy.note ORDER BY note_id") == before


def test_duckdb_cdm_holds_the_float_fields_as_doubles(tmp_path):
    src = tmp_path / "floats.duckdb"
    _source(src)
    with duckdb.connect(str(src), read_only=True) as con:
        stored = con.execute("SELECT value_as_number FROM measurement ORDER BY measurement_id").fetchall()
        types = dict(con.execute("SELECT table_name || '.' || column_name, data_type FROM information_schema.columns "
                                 "WHERE column_name IN ('value_as_number', 'range_low', 'quantity', 'latitude')"
                                 ).fetchall())
    assert stored == [(v,) for _, _, v in VALUES]  # 1e-7 and 1/3 exactly, not rounded to 3 decimals
    floats = ["measurement.value_as_number", "measurement.range_low", "observation.value_as_number",
              "drug_exposure.quantity", "location.latitude"]  # float in the CDM v5.4 specification
    assert {c: types[c] for c in floats} == dict.fromkeys(floats, "DOUBLE")
    assert types["procedure_occurrence.quantity"] == "INTEGER"  # integer there: left alone


def test_stream_hands_out_at_most_the_asked_bytes_and_formats_one_batch_at_a_time():
    table = pa.table({"id": list(range(10)), "text": [f"row {i}, with comma" for i in range(10)]})
    pulled = []

    def batches():
        for b in table.to_batches(max_chunksize=3):
            pulled.append(b.num_rows)
            yield b

    stream = CsvStream(batches())
    first = stream.read(5)
    assert len(first) == 5 and pulled == [3]  # only the first batch formatted so far
    out = first
    while chunk := stream.read(7):
        assert len(chunk) <= 7
        out += chunk
    assert pulled == [3, 3, 3, 1]
    lines = out.decode().splitlines()
    assert lines == [f'{i},"row {i}, with comma"' for i in range(10)]
    assert stream.read(7) == b""
