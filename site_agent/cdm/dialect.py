"""Every SQL difference between the agent's two databases (DuckDB and PostgreSQL), in one place.

Analyses write portable SQL and call these helpers where the dialects disagree; nothing else
in the agent branches on the dialect name when it builds SQL.
"""

from __future__ import annotations

DUCKDB = "duckdb"
POSTGRESQL = "postgresql"
SUPPORTED = (DUCKDB, POSTGRESQL)


def days_between(dialect: str, start: str, end: str) -> str:
    """The signed number of days from ``start`` to ``end`` (both cast to DATE)."""
    if dialect == DUCKDB:
        return f"datediff('day', CAST({start} AS DATE), CAST({end} AS DATE))"
    return f"(CAST({end} AS DATE) - CAST({start} AS DATE))"


def add_days(dialect: str, date: str, days: int) -> str:
    """``date`` shifted by a whole number of days (negative: earlier)."""
    if dialect == POSTGRESQL:
        return f"(CAST({date} AS DATE) + INTERVAL '{int(days)} days')"
    return f"(CAST({date} AS DATE) + {int(days)})"


def add_years(dialect: str, date: str, years: str) -> str:
    """``date + n years`` as a DATE (29 February + 1 year = 28 February on both backends)."""
    if dialect == DUCKDB:
        return f"CAST({date} + to_years(CAST({years} AS INTEGER)) AS DATE)"
    return f"CAST({date} + make_interval(years => CAST({years} AS INTEGER)) AS DATE)"


def date_field(dialect: str, field: str, date: str) -> str:
    """A calendar field (``year``, ``month``, ``day``) of a DATE expression as an INTEGER.

    PostgreSQL's ``EXTRACT`` returns ``numeric`` (since version 14): about 0.30 us a row against
    0.03 for ``date_part`` (a double) on 4.36M dates (docs/performance.md); DuckDB's is an integer."""
    if field not in ("year", "month", "day"):
        raise ValueError(f"unknown date field {field!r}")
    if dialect == DUCKDB:
        return f"CAST(EXTRACT({field.upper()} FROM {date}) AS INTEGER)"
    return f"CAST(date_part('{field}', {date}) AS INTEGER)"


def year_of(dialect: str, date: str) -> str:
    """The calendar year of a DATE expression as an INTEGER (:func:`date_field`)."""
    return date_field(dialect, "year", date)


def double(dialect: str) -> str:
    """The 8-byte floating point type name."""
    return "DOUBLE" if dialect == DUCKDB else "DOUBLE PRECISION"


def quantile(dialect: str, expr: str, p: float) -> str:
    """Type-7 (linear interpolation) quantile of ``expr`` as an aggregate, NULLs ignored."""
    if dialect == DUCKDB:
        return f"quantile_cont(CAST({expr} AS DOUBLE), {p})"
    return f"percentile_cont({p}) WITHIN GROUP (ORDER BY CAST({expr} AS DOUBLE PRECISION))"


def percentiles(expr: str, ps: tuple[float, ...], *, discrete: bool = False) -> str:
    """All quantiles ``ps`` of ``expr`` in one ordered-set aggregate: an array (1-based on both backends).

    ``percentile_cont`` is type 7 (linear interpolation), ``percentile_disc`` the smallest value
    whose cumulative share reaches p (an observed value, e.g. a date); NULLs are ignored. One
    sort of the group's rows gives every quantile, where one aggregate per quantile sorts them
    once each. Same syntax on both backends (DuckDB maps it to ``quantile_cont``/``quantile_disc``
    with a list), and the same values as the one-quantile form (tests/test_dialect_percentiles.py).
    """
    fn = "PERCENTILE_DISC" if discrete else "PERCENTILE_CONT"
    return f"{fn}(ARRAY[{', '.join(repr(float(p)) for p in ps)}]) WITHIN GROUP (ORDER BY {expr})"


def index_and_analyze(dialect: str, table: str, index_columns: tuple[str, ...] = ()) -> list[str]:
    """Statements giving a freshly filled table (TEMP or in the write schema) an index and planner statistics.

    PostgreSQL's autovacuum never analyzes TEMP tables (and reaches a just-filled table only
    after its next nap), so without ``ANALYZE`` the planner
    guesses their size and value spread (it put a 21-fold year expansion of the whole
    denominator before a join that keeps 3% of it; docs/performance.md). DuckDB keeps
    statistics as it writes and needs neither.
    """
    if dialect != POSTGRESQL:
        return []
    out = []
    if index_columns:
        name = f"{table.split('.')[-1]}_{'_'.join(index_columns)}"[:63]
        out.append(f"CREATE INDEX IF NOT EXISTS {name} ON {table} ({', '.join(index_columns)})")
    return [*out, f"ANALYZE {table}"]


def placeholder(dialect: str) -> str:
    """The DB-API parameter marker of the dialect's driver (duckdb: ``?``, psycopg2: ``%s``)."""
    return "?" if dialect == DUCKDB else "%s"
