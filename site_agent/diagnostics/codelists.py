"""Codelist diagnostics (PhenotypeR ``codelistDiagnostics``), in CodelistGenerator layouts.

A cohort's codelists are its ATLAS concept sets (``expression["ConceptSets"]``), resolved in
the database by :func:`resolve_concept_set_sql` with Circe's semantics; the codelist name is
the concept set name. Every diagnostic here has scope ``"cohort"``.

* ``code_use`` mirrors ``CodelistGenerator::summariseCodeUse(countBy = c("record", "person"),
  byConcept = TRUE, byYear = TRUE)`` (settings ``date_range_start``/``date_range_end`` =
  ``"none"``). We chose ``code_use`` rather than ``achilles_code_use`` because the counts come
  from the clinical tables themselves (no Achilles tables needed) and carry the year strata
  and the standard/source columns of ``summariseCodeUse``.
* ``cohort_code_use`` mirrors ``summariseCohortCodeUse(timing = "entry")`` (index event
  breakdown: codes recorded on the cohort start date of the cohort's subjects).
* ``orphan_code_use`` and ``unmapped_codes`` live in :mod:`site_agent.diagnostics.orphans`.

Records are searched, as CodelistGenerator does, in the table of each codelist concept's
domain (Condition -> condition_occurrence, Drug -> drug_exposure, Procedure ->
procedure_occurrence, Measurement -> measurement, Observation -> observation, Device ->
device_exposure, Visit -> visit_occurrence) by its standard concept column; concepts of
other domains are not counted. The year is that of the record's start date.

Deviation: ``group_name`` is ``"cohort_name &&& codelist_name"`` for every result type (R
uses ``"codelist_name"`` alone except in ``cohort_code_use``): our units are per cohort and
two cohorts may hold different concept sets under one name (e.g. ``SCLC``), which would
otherwise give clashing rows once the runner binds the units.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from optima_common.results import SEP, SummarisedResult
from site_agent.cdm.dialect import year_of
from site_agent.cohorts.concept_sets import resolve_concept_set_sql
from site_agent.cohorts.definitions import CohortDefinition
from site_agent.diagnostics.base import Diagnostic, DiagnosticContext, settings_row

PACKAGE = "CodelistGenerator"
CODE_USE = "code_use"
COHORT_CODE_USE = "cohort_code_use"
GROUP_NAME = f"cohort_name{SEP}codelist_name"
CODE_USE_ADDITIONAL = SEP.join(["source_concept_name", "source_concept_id", "source_concept_value",
                                "type_concept_id", "type_concept_name", "domain_id", "table"])


@dataclass(frozen=True)
class DomainTable:
    """Where records of one (lower-case) concept domain live."""

    domain: str
    table: str
    prefix: str
    date_col: str

    def col(self, suffix: str) -> str:
        return f"{self.prefix}_{suffix}"


DOMAIN_TABLES: tuple[DomainTable, ...] = (
    DomainTable("condition", "condition_occurrence", "condition", "condition_start_date"),
    DomainTable("drug", "drug_exposure", "drug", "drug_exposure_start_date"),
    DomainTable("procedure", "procedure_occurrence", "procedure", "procedure_date"),
    DomainTable("measurement", "measurement", "measurement", "measurement_date"),
    DomainTable("observation", "observation", "observation", "observation_date"),
    DomainTable("device", "device_exposure", "device", "device_exposure_start_date"),
    DomainTable("visit", "visit_occurrence", "visit", "visit_start_date"),
)




def cohort_codelists(cohort: CohortDefinition) -> list[tuple[str, list[dict]]]:
    """(codelist name, concept-set items) for each concept set of the cohort, names made unique."""
    out: list[tuple[str, list[dict]]] = []
    seen: set[str] = set()
    for cs in cohort.expression.get("ConceptSets") or []:
        name = str(cs.get("name") or f"concept_set_{cs.get('id')}")
        if name in seen:
            name = f"{name}_{cs.get('id')}"
        seen.add(name)
        out.append((name, list((cs.get("expression") or {}).get("items") or [])))
    return out


def codelist_ctes(ctx: DiagnosticContext, codelists: list[tuple[str, list[dict]]]) -> str:
    """CTEs ``codelist(codelist_id, concept_id)`` and ``cl(codelist_id, concept_id, domain_id,
    domain_lc)`` (no leading WITH); ``codelist_id`` indexes ``codelists``."""
    return _codelist_ctes(ctx, [(None, codelists)])


def _codelist_ctes(ctx: DiagnosticContext, cohorts: list[tuple[int | None, list[tuple[str, list[dict]]]]]) -> str:
    """:func:`codelist_ctes` of several cohorts' codelists, (cohort id, codelists) each; with cohort ids
    (not ``None``) both CTEs start with a ``cid`` column and ``codelist_id`` indexes that cohort's list."""
    with_cid = cohorts[0][0] is not None
    parts = [f"SELECT {f'{int(cid)} AS cid, ' if with_cid else ''}{i} AS codelist_id, q.concept_id "
             f"FROM ({resolve_concept_set_sql(ctx, items)}) q"
             for cid, codelists in cohorts for i, (_, items) in enumerate(codelists)]
    v = ctx.vocab_schema
    return (f"codelist AS ({' UNION ALL '.join(parts)}),\n"
            f"cl AS (SELECT {'l.cid, ' if with_cid else ''}l.codelist_id, l.concept_id, c.domain_id, "
            f"lower(c.domain_id) AS domain_lc FROM codelist l JOIN {v}.concept c ON c.concept_id = l.concept_id)")


