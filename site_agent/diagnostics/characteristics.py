"""Cohort characteristics at index, mirroring ``CohortCharacteristics::summariseCharacteristics()``.

Result type ``summarise_characteristics`` (package_name optima-federated), one result per
cohort (scope "cohort"), laid out as the R package lays it out (docs/result_layouts.md §3.5),
with the arguments PhenotypeR's ``cohortDiagnostics()`` passes:

* ``counts = TRUE, demographics = TRUE``: ``Number records``, ``Number subjects``,
  ``Cohort start date``/``Cohort end date`` (min, q25, median, q75, max), ``Age``,
  ``Prior observation``, ``Future observation``, ``Days in cohort`` (min, q25, median,
  q75, max, mean, sd) and ``Sex`` (``Female``/``Male``/``None``: count, percentage).
* ``ageGroup = list(age_group = <0 to 17, 18 to 64, 65 to 150>,
  age_group_5_years = <0 to 4, ..., 95 to 99, 100 to 150>)``: the R package names each
  age-group variable after its list name through ``str_to_sentence(gsub("_", " ", x))``,
  so the variables are ``Age group`` and ``Age group 5 years``; levels ``"<lo> to <hi>"``,
  and ``None`` for a missing age or one outside every group (PatientProfiles'
  ``missingAgeGroupValue``).
* ``tableIntersectCount = list("Number visits prior year" = list(tableName =
  "visit_occurrence", window = c(-365, -1)))`` (PhenotypeR) plus the matching
  ``tableIntersectFlag`` named ``Any visit prior year``; these rows carry
  ``additional_name = "table &&& window &&& value"`` and ``additional_level =
  "visit_occurrence &&& -365 to -1 &&& count|flag"`` (``uniteAdditional`` in the R code).

Definitions (PatientProfiles ``addDemographics``): age is whole years from the birth date
built from ``year_of_birth`` with missing month/day imputed as 1; prior/future observation
are the days from the start of / to the end of the observation period holding the index
date (missing when the index is outside observation); days in cohort = end - start + 1.
Categorical counts and percentages are over cohort *records*, as in R.

Deviations: quantiles of numeric variables are continuous (``percentile_cont``, R's type 7)
and typed ``numeric``; date quantiles are ``percentile_disc`` (an observed date). The visit
intersect counts visits whose *start* date is in [index-365, index-1]; PatientProfiles
counts visits overlapping the window and clips it to the observation period.
"""

from __future__ import annotations

import math
from datetime import date
from typing import Any

import pandas as pd

from optima_common.results import RESULT_COLUMNS, SummarisedResult
from site_agent.cdm.dialect import date_field, index_and_analyze, percentiles
from site_agent.cohorts.definitions import CohortDefinition
from site_agent.diagnostics.base import (
    Diagnostic,
    DiagnosticContext,
    fmt_number,
    settings_row,
)

RESULT_TYPE = "summarise_characteristics"
VISIT_WINDOW = (-365, -1)
AGE_GROUPS: dict[str, list[tuple[int, int]]] = {
    "Age group": [(0, 17), (18, 64), (65, 150)],
    "Age group 5 years": [(lo, lo + 4) for lo in range(0, 100, 5)] + [(100, 150)],
}
NUMERIC_VARS: dict[str, str] = {  # column in the person-level CTE -> variable name
    "age": "Age", "prior_obs": "Prior observation", "future_obs": "Future observation",
    "days_in_cohort": "Days in cohort", "visits": "Number visits prior year",
}
DATE_VARS: dict[str, str] = {"s": "Cohort start date", "e": "Cohort end date"}
SEX_LEVELS = ("Female", "Male", "None")
QUANTILES = (("q25", 0.25), ("median", 0.5), ("q75", 0.75))
assert VISIT_WINDOW[0] <= VISIT_WINDOW[1] < 0, "the visit count's window frame below is 'lo to hi PRECEDING'"


