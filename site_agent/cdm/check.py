"""Validate that a CDM has what the agent needs, and describe it (``site-agent cdm check``)."""

from __future__ import annotations

from pydantic import BaseModel

from optima_common.errors import CdmValidationError
from site_agent.cdm.connection import CdmConnection
from site_agent.cdm.indexes import missing_indexes

# Tables and columns the cohort engine and diagnostics read. Vocabulary tables may live
# in a separate vocabulary schema.
REQUIRED_CDM_COLUMNS: dict[str, tuple[str, ...]] = {
    "person": ("person_id", "gender_concept_id", "year_of_birth", "month_of_birth", "day_of_birth",
               "race_concept_id", "ethnicity_concept_id"),
    "observation_period": ("observation_period_id", "person_id", "observation_period_start_date",
                           "observation_period_end_date", "period_type_concept_id"),
    "visit_occurrence": ("visit_occurrence_id", "person_id", "visit_concept_id", "visit_start_date", "visit_end_date"),
    "condition_occurrence": ("condition_occurrence_id", "person_id", "condition_concept_id",
                             "condition_start_date", "condition_end_date", "condition_source_concept_id",
                             "condition_source_value", "condition_type_concept_id", "visit_occurrence_id"),
    "drug_exposure": ("drug_exposure_id", "person_id", "drug_concept_id", "drug_exposure_start_date",
                      "drug_exposure_end_date", "drug_source_concept_id", "days_supply", "quantity"),
    "procedure_occurrence": ("procedure_occurrence_id", "person_id", "procedure_concept_id", "procedure_date",
                             "procedure_source_concept_id"),
    "measurement": ("measurement_id", "person_id", "measurement_concept_id", "measurement_date",
                    "value_as_number", "value_as_concept_id", "unit_concept_id", "measurement_source_concept_id"),
    "observation": ("observation_id", "person_id", "observation_concept_id", "observation_date"),
    "death": ("person_id", "death_date"),
    "cdm_source": ("cdm_source_name", "cdm_version", "vocabulary_version"),
}
REQUIRED_VOCAB_COLUMNS: dict[str, tuple[str, ...]] = {
    "concept": ("concept_id", "concept_name", "domain_id", "vocabulary_id", "concept_class_id",
                "standard_concept", "concept_code", "invalid_reason"),
    "concept_ancestor": ("ancestor_concept_id", "descendant_concept_id"),
    "concept_relationship": ("concept_id_1", "concept_id_2", "relationship_id"),
    "vocabulary": ("vocabulary_id", "vocabulary_version"),
}


class CdmReport(BaseModel):
    url: str
    dialect: str
    cdm_schema: str
    vocab_schema: str
    write_schema: str
    cdm_source_name: str | None
    cdm_version: str | None
    vocabulary_version: str | None
    cdm_release_date: str | None
    persons: int
    observation_periods: int
    observation_start: str | None
    observation_end: str | None
    missing_indexes: list[str] = []  # PostgreSQL: needed lookup columns without an index


def missing_parts(present: dict[str, set[str]], required: dict[str, tuple[str, ...]], schema: str) -> list[str]:
    """Human-readable names of each missing table or column (``schema.table`` / ``schema.table.col``)."""
    out: list[str] = []
    for table, cols in required.items():
        have = present.get(table)
        if have is None:
            out.append(f"{schema}.{table}")
            continue
        out.extend(f"{schema}.{table}.{c}" for c in cols if c not in have)
    return out


def validate_cdm(cdm: CdmConnection) -> None:
    """Raise CdmValidationError naming every missing table/column, in one line."""
    missing = missing_parts(cdm.table_columns(cdm.cdm_schema), REQUIRED_CDM_COLUMNS, cdm.cdm_schema)
    missing += missing_parts(cdm.table_columns(cdm.vocab_schema), REQUIRED_VOCAB_COLUMNS, cdm.vocab_schema)
    if missing:
        shown = ", ".join(missing[:12]) + (f" and {len(missing) - 12} more" if len(missing) > 12 else "")
        raise CdmValidationError(
            f"CDM at {cdm.display_url} is missing {shown}",
            hint="load the OMOP CDM v5.3/v5.4 tables, or point --cdm-schema/--vocab-schema at them",
        )


def _text(v) -> str | None:
    return None if v is None else str(v)


def describe_cdm(cdm: CdmConnection) -> CdmReport:
    """Validate, then report versions and sizes."""
    validate_cdm(cdm)
    s, v = cdm.cdm_schema, cdm.vocab_schema
    src = cdm.query_df(f"SELECT * FROM {s}.cdm_source")
    first = src.iloc[0] if len(src) else None
    vocab_version = cdm.scalar(f"SELECT max(vocabulary_version) FROM {v}.vocabulary WHERE vocabulary_id = 'None'")
    if vocab_version is None and first is not None:
        vocab_version = first.get("vocabulary_version")
    op = cdm.query_df(
        f"SELECT count(*) AS n, min(observation_period_start_date) AS lo, max(observation_period_end_date) AS hi "
        f"FROM {s}.observation_period"
    ).iloc[0]
    return CdmReport(
        url=cdm.display_url,
        dialect=cdm.dialect,
        cdm_schema=s,
        vocab_schema=v,
        write_schema=cdm.write_schema,
        cdm_source_name=_text(first.get("cdm_source_name")) if first is not None else None,
        cdm_version=_text(first.get("cdm_version")) if first is not None else None,
        vocabulary_version=_text(vocab_version),
        cdm_release_date=_text(first.get("cdm_release_date")) if first is not None else None,
        persons=int(cdm.scalar(f"SELECT count(*) FROM {s}.person")),
        observation_periods=int(op["n"]),
        observation_start=_text(op["lo"]),
        observation_end=_text(op["hi"]),
        missing_indexes=missing_indexes(cdm),
    )
