"""``dialect.date_field``: the year, month and day of DATE values on DuckDB and PostgreSQL equal
Python's, as integers, for awkward dates (leap days, year ends, the first and a far year, NULL)."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from site_agent.cdm import connect_cdm
from site_agent.cdm.dialect import date_field, year_of

DATES: list[date | None] = [
    date(2000, 2, 29), date(1900, 3, 1), date(1999, 12, 31), date(2000, 1, 1), date(2024, 2, 29),
    date(1, 1, 1), date(9999, 12, 31), date(1970, 1, 1), date(1969, 12, 31), None,
    *(date(2019, 12, 25) + timedelta(days=k) for k in range(0, 400, 7)),
]


@pytest.fixture
def cdm(empty_db):
    url, schema = empty_db
    write = "date_field_test"
    with connect_cdm(url, cdm_schema=schema, write_schema=write) as conn:
        with conn.transaction() as script:
            script.execute(f"CREATE SCHEMA IF NOT EXISTS {write}")
            script.execute(f"DROP TABLE IF EXISTS {write}.dates")
            script.execute(f"CREATE TABLE {write}.dates (i INTEGER, d DATE)")
            values = ", ".join(f"({i}, {'NULL' if d is None else repr(d.isoformat())})" for i, d in enumerate(DATES))
            script.execute(f"INSERT INTO {write}.dates VALUES {values}")
        yield conn, f"{write}.dates"


def test_fields_equal_python_as_integers(cdm):
    conn, table = cdm
    dia = conn.dialect
    df = conn.query_df(f"SELECT i, {date_field(dia, 'year', 'd')} AS y, {date_field(dia, 'month', 'd')} AS m, "
                       f"{date_field(dia, 'day', 'd')} AS dd, {year_of(dia, 'd')} AS y2, "
                       f"{date_field(dia, 'year', 'd')} + 1 AS y_next FROM {table} ORDER BY i")
    assert len(df) == len(DATES)
    for row in df.itertuples(index=False):
        d = DATES[int(row.i)]
        got = [row.y, row.m, row.dd, row.y2, row.y_next]
        if d is None:
            assert all(v is None or v != v for v in got)  # NULL (pandas may give NaN)
            continue
        assert [int(v) for v in got] == [d.year, d.month, d.day, d.year, d.year + 1]
        assert all(float(v) == int(v) for v in got)  # whole numbers: an INTEGER, not a fraction


def test_fields_are_typed_integer(cdm):
    conn, table = cdm
    typeof = "typeof" if conn.dialect == "duckdb" else "pg_typeof"
    for field in ("year", "month", "day"):
        df = conn.query_df(f"SELECT CAST({typeof}({date_field(conn.dialect, field, 'd')}) AS VARCHAR) AS t "
                           f"FROM {table} LIMIT 1")
        assert str(df["t"].iloc[0]).lower() == "integer", field


def test_unknown_field_is_refused():
    with pytest.raises(ValueError, match="unknown date field"):
        date_field("postgresql", "doy", "d")
