"""Connect to an OMOP CDM from a SQLAlchemy URL or a bare ``.duckdb`` path.

The CDM schema is read-only to the agent: everything it writes (cohorts, inclusion
statistics, scratch tables) goes to the write schema, which must differ from the CDM
schema. Statements run on one DBAPI connection so that Circe's temp tables live across
statements, inside one transaction so that a failure leaves nothing half-written.

``statement_timeout_seconds`` (> 0) bounds every statement: PostgreSQL enforces it itself
(``statement_timeout`` set at connect); DuckDB has no such setting, so a timer interrupts the
connection when a statement run through :class:`CdmConnection` outlives it.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from optima_common.errors import (
    CdmConnectionError,
    ConfigError,
    StatementTimeoutError,
)

SUPPORTED_DIALECTS = ("duckdb", "postgresql")
DEFAULT_CDM_SCHEMA = {"duckdb": "main", "postgresql": "public"}
DEFAULT_WRITE_SCHEMA = "results"
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def resolve_cdm_url(cdm: str) -> str:
    """Turn a bare DuckDB path into ``duckdb:///ABS_PATH``; leave URLs as they are."""
    if "://" in cdm:
        return cdm
    if cdm.endswith((".duckdb", ".db", ".ddb")):
        return f"duckdb:///{Path(cdm).expanduser().resolve()}"
    raise ConfigError(
        f"'{cdm}' is neither a SQLAlchemy URL nor a .duckdb file",
        hint="use duckdb:///path/cdm.duckdb, postgresql+psycopg2://user@host/db or a path ending in .duckdb",
    )


def safe_url(url: str) -> str:
    """The URL with any password masked, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def check_identifier(name: str, what: str) -> str:
    if not _IDENT.match(name):
        raise ConfigError(f"{what} '{name}' is not a plain SQL identifier (letters, digits, underscore)")
    return name.lower()


@dataclass
class CdmConnection:
    """An open CDM: engine plus the schemas the agent reads from and writes to."""

    engine: Engine
    url: str
    dialect: str
    cdm_schema: str
    write_schema: str
    vocab_schema: str
    _conn: Connection | None = field(default=None, repr=False)
    # per-connection memo for results that do not depend on cohorts (e.g. denominators)
    memo: dict = field(default_factory=dict, repr=False)
    statement_timeout: float = 0.0  # seconds per statement; 0: no limit

    @property
    def display_url(self) -> str:
        return safe_url(self.url)

    @property
    def is_server(self) -> bool:
        """A database server that runs each connection's statements on their own core
        (PostgreSQL), as opposed to DuckDB's one multi-threaded in-process engine."""
        return self.dialect == "postgresql"

    def connection(self) -> Connection:
        if self._conn is None or self._conn.closed:
            self._conn = self.engine.connect()
        return self._conn

    def query_df(self, sql: str) -> pd.DataFrame:
        """Run a read query and return a DataFrame (column names lower-cased)."""
        cur = self.connection().connection.cursor()
        try:
            with self.deadline():
                cur.execute(sql)
                cols = [d[0].lower() for d in cur.description]
                rows = cur.fetchall()
        finally:
            cur.close()
        return pd.DataFrame.from_records(rows, columns=cols)

    def scalar(self, sql: str):
        cur = self.connection().connection.cursor()
        try:
            with self.deadline():
                cur.execute(sql)
                row = cur.fetchone()
        finally:
            cur.close()
        return None if row is None else row[0]

    def execute_all(self, statements: Sequence[str]) -> None:
        """Run statements on the shared connection, one after another, outside any explicit
        transaction (TEMP tables, indexes, ANALYZE), each under the statement deadline."""
        cur = self.connection().connection.cursor()
        try:
            _Script(cur, self.deadline).execute_all(statements)
        finally:
            cur.close()

    @contextmanager
    def transaction(self) -> Iterator[_Script]:
        """One transaction on the shared connection; rolled back on any error."""
        conn = self.connection()
        dbapi = conn.connection
        dbapi.commit()  # close any implicit transaction left by reads
        cur = dbapi.cursor()
        if self.dialect == "duckdb":
            cur.execute("BEGIN TRANSACTION")
        try:
            yield _Script(cur, self.deadline)
            dbapi.commit()
        except BaseException:
            dbapi.rollback()
            raise
        finally:
            cur.close()

    @contextmanager
    def deadline(self) -> Iterator[None]:
        """DuckDB: interrupt the statement run inside once ``statement_timeout`` has passed."""
        if self.dialect != "duckdb" or not self.statement_timeout:
            yield
            return
        fired = threading.Event()

        def interrupt() -> None:
            fired.set()
            raw.interrupt()

        raw = self.connection().connection.dbapi_connection
        timer = threading.Timer(self.statement_timeout, interrupt)
        timer.daemon = True
        timer.start()
        try:
            yield
        except Exception:
            if fired.is_set():
                raise StatementTimeoutError(f"a statement ran longer than the statement timeout of "
                                            f"{self.statement_timeout:g} s and was cancelled",
                                            hint="raise statement_timeout_seconds in the site config") from None
            raise
        finally:
            timer.cancel()

    def table_columns(self, schema: str) -> dict[str, set[str]]:
        """Lower-cased table -> column names present in ``schema``."""
        df = self.query_df(
            "SELECT lower(table_name) AS t, lower(column_name) AS c FROM information_schema.columns "
            f"WHERE lower(table_schema) = '{schema.lower()}'"
        )
        out: dict[str, set[str]] = {}
        for t, c in zip(df["t"], df["c"]):
            out.setdefault(t, set()).add(c)
        return out

    def schema_exists(self, schema: str) -> bool:
        n = self.scalar(
            f"SELECT count(*) FROM information_schema.schemata WHERE lower(schema_name) = '{schema.lower()}'"
        )
        return bool(n)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self.engine.dispose()

    def __enter__(self) -> CdmConnection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Script:
    """Executes statements on one DBAPI cursor (no parameter interpolation)."""

    def __init__(self, cursor, deadline=None):
        self.cursor = cursor
        self._deadline = deadline or _no_deadline

    def execute(self, statement: str) -> None:
        with self._deadline():
            self.cursor.execute(statement)

    def execute_all(self, statements: Sequence[str]) -> None:
        for s in statements:
            self.execute(s)