def present_tables(ctx: DiagnosticContext) -> list[DomainTable]:
    """The domain tables that exist in the CDM schema."""
    cols = ctx.cdm.table_columns(ctx.cdm_schema)
    return [t for t in DOMAIN_TABLES if t.table in cols]


def text(value: Any) -> str:
    """A value for a name/level column: missing -> the string ``"NA"`` (as R's paste does)."""
    if value is None:
        return "NA"
    try:
        if pd.isna(value):
            return "NA"
    except (TypeError, ValueError):
        pass
    if isinstance(value, float) and value == int(value):
        return str(int(value))
    return str(value)


def settings_for(result_type: str, *, strata: str, additional: str, **extra: Any) -> list[dict]:
    """The settings row, with ``group``/``strata``/``additional`` given explicitly so that a unit
    without data rows has the same settings as one with (the runner merges identical ones)."""
    return [settings_row(1, result_type, package_name=PACKAGE, group=GROUP_NAME, strata=strata,
                         additional=additional, **extra)]


# ---------------------------------------------------------------- code use
def _records_sql(ctx: DiagnosticContext, tables: list[DomainTable], entry_of: int | None) -> str:
    """CTE ``recs``: one row per (cohort, codelist, record) of a codelist concept in its domain table;
    with ``entry_of`` (the one cohort of the statement) only records on a cohort start date of that
    cohort's subjects."""
    selects = []
    for t in tables:
        date = f"t.{t.date_col}"
        join_entry = ""
        if entry_of is not None:
            join_entry = (f" JOIN (SELECT DISTINCT subject_id, cohort_start_date FROM {ctx.cohort_table} "
                          f"WHERE cohort_definition_id = {int(entry_of)}) e "
                          f"ON e.subject_id = t.person_id AND e.cohort_start_date = CAST({date} AS DATE)")
        selects.append(
            f"SELECT cl.cid, cl.codelist_id, t.person_id, t.{t.col('concept_id')} AS concept_id, "
            f"t.{t.col('source_concept_id')} AS source_concept_id, "
            f"COALESCE(CAST(t.{t.col('source_value')} AS VARCHAR), 'NA') AS source_value, "
            f"t.{t.col('type_concept_id')} AS type_concept_id, '{t.domain}' AS domain_id, "
            f"'{t.table}' AS table_name, {year_of(ctx.cdm.dialect, date)} AS year "
            f"FROM {ctx.cdm_schema}.{t.table} t JOIN cl ON cl.concept_id = t.{t.col('concept_id')} "
            f"AND cl.domain_lc = '{t.domain}'{join_entry}")
    return "recs AS (" + " UNION ALL ".join(selects) + ")"


