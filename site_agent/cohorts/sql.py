"""ATLAS JSON -> OHDSI SQL (OHDSI's Circe port) -> rendered and translated statements."""

from __future__ import annotations

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
    return [s for s in split_sql(translated) if s.strip()]