@contextmanager
def _no_deadline() -> Iterator[None]:
    yield


def _tune_duckdb(cdm: CdmConnection) -> None:
    """Bound DuckDB's memory (it spills to disk beyond it) so a site's peak RSS stays predictable.

    ``OPTIMA_DUCKDB_MEMORY_LIMIT`` (default ``2GB``) and ``OPTIMA_DUCKDB_THREADS`` (default:
    DuckDB's own, the number of cores) override the settings.
    """
    cur = cdm.connection().connection.cursor()
    try:
        cur.execute(f"SET memory_limit = '{os.environ.get('OPTIMA_DUCKDB_MEMORY_LIMIT', '2GB')}'")
        if os.environ.get("OPTIMA_DUCKDB_THREADS"):
            cur.execute(f"SET threads = {int(os.environ['OPTIMA_DUCKDB_THREADS'])}")
    finally:
        cur.close()


def pg_session_options(statement_timeout_seconds: float = 0.0) -> str:
    """PostgreSQL settings the agent sets for its own session (libpq ``options``), none server-wide.

    The diagnostics are a few large aggregations over the CDM, not many short queries, so:
    ``work_mem`` 256MB (hash aggregates and sorts of a few million rows stay in memory instead
    of external merges on disk), ``temp_buffers`` 256MB (the denominator and the other TEMP
    tables live in session-local buffers, 8MB by default), ``jit`` off (its compile time, up to
    0.7 s per statement as profiled, exceeded what it saved on these queries; docs/performance.md).
    ``OPTIMA_PG_WORK_MEM``, ``OPTIMA_PG_TEMP_BUFFERS`` and ``OPTIMA_PG_JIT`` (on/off) override them.
    """
    opts = [f"-c work_mem={os.environ.get('OPTIMA_PG_WORK_MEM', '256MB')}",
            f"-c temp_buffers={os.environ.get('OPTIMA_PG_TEMP_BUFFERS', '256MB')}",
            f"-c jit={os.environ.get('OPTIMA_PG_JIT', 'off')}"]
    if statement_timeout_seconds > 0:
        opts.append(f"-c statement_timeout={max(1, round(statement_timeout_seconds * 1000))}")
    return " ".join(opts)


def connect_cdm(
    cdm: str,
    *,
    cdm_schema: str | None = None,
    write_schema: str | None = None,
    vocab_schema: str | None = None,
    must_exist: bool = True,
    statement_timeout_seconds: float = 0.0,
) -> CdmConnection:
    """Open the CDM at ``cdm`` (URL or .duckdb path) and check the schemas are usable.

    ``statement_timeout_seconds > 0`` cancels any statement that runs longer (see the module doc).
    """
    url = resolve_cdm_url(cdm)
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"cannot parse database URL '{cdm}': {exc}") from None
    dialect = parsed.get_backend_name()
    if dialect not in SUPPORTED_DIALECTS:
        raise ConfigError(
            f"database '{dialect}' in {safe_url(url)} is not supported", hint="use duckdb or postgresql"
        )
    if dialect == "duckdb" and must_exist:
        path = parsed.database
        if not path or path == ":memory:" or not Path(path).is_file():
            raise CdmConnectionError(
                f"no DuckDB file at {path or '(none)'}", hint="check the path, or create one with 'site-agent cdm synth'"
            )
    cdm_schema = check_identifier(cdm_schema or DEFAULT_CDM_SCHEMA[dialect], "CDM schema")
    write_schema = check_identifier(write_schema or DEFAULT_WRITE_SCHEMA, "write schema")
    vocab_schema = check_identifier(vocab_schema or cdm_schema, "vocabulary schema")
    if write_schema == cdm_schema:
        raise ConfigError(
            f"write schema '{write_schema}' is the CDM schema; the agent never writes into the CDM",
            hint="pass --write-schema with another schema, e.g. results",
        )
    try:
        connect_args = {}
        if dialect == "postgresql":
            connect_args["options"] = pg_session_options(statement_timeout_seconds)
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args=connect_args)
        cdm_conn = CdmConnection(engine, url, dialect, cdm_schema, write_schema, vocab_schema,
                                 statement_timeout=float(statement_timeout_seconds))
        cdm_conn.connection()
    except NoSuchModuleError as exc:
        raise ConfigError(f"no driver for {safe_url(url)}: {exc}") from None
    except (DBAPIError, OSError, Exception) as exc:  # driver errors vary by backend
        first = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CdmConnectionError(f"cannot connect to {safe_url(url)}: {first}") from None
    if dialect == "duckdb":
        _tune_duckdb(cdm_conn)
    if not cdm_conn.schema_exists(cdm_schema):
        cdm_conn.close()
        raise CdmConnectionError(
            f"schema '{cdm_schema}' does not exist in {safe_url(url)}", hint="pass --cdm-schema with the CDM's schema"
        )
    return cdm_conn