_CONCEPT_KEYS = "concept_id, source_concept_id, source_value, type_concept_id, domain_id, table_name"
_NO_CONCEPT = ("CAST(NULL AS INTEGER) AS concept_id, CAST(NULL AS INTEGER) AS source_concept_id, "
               "CAST(NULL AS VARCHAR) AS source_value, CAST(NULL AS INTEGER) AS type_concept_id, "
               "CAST(NULL AS VARCHAR) AS domain_id, CAST(NULL AS VARCHAR) AS table_name")


def code_use_counts(ctx: DiagnosticContext, cohorts: list[tuple[int, list[tuple[str, list[dict]]]]], *,
                    by_year: bool, entry_of: int | None = None) -> pd.DataFrame:
    """Record and person counts per (cohort, codelist): total and per concept (and per year).

    ``cohorts``: (cohort id, its codelists) pairs, all answered by one statement that reads each
    domain table once (one statement per cohort read the clinical tables once per cohort; at 10M
    persons they no longer stay in memory between cohorts; docs/performance.md, session 18).
    ``entry_of``: only records on a cohort start date of that cohort's subjects, which must then be the
    only cohort of ``cohorts``. One statement for every cohort's entries joined each cohort's entries to
    its codelists before the clinical tables, and PostgreSQL then looked up a person's records once per
    (entry, codelist concept): 599 s at 10M persons (docs/performance.md, session 18).

    Columns: cid, codelist_id, level ('overall'|'concept'), year (None when not by year), the
    concept keys, their names, record_count, person_count.
    """
    tables = present_tables(ctx)
    cohorts = [(int(cid), cls) for cid, cls in cohorts if cls]
    if not cohorts or not tables:
        return pd.DataFrame()
    if entry_of is not None and [cid for cid, _ in cohorts] != [int(entry_of)]:
        raise ValueError("entry code use answers one cohort per statement")
    # persons in two steps: the records per (cohort, codelist, concept keys, year, person) once, then each
    # level sums them per person and counts the rows: hash aggregates only (COUNT(DISTINCT person_id)
    # made PostgreSQL sort all the records once per level; docs/performance.md)
    keys = f"{_CONCEPT_KEYS}, year" if by_year else _CONCEPT_KEYS
    pc = (f"pc AS MATERIALIZED (SELECT cid, codelist_id, {keys}, person_id, COUNT(*) AS n FROM recs "
          f"GROUP BY cid, codelist_id, {keys}, person_id)")
    counts = "CAST(SUM(n) AS BIGINT) AS record_count, COUNT(*) AS person_count"
    no_year = "CAST(NULL AS INTEGER) AS year"

    def per_person(by: str) -> str:  # one row per person of each group of ``by``
        return f"(SELECT {by}, person_id, SUM(n) AS n FROM pc GROUP BY {by}, person_id) p"

    concept = (f"SELECT cid, codelist_id, 'concept' AS level, {no_year}, {_CONCEPT_KEYS}, {counts} FROM "
               + (per_person(f"cid, codelist_id, {_CONCEPT_KEYS}") if by_year else "pc")
               + f" GROUP BY cid, codelist_id, {_CONCEPT_KEYS}")
    aggs = [f"SELECT cid, codelist_id, 'overall' AS level, {no_year}, {_NO_CONCEPT}, {counts} "
            f"FROM {per_person('cid, codelist_id')} GROUP BY cid, codelist_id", concept]
    if by_year:
        aggs += [f"SELECT cid, codelist_id, 'overall' AS level, year, {_NO_CONCEPT}, {counts} "
                 f"FROM {per_person('cid, codelist_id, year')} GROUP BY cid, codelist_id, year",
                 f"SELECT cid, codelist_id, 'concept' AS level, year, {_CONCEPT_KEYS}, {counts} FROM pc "
                 f"GROUP BY cid, codelist_id, year, {_CONCEPT_KEYS}"]
    v = ctx.vocab_schema
    sql = (f"WITH {_codelist_ctes(ctx, cohorts)},\n{_records_sql(ctx, tables, entry_of)},\n{pc},\n"
           f"agg AS ({' UNION ALL '.join(aggs)})\n"
           "SELECT a.*, sc.concept_name AS concept_name, so.concept_name AS source_concept_name, "
           "ty.concept_name AS type_concept_name FROM agg a "
           f"LEFT JOIN {v}.concept sc ON sc.concept_id = a.concept_id "
           f"LEFT JOIN {v}.concept so ON so.concept_id = a.source_concept_id "
           f"LEFT JOIN {v}.concept ty ON ty.concept_id = a.type_concept_id")
    return ctx.cdm.query_df(sql)