def fmt_value(x: Any) -> str | None:
    """A value as R's ``as.character`` writes it (10 significant digits: see base.fmt_float); None for missing."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    if isinstance(x, pd.Timestamp):
        return x.date().isoformat()
    if isinstance(x, date):
        return x.isoformat()
    if isinstance(x, bool):
        return "TRUE" if x else "FALSE"
    return fmt_number(x)  # int, float, numpy or Decimal (PostgreSQL numeric)


def pct(count: int, denominator: int) -> str | None:
    return None if denominator == 0 else fmt_value(100.0 * count / denominator)


#: TEMP tables (per connection) of one run: the cohort entries; per subject the span of their visit
#: windows; the subjects' person rows and observation periods
ENTRIES_TABLE = "optima_char_entries"
ENVELOPES_TABLE = "optima_char_envelopes"
SUBJECTS_TABLE = "optima_char_subjects"
PERIODS_TABLE = "optima_char_periods"
TEMP_TABLES = (PERIODS_TABLE, SUBJECTS_TABLE, ENVELOPES_TABLE, ENTRIES_TABLE)


def _temp_tables_sql(ctx: DiagnosticContext, cohort_ids: tuple[int, ...]) -> list[str]:
    """TEMP tables of the entries (rid, cid, subject_id, s, e) and of each subject's envelope (subject_id, a, b).

    The envelope ``[min(s) + lo, max(s) + hi]`` holds every visit window of the subject's
    entries, so the visits are read once against it (137k subjects at 1M persons) before
    they meet the entries: joined straight to the 1M entries, PostgreSQL hashed all 15.2M
    visits and built 14.9M (entry, visit) pairs before the window filter (docs/performance.md).
    The subjects' ``person`` rows and observation periods are read once per subject too, into
    two tables without an index, which the entries then meet by hash. Joined straight to the
    entries, PostgreSQL at 10M persons looked up ``person`` and ``observation_period`` through
    their indexes once per entry (10M entries of 1.36M subjects; the period lookup's cache was
    keyed on the entry date as well, so 9.0M lookups), reading pages at random: 96 of the
    statement's 256 s under ``EXPLAIN ANALYZE``; the family took 183.6 s before and 142.7 s
    after with a cold cache, 155.5 and 136.3 s warm (docs/performance.md, session 16).
    The tables are ``ANALYZE``d on PostgreSQL (as a CTE the planner guesses their size)."""
    ids = ", ".join(str(int(i)) for i in cohort_ids)
    lo, hi = VISIT_WINDOW
    dia, cdm = ctx.cdm.dialect, ctx.cdm_schema
    return [*(f"DROP TABLE IF EXISTS {t}" for t in TEMP_TABLES),
            f"CREATE TEMP TABLE {ENTRIES_TABLE} AS SELECT ROW_NUMBER() OVER () AS rid, cohort_definition_id AS cid, "
            f"subject_id, cohort_start_date AS s, cohort_end_date AS e FROM {ctx.cohort_table} "
            f"WHERE cohort_definition_id IN ({ids})",
            f"CREATE TEMP TABLE {ENVELOPES_TABLE} AS SELECT subject_id, MIN(s) + ({lo}) AS a, MAX(s) + ({hi}) AS b "
            f"FROM {ENTRIES_TABLE} GROUP BY subject_id",
            *index_and_analyze(dia, ENTRIES_TABLE), *index_and_analyze(dia, ENVELOPES_TABLE),
            f"CREATE TEMP TABLE {SUBJECTS_TABLE} AS SELECT p.person_id, p.gender_concept_id, p.year_of_birth, "
            f"p.month_of_birth, p.day_of_birth FROM {ENVELOPES_TABLE} en JOIN {cdm}.person p ON p.person_id = en.subject_id",
            f"CREATE TEMP TABLE {PERIODS_TABLE} AS SELECT op.person_id, op.observation_period_start_date AS op_start, "
            f"op.observation_period_end_date AS op_end "
            f"FROM {ENVELOPES_TABLE} en JOIN {cdm}.observation_period op ON op.person_id = en.subject_id",
            *index_and_analyze(dia, SUBJECTS_TABLE), *index_and_analyze(dia, PERIODS_TABLE)]


def _feature_sql(ctx: DiagnosticContext) -> str:
    """Person-level (record-level) features at index, then one row of aggregates per cohort (``cid``).

    Every cohort of the run at once (the entries of ``ENTRIES_TABLE``): visit_occurrence,
    person and observation_period are scanned once per run instead of once per cohort.

    * Visits in an entry's window ``[s + lo, s + hi]``: the subjects' visits inside their
      envelope (``ev``) and the entries, in one sequence per subject ordered by day number, and
      per entry a ``COUNT`` of the visit rows in the frame ``RANGE BETWEEN -lo PRECEDING AND
      -hi PRECEDING``: one sort of visits + entries (2.7M rows at 1M persons), where a join
      of visits to entries built one pair per (entry, visit) of the subject (32.8M pairs at
      1M persons: a treatment cohort has up to ~18 entries per subject).
    * ``f`` is MATERIALIZED: inlined, PostgreSQL evaluated the features (the age and its
      ``EXTRACT``s) inside each of the ~45 aggregates that read them, once per aggregate and
      row (21 s of the statement at 1M persons, 1.8 s once they are stored).
    * The three quantiles of a variable come from one ordered-set aggregate returning an
      array, unpacked in the outer SELECT (PostgreSQL already shared one sort between
      percentiles of the same column; the array form states it on both backends)."""
    cdm = ctx.cdm_schema
    lo, hi = VISIT_WINDOW
    mob, dob = "COALESCE(p.month_of_birth, 1)", "COALESCE(p.day_of_birth, 1)"
    m, d = date_field(ctx.cdm.dialect, "month", "c.s"), date_field(ctx.cdm.dialect, "day", "c.s")
    ps = tuple(q for _, q in QUANTILES)
    aggs = ["COUNT(*) AS n_records", "COUNT(DISTINCT subject_id) AS n_subjects"]
    outer = ["cid", "n_records", "n_subjects"]
    for col in (*DATE_VARS, *NUMERIC_VARS):
        aggs += [f"MIN({col}) AS {col}_min", f"MAX({col}) AS {col}_max",
                 f"{percentiles(col, ps, discrete=col in DATE_VARS)} AS {col}_q"]
        outer += [f"{col}_min", f"{col}_max", *(f"{col}_q[{i + 1}] AS {col}_{n}" for i, (n, _) in enumerate(QUANTILES))]
        if col in NUMERIC_VARS:
            aggs += [f"AVG(CAST({col} AS DOUBLE PRECISION)) AS {col}_mean",
                     f"STDDEV_SAMP(CAST({col} AS DOUBLE PRECISION)) AS {col}_sd"]
            outer += [f"{col}_mean", f"{col}_sd"]
    counts = [f"SUM(CASE WHEN sex = '{s}' THEN 1 ELSE 0 END) AS sex_{s.lower()}" for s in SEX_LEVELS]
    for gi, groups in enumerate(AGE_GROUPS.values()):
        counts += [f"SUM(CASE WHEN age BETWEEN {a} AND {b} THEN 1 ELSE 0 END) AS ag{gi}_{a}_{b}" for a, b in groups]
    counts.append("SUM(CASE WHEN visits > 0 THEN 1 ELSE 0 END) AS visit_flag")
    aggs += counts
    outer += [c.rsplit(" AS ", 1)[1] for c in counts]
    agg_sql, outer_sql = ",\n    ".join(aggs), ",\n  ".join(outer)
    return f"""
