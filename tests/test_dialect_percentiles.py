"""``dialect.percentiles``: several quantiles in one ordered-set aggregate, on DuckDB and PostgreSQL,
against numpy (``linear`` = percentile_cont, ``inverted_cdf`` = percentile_disc) and against the
one-quantile form the characteristics used before (the same values, bit for bit)."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import numpy as np
import pytest

from site_agent.cdm import connect_cdm
from site_agent.cdm.dialect import percentiles

PS = (0.25, 0.5, 0.75)
# groups: odd and even sizes, ties, one row, NULLs (ignored), negatives, an all-NULL group
GROUPS: dict[int, list[int | None]] = {
    1: [7, 3, 3, 10, -2, 8, 8, 8, 1],
    2: [5, 1, 4, 2],
    3: [42],
    4: [None, 6, None, 2, 9, 13, 13, 0, 4, 11, 5, 5],
    5: [None, None],
}
DAY0 = date(2020, 2, 27)


def _rows() -> list[tuple[int, int | None]]:
    rng = np.random.default_rng(3)
    big = [int(x) for x in rng.integers(-400, 5000, size=997)]  # not a multiple of 4: interpolation
    return [(g, x) for g, xs in {**GROUPS, 6: big}.items() for x in xs]


@pytest.fixture
def table(empty_db):
    rows = _rows()
    url, schema = empty_db
    write = "pct_test"
    with connect_cdm(url, cdm_schema=schema, write_schema=write) as cdm:
        with cdm.transaction() as script:
            script.execute(f"CREATE SCHEMA IF NOT EXISTS {write}")
            script.execute(f"DROP TABLE IF EXISTS {write}.pct_t")
            script.execute(f"CREATE TABLE {write}.pct_t (g INTEGER, x INTEGER, d DATE)")
            values = ", ".join(
                f"({g}, {'NULL' if x is None else x}, "
                f"{'NULL' if x is None else repr(str(DAY0 + timedelta(days=x)))})" for g, x in rows)
            script.execute(f"INSERT INTO {write}.pct_t VALUES {values}")
        yield cdm, f"{write}.pct_t", rows


def test_percentiles_match_numpy_and_the_scalar_form(table):
    cdm, t, rows = table
    arr_c, arr_d = percentiles("x", PS), percentiles("d", PS, discrete=True)
    one = ", ".join(f"PERCENTILE_CONT({p}) WITHIN GROUP (ORDER BY x) AS c{i}, "
                    f"PERCENTILE_DISC({p}) WITHIN GROUP (ORDER BY d) AS d{i}" for i, p in enumerate(PS))
    unpack = ", ".join(f"qc[{i + 1}] AS qc{i}, qd[{i + 1}] AS qd{i}" for i in range(len(PS)))
    df = cdm.query_df(f"SELECT g, {unpack}, {', '.join(f'c{i}, d{i}' for i in range(len(PS)))} FROM "
                      f"(SELECT g, {arr_c} AS qc, {arr_d} AS qd, {one} FROM {t} GROUP BY g) a ORDER BY g")
    assert df["g"].tolist() == [1, 2, 3, 4, 5, 6]
    by_group: dict[int, list[int]] = {}
    for g, x in rows:
        by_group.setdefault(g, [])
        if x is not None:
            by_group[g].append(x)
    for r in df.itertuples(index=False):
        xs = np.array(sorted(by_group[r.g]), dtype=float)
        for i, p in enumerate(PS):
            qc, qd, c, d = getattr(r, f"qc{i}"), getattr(r, f"qd{i}"), getattr(r, f"c{i}"), getattr(r, f"d{i}")
            if len(xs) == 0:
                assert all(v is None or v != v for v in (qc, qd, c, d))  # NULL (None or NaN in the frame)
                continue
            assert float(qc) == pytest.approx(np.quantile(xs, p, method="linear"), abs=1e-12)
            want = DAY0 + timedelta(days=int(np.quantile(xs, p, method="inverted_cdf")))
            assert _as_date(qd) == want
            assert float(qc) == float(c)  # bit for bit the one-quantile aggregate
            assert _as_date(qd) == _as_date(d)
    # the interpolating group really interpolates (the test would not see a disc/cont mix-up otherwise)
    assert float(df.loc[df["g"] == 2, "qc0"].iloc[0]) == 1.75


def _as_date(v) -> date:
    """A date column's value as a date (pandas may hand back a Timestamp or a datetime)."""
    return v.date() if isinstance(v, datetime) else v
