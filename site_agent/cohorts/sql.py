"""ATLAS JSON -> OHDSI SQL (OHDSI's Circe port) -> rendered and translated statements.

Circe writes its attrition statistics (``cohort_inclusion_result``, ``cohort_summary_stats``)
only for definitions that have inclusion rules. For a definition without any, the same two
tables get the qualifying events here, counted in the database from Circe's own
``qualified_events`` temp table before it is dropped: one mask-0 row per mode (0: events,
1: persons, Circe's "best event" per person), so the attrition's first step is the real
qualifying count for every cohort.
"""

from __future__ import annotations

import re

from circe.api import build_cohort_query, cohort_expression_from_json
from circe.cohortdefinition import BuildExpressionQueryOptions
from circe.sqlrender import render, split_sql, translate

from optima_common.errors import CohortDefinitionError
from site_agent.cohorts.definitions import CohortDefinition

DIALECTS = {"duckdb": "duckdb", "postgresql": "postgresql"}


def cohort_sql(
    definition: CohortDefinition,
    *,
    dialect: str,
    cdm_schema: str,
    vocab_schema: str,
    write_schema: str,
    generate_stats: bool = True,
) -> list[str]:
    """The statements that (re)build one cohort and its inclusion statistics."""
    try:
        expression = cohort_expression_from_json(definition.json_text)
    except Exception as exc:  # circepy raises ValueError/pydantic errors for bad expressions
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CohortDefinitionError(f"{definition.path}: not a valid Circe cohort expression: {first}") from None
    opts = BuildExpressionQueryOptions()
    opts.cdm_schema = cdm_schema
    opts.vocabulary_schema = vocab_schema
    opts.result_schema = write_schema
    opts.target_table = f"{write_schema}.cohort"
    opts.cohort_id = definition.cohort_definition_id
    opts.generate_stats = generate_stats
    try:
        ohdsi_sql = build_cohort_query(expression, opts)
        translated = translate(render(ohdsi_sql), DIALECTS[dialect])
    except Exception as exc:
        raise CohortDefinitionError(f"{definition.path}: cannot translate to {dialect} SQL: {exc}") from None
    statements = [s for s in split_sql(translated) if s.strip()]
    if generate_stats and not definition.inclusion_rule_names:
        statements = _with_qualifying_stats(statements, write_schema, definition.cohort_definition_id)
    return statements


_QUALIFIED_CLEANUP = re.compile(r"^\s*(DELETE\s+FROM|TRUNCATE\s+TABLE|DROP\s+TABLE)\s+qualified_events\b", re.IGNORECASE)


def _with_qualifying_stats(statements: list[str], ws: str, cid: int) -> list[str]:
    """Insert the qualifying-event statistics of a rule-less cohort before Circe drops its events."""
    at = next((i for i, s in enumerate(statements) if _QUALIFIED_CLEANUP.match(s)), None)
    if at is None:
        raise CohortDefinitionError(f"cohort {cid}: the generated SQL has no qualified_events step to count")
    stats = [
        f"DELETE FROM {ws}.cohort_inclusion_result WHERE cohort_definition_id = {cid}",
        f"DELETE FROM {ws}.cohort_summary_stats WHERE cohort_definition_id = {cid}",
        f"INSERT INTO {ws}.cohort_inclusion_result (cohort_definition_id, inclusion_rule_mask, person_count, mode_id) "
        f"SELECT {cid}, 0, count(*), 0 FROM qualified_events",
        f"INSERT INTO {ws}.cohort_inclusion_result (cohort_definition_id, inclusion_rule_mask, person_count, mode_id) "
        f"SELECT {cid}, 0, count(DISTINCT person_id), 1 FROM qualified_events",
        f"INSERT INTO {ws}.cohort_summary_stats (cohort_definition_id, base_count, final_count, mode_id) "
        f"SELECT {cid}, count(*), count(*), 0 FROM qualified_events",
        f"INSERT INTO {ws}.cohort_summary_stats (cohort_definition_id, base_count, final_count, mode_id) "
        f"SELECT {cid}, count(DISTINCT person_id), count(DISTINCT person_id), 1 FROM qualified_events",
    ]
    return statements[:at] + stats + statements[at:]