WITH ev AS (
  SELECT v.person_id, v.visit_start_date AS d
  FROM {ENVELOPES_TABLE} en JOIN {cdm}.visit_occurrence v ON v.person_id = en.subject_id
   AND v.visit_start_date >= en.a AND v.visit_start_date <= en.b
),
u AS (
  SELECT person_id AS subject_id, d - DATE '1970-01-01' AS x, 1 AS vid, CAST(NULL AS BIGINT) AS rid FROM ev
  UNION ALL
  SELECT subject_id, s - DATE '1970-01-01', NULL, rid FROM {ENTRIES_TABLE}
),
vis AS (
  SELECT rid, n FROM (
    SELECT rid, COUNT(vid) OVER (PARTITION BY subject_id ORDER BY x
                                 RANGE BETWEEN {-lo} PRECEDING AND {-hi} PRECEDING) AS n
    FROM u) w
  WHERE rid IS NOT NULL
),
f AS MATERIALIZED (
  SELECT c.rid, c.cid, c.subject_id, c.s, c.e,
    CASE p.gender_concept_id WHEN 8532 THEN 'Female' WHEN 8507 THEN 'Male' ELSE 'None' END AS sex,
    {date_field(ctx.cdm.dialect, "year", "c.s")} - p.year_of_birth
      - CASE WHEN {m} < {mob} OR ({m} = {mob} AND {d} < {dob}) THEN 1 ELSE 0 END AS age,
    c.s - op.op_start AS prior_obs,
    op.op_end - c.s AS future_obs,
    c.e - c.s + 1 AS days_in_cohort,
    COALESCE(vis.n, 0) AS visits
  FROM {ENTRIES_TABLE} c
  LEFT JOIN {SUBJECTS_TABLE} p ON p.person_id = c.subject_id
  LEFT JOIN {PERIODS_TABLE} op ON op.person_id = c.subject_id AND c.s >= op.op_start AND c.s <= op.op_end
  LEFT JOIN vis ON vis.rid = c.rid
),
g AS (
  SELECT cid,
    {agg_sql}
  FROM f GROUP BY cid
)
SELECT {outer_sql}
FROM g"""


def feature_frame(ctx: DiagnosticContext, cohort_ids: tuple[int, ...]) -> pd.DataFrame:
    """One row of aggregates per cohort of ``cohort_ids`` (column ``cid``): the TEMP tables, the query, clean-up.

    No clean-up after a failed query (on PostgreSQL the aborted transaction would refuse it
    and hide the error): the TEMP tables go with the connection, or at the next run's DROP."""
    ctx.cdm.execute_all(_temp_tables_sql(ctx, cohort_ids))
    df = ctx.cdm.query_df(_feature_sql(ctx))
    ctx.cdm.execute_all([f"DROP TABLE IF EXISTS {t}" for t in TEMP_TABLES])
    return df