def code_use_records(df: pd.DataFrame, cdm_name: str, cohort_name: str,
                     codelists: list[tuple[str, list[dict]]]) -> list[dict]:
    """Rows in the ``summariseCodeUse`` layout from one cohort's rows of :func:`code_use_counts`."""
    records: list[dict] = []
    for row in df.itertuples(index=False):  # aggregates only: one row per codelist/concept/year
        base = {"result_id": 1, "cdm_name": cdm_name, "group_name": GROUP_NAME,
                "group_level": f"{cohort_name}{SEP}{codelists[int(row.codelist_id)][0]}",
                "estimate_type": "integer"}
        if row.year is not None and not pd.isna(row.year):
            base.update(strata_name="year", strata_level=text(row.year))
        if row.level == "concept":
            base.update(variable_name=text(row.concept_name), variable_level=text(row.concept_id),
                        additional_name=CODE_USE_ADDITIONAL,
                        additional_level=SEP.join(text(x) for x in (
                            row.source_concept_name, row.source_concept_id, row.source_value,
                            row.type_concept_id, row.type_concept_name, row.domain_id, row.table_name)))
        else:
            base.update(variable_name="overall", variable_level=None)
        for est in ("record_count", "person_count"):
            records.append({**base, "estimate_name": est, "estimate_value": str(int(getattr(row, est)))})
    return records


def _code_use_of(ctx: DiagnosticContext, cohort: CohortDefinition) -> pd.DataFrame:
    """This cohort's rows of :func:`code_use_counts` by year over every cohort of the run, computed once
    per run (``ctx.memo``) and kept for the run's other cohorts."""
    run = sorted({c.cohort_definition_id: c for c in (*ctx.cohorts, cohort)}.values(),
                 key=lambda c: c.cohort_definition_id)
    key = ("code_use", tuple(c.cohort_definition_id for c in run))
    if key not in ctx.memo:
        ctx.memo[key] = code_use_counts(ctx, [(c.cohort_definition_id, cohort_codelists(c)) for c in run],
                                        by_year=True)
    df = ctx.memo[key]
    return df[pd.to_numeric(df["cid"]) == cohort.cohort_definition_id] if len(df) else df


def run_code_use(ctx: DiagnosticContext, unit: tuple[CohortDefinition, ...]) -> SummarisedResult:
    """``summariseCodeUse()`` of the cohort's concept sets, overall and by year."""
    (cohort,) = unit
    df = _code_use_of(ctx, cohort)
    records = code_use_records(df, ctx.cdm_name, cohort.cohort_name, cohort_codelists(cohort))
    settings = settings_for(CODE_USE, strata="year", additional=CODE_USE_ADDITIONAL,
                            date_range_start="none", date_range_end="none")
    return SummarisedResult.from_records(records, settings)


def run_cohort_code_use(ctx: DiagnosticContext, unit: tuple[CohortDefinition, ...]) -> SummarisedResult:
    """``summariseCohortCodeUse(timing = "entry")``: codes on the cohort start date."""
    (cohort,) = unit
    codelists = cohort_codelists(cohort)
    df = code_use_counts(ctx, [(cohort.cohort_definition_id, codelists)], by_year=False,
                         entry_of=cohort.cohort_definition_id)
    records = code_use_records(df, ctx.cdm_name, cohort.cohort_name, codelists)
    settings = settings_for(COHORT_CODE_USE, strata="", additional=CODE_USE_ADDITIONAL, timing="entry")
    return SummarisedResult.from_records(records, settings)


DIAGNOSTICS: list[Diagnostic] = [
    Diagnostic("code_use", "cohort", (CODE_USE,), run_code_use, {"by_year": True, "version": 1}),
    Diagnostic("cohort_code_use", "cohort", (COHORT_CODE_USE,), run_cohort_code_use,
               {"timing": "entry", "version": 1}),
]