def _rows_from_aggregates(r: dict[str, Any], cdm_name: str, cohort_name: str) -> list[dict]:
    base = {"result_id": 1, "cdm_name": cdm_name, "group_name": "cohort_name", "group_level": cohort_name,
            "strata_name": "overall", "strata_level": "overall",
            "additional_name": "overall", "additional_level": "overall"}
    rows: list[dict] = []

    def add(var: str, level: str | None, est: str, typ: str, value: Any, **extra: str) -> None:
        rows.append({**base, "variable_name": var, "variable_level": level, "estimate_name": est,
                     "estimate_type": typ, "estimate_value": fmt_value(value), **extra})

    n = int(r["n_records"] or 0)
    add("Number records", None, "count", "integer", n)
    add("Number subjects", None, "count", "integer", int(r["n_subjects"] or 0))
    if n == 0:
        return rows
    for col, var in DATE_VARS.items():
        for est in ("min", "q25", "median", "q75", "max"):
            add(var, None, est, "date", r[f"{col}_{est}"])
    visit_extra = {"additional_name": "table &&& window &&& value"}
    window = f"{VISIT_WINDOW[0]} to {VISIT_WINDOW[1]}"
    for col, var in NUMERIC_VARS.items():
        extra = {}
        if col == "visits":
            extra = {**visit_extra, "additional_level": f"visit_occurrence &&& {window} &&& count"}
        for est in ("min", "q25", "median", "q75", "max", "mean", "sd"):
            typ = "integer" if est in ("min", "max") else "numeric"
            add(var, None, est, typ, r[f"{col}_{est}"], **extra)
    for s in SEX_LEVELS:
        k = int(r[f"sex_{s.lower()}"] or 0)
        if k > 0:
            add("Sex", s, "count", "integer", k)
            rows.append({**rows[-1], "estimate_name": "percentage", "estimate_type": "percentage",
                         "estimate_value": pct(k, n)})
    for gi, (var, groups) in enumerate(AGE_GROUPS.items()):
        counts = {f"{a} to {b}": int(r[f"ag{gi}_{a}_{b}"] or 0) for a, b in groups}
        counts["None"] = n - sum(counts.values())
        for level, k in counts.items():
            if k > 0:
                add(var, level, "count", "integer", k)
                rows.append({**rows[-1], "estimate_name": "percentage", "estimate_type": "percentage",
                             "estimate_value": pct(k, n)})
    flag = int(r["visit_flag"] or 0)
    extra = {**visit_extra, "additional_level": f"visit_occurrence &&& {window} &&& flag"}
    add("Any visit prior year", None, "count", "integer", flag, **extra)
    add("Any visit prior year", None, "percentage", "percentage", pct(flag, n), **extra)
    return rows


def summarise_characteristics(ctx: DiagnosticContext, unit: tuple[CohortDefinition, ...]) -> SummarisedResult:
    """``summariseCharacteristics()`` of one cohort: one SQL query, aggregates only."""
    (cohort,) = unit
    ids = tuple(sorted({int(c.cohort_definition_id) for c in (*ctx.cohorts, cohort)}))
    key = ("summarise_characteristics", ids)
    if key not in ctx.memo:  # every cohort of the run in one query, once per run
        ctx.memo[key] = feature_frame(ctx, ids)
    df = ctx.memo[key]
    mine = df[pd.to_numeric(df["cid"]) == int(cohort.cohort_definition_id)].drop(columns="cid")
    if mine.empty:  # an empty cohort: what the aggregates of no rows are (counts 0, the rest NULL)
        agg = {k: (0 if k in ("n_records", "n_subjects") else None) for k in mine.columns}
    else:
        agg = {k: (None if pd.isna(v) else v) for k, v in mine.iloc[0].to_dict().items()}
    rows = _rows_from_aggregates(agg, ctx.cdm_name, cohort.cohort_name)
    settings = pd.DataFrame([settings_row(1, RESULT_TYPE, table_name="cohort")])
    return SummarisedResult(pd.DataFrame(rows, columns=list(RESULT_COLUMNS)), settings)


DIAGNOSTICS: list[Diagnostic] = [
    Diagnostic(
        name="summarise_characteristics",
        scope="cohort",
        result_types=(RESULT_TYPE,),
        run=summarise_characteristics,
        params={"age_groups": {k: [list(g) for g in v] for k, v in AGE_GROUPS.items()},
                "visit_window": list(VISIT_WINDOW), "version": 1},
    ),
]
