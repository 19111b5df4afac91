"""Large-scale characteristics, mirroring ``CohortCharacteristics::summariseLargeScaleCharacteristics()``.

Result type ``summarise_large_scale_characteristics`` (docs/result_layouts.md §3.6), scope
"cohort", with PhenotypeR's windows ``-365 to -31``, ``-30 to -1``, ``0 to 0``, ``1 to 30``,
``31 to 365`` and ``minimumFrequency = 0.01``:

* one result id per (table_name, type, analysis): condition_occurrence, drug_exposure,
  procedure_occurrence, measurement (in that order), each ``type = "event"`` (a record
  counts in a window when its *start* date lies in it), ``analysis = "standard"``
  (standard concept ids: ``<domain>_concept_id``; concept 0 excluded). Settings also record
  ``windows`` and ``minimum_frequency``.
* rows: group ``cohort_name``/<cohort>, ``variable_name`` = concept name (``UNKNOWN
  CONCEPT`` when the concept is not in the vocabulary), ``variable_level`` = window name,
  ``additional_name = "concept_id"``/<id>; estimates ``count`` (integer) and
  ``percentage`` (``sprintf("%.2f")``), kept when count / denominator >= 0.01.

Deviations from the R function: counts are distinct *subjects* and the denominator is the
cohort's number of subjects (R counts cohort entries and uses, per window, the entries
whose observation period covers the window, and ignores records outside observation);
the ``episode`` type (R's default for drug_exposure in PhenotypeR: a record counts when
its start..end overlaps the window) and the ``standard-source`` analysis are not computed.
"""

from __future__ import annotations

import pandas as pd

from optima_common.results import RESULT_COLUMNS, SummarisedResult
from site_agent.cdm.dialect import index_and_analyze
from site_agent.cohorts.definitions import CohortDefinition
from site_agent.diagnostics.base import Diagnostic, DiagnosticContext, settings_row

RESULT_TYPE = "summarise_large_scale_characteristics"
WINDOWS: tuple[tuple[int, int], ...] = ((-365, -31), (-30, -1), (0, 0), (1, 30), (31, 365))
MINIMUM_FREQUENCY = 0.01
#: table -> (concept column, start date column); the order gives the result ids
EVENT_TABLES: dict[str, tuple[str, str]] = {
    "condition_occurrence": ("condition_concept_id", "condition_start_date"),
    "drug_exposure": ("drug_concept_id", "drug_exposure_start_date"),
    "procedure_occurrence": ("procedure_concept_id", "procedure_date"),
    "measurement": ("measurement_concept_id", "measurement_date"),
}


assert all(a[1] < b[0] for a, b in zip(WINDOWS, WINDOWS[1:])), "the SQL below needs disjoint, ordered windows"


def window_name(lo: int, hi: int) -> str:
    return f"{lo} to {hi}"


#: TEMP tables (per connection) of one run: the cohort entries, and per window their merged spans
ENTRIES_TABLE = "optima_lsc_entries"
SPANS_TABLE = "optima_lsc_spans"
PERSONS_TABLE = "optima_lsc_persons"
DEN_TABLE = "optima_lsc_den"
TEMP_TABLES = (DEN_TABLE, PERSONS_TABLE, SPANS_TABLE, ENTRIES_TABLE)


def _spans_sql(ctx: DiagnosticContext, cohort_ids: tuple[int, ...]) -> list[str]:
    """TEMP tables of the entries (cid, subject_id, s) and of their window spans (cid, subject_id, k, a, b).

    A subject with several entries in a cohort (a treatment cohort: up to ~18 per subject at
    1M persons) has overlapping windows, so joining events to entries matches one record many
    times (9.2M record-entry pairs for 2.8M distinct (cohort, record) at 1M). Per (cohort,
    subject, window k) the entries' windows ``[s + lo, s + hi]`` all have one length, so they
    merge into spans by a running sum over consecutive entries (a new span where the gap
    exceeds ``hi - lo + 1`` days); a record then meets at most one span per (cohort, subject,
    window), and "in the window of some entry" is "inside a span". Both tables are filled
    once and ``ANALYZE``d on PostgreSQL: as a CTE the entries were estimated at a tenth of
    their size and the planner sorted all 31M event rows for a merge join (docs/performance.md).

    Which entries merge depends only on the window's length, so windows of one length (PhenotypeR's
    ``-365 to -31`` and ``31 to 365``, ``-30 to -1`` and ``1 to 30``) share one running sum and one
    grouping, each shifted by its own bounds: three groupings of the entries instead of five.
    """
    ids = ", ".join(str(int(i)) for i in cohort_ids)
    lengths = sorted({hi - lo + 1 for lo, hi in WINDOWS})  # the groupings: one per window length
    flags = ",\n    ".join(
        f"SUM(CASE WHEN prev IS NULL OR s - prev > {n} THEN 1 ELSE 0 END) "
        f"OVER (PARTITION BY cid, subject_id ORDER BY s ROWS UNBOUNDED PRECEDING) AS g{j}"
        for j, n in enumerate(lengths))
    groups = ",\n".join(
        f"m{j} AS (SELECT cid, subject_id, MIN(s) AS first_s, MAX(s) AS last_s FROM g GROUP BY cid, subject_id, g{j})"
        for j in range(len(lengths)))
    spans = "\nUNION ALL\n".join(
        f"SELECT cid, subject_id, {k} AS k, first_s + ({lo}) AS a, last_s + ({hi}) AS b FROM m{lengths.index(hi - lo + 1)}"
        for k, (lo, hi) in enumerate(WINDOWS))
    dia = ctx.cdm.dialect
    return [*(f"DROP TABLE IF EXISTS {t}" for t in TEMP_TABLES),
            f"CREATE TEMP TABLE {ENTRIES_TABLE} AS SELECT DISTINCT cohort_definition_id AS cid, subject_id, "
            f"cohort_start_date AS s FROM {ctx.cohort_table} WHERE cohort_definition_id IN ({ids})",
            f"""CREATE TEMP TABLE {SPANS_TABLE} AS
WITH o AS (
  SELECT cid, subject_id, s, LAG(s) OVER (PARTITION BY cid, subject_id ORDER BY s) AS prev FROM {ENTRIES_TABLE}
),
g AS (
  SELECT cid, subject_id, s,
    {flags}
  FROM o
),
{groups}
{spans}""",
            f"CREATE TEMP TABLE {PERSONS_TABLE} AS SELECT subject_id, MIN(a) AS a, MAX(b) AS b FROM {SPANS_TABLE} "
            "GROUP BY subject_id",
            f"CREATE TEMP TABLE {DEN_TABLE} AS SELECT cid, COUNT(DISTINCT subject_id) AS n FROM {ENTRIES_TABLE} "
            "GROUP BY cid",
            *index_and_analyze(dia, ENTRIES_TABLE), *index_and_analyze(dia, SPANS_TABLE),
            *index_and_analyze(dia, PERSONS_TABLE)]


def _table_sql(ctx: DiagnosticContext, table: str) -> str:
    """Subjects per (cohort, window, concept) of one event table, at or above the threshold.

    First the table's records of cohort subjects near any of their entries (``ev``: one pass
    over the table against the per-subject envelope, a hash join or an index lookup per
    subject, never per entry or span: PostgreSQL's nested loop over 2M spans with an index
    lookup each cost 130 s at 1M), then each record's spans. Distinct subjects in two steps:
    the distinct (cohort, window, concept, subject) rows, then ``COUNT(*)`` per (cohort,
    window, concept): hash aggregates keyed on integers (PostgreSQL sorts every group's rows
    for ``COUNT(DISTINCT)``). The distinct rows are taken one window at a time (a window's
    rows never equal another's): at 10M persons the measurements' 34.7M (record, span) pairs
    made PostgreSQL sort all of them on disk (1.16 GB) for one ``DISTINCT``; per window the
    statement took 118.5 s instead of 153.7 (docs/performance.md, session 16)."""
    col, dcol = EVENT_TABLES[table]
    windows = ", ".join(f"({k}, '{window_name(lo, hi)}')" for k, (lo, hi) in enumerate(WINDOWS))
    # count / denominator >= f  <=>  count * 10000 >= f * 10000 * denominator (exact integers)
    scaled = round(MINIMUM_FREQUENCY * 10000)
    per_window = "\n  UNION ALL\n  ".join(
        f"(SELECT DISTINCT sp.cid, sp.k, ev.concept_id, sp.subject_id FROM ev JOIN {SPANS_TABLE} sp "
        f"ON sp.subject_id = ev.person_id AND sp.k = {k} AND ev.d >= sp.a AND ev.d <= sp.b)"
        for k in range(len(WINDOWS)))
    return f"""
WITH ev AS MATERIALIZED (
  SELECT t.person_id, t.{col} AS concept_id, t.{dcol} AS d
  FROM {PERSONS_TABLE} p JOIN {ctx.cdm_schema}.{table} t ON t.person_id = p.subject_id
   AND t.{dcol} >= p.a AND t.{dcol} <= p.b
  WHERE t.{col} IS NOT NULL AND t.{col} <> 0
),
hit AS (
  {per_window}
),
a AS (SELECT cid, k, concept_id, COUNT(*) AS n FROM hit GROUP BY cid, k, concept_id)
SELECT a.cid, '{table}' AS table_name, w.window_name, a.concept_id, a.n, den.n AS denominator,
       COALESCE(co.concept_name, 'UNKNOWN CONCEPT') AS concept_name
FROM a JOIN {DEN_TABLE} den ON den.cid = a.cid
JOIN (VALUES {windows}) AS w(k, window_name) ON w.k = a.k
LEFT JOIN {ctx.vocab_schema}.concept co ON co.concept_id = a.concept_id
WHERE a.n * 10000 >= {scaled} * den.n"""


def lsc_frame(ctx: DiagnosticContext, cohort_ids: tuple[int, ...]) -> pd.DataFrame:
    """Columns cid, table_name, window_name, concept_id, n, denominator, concept_name.

    One statement per event table (each joins its table to the spans), for every cohort of
    ``cohort_ids`` at once: each table is read once per run."""
    ctx.cdm.execute_all(_spans_sql(ctx, cohort_ids))
    frames = [ctx.cdm.query_df(_table_sql(ctx, t)) for t in EVENT_TABLES]
    ctx.cdm.execute_all([f"DROP TABLE IF EXISTS {t}" for t in TEMP_TABLES])
    return pd.concat(frames, ignore_index=True)


def summarise_large_scale_characteristics(ctx: DiagnosticContext,
                                          unit: tuple[CohortDefinition, ...]) -> SummarisedResult:
    """``summariseLargeScaleCharacteristics()`` of one cohort, event type, standard concepts."""
    (cohort,) = unit
    ids = {t: i + 1 for i, t in enumerate(EVENT_TABLES)}
    windows_setting = "; ".join(window_name(lo, hi) for lo, hi in WINDOWS)
    settings = pd.DataFrame([
        settings_row(ids[t], RESULT_TYPE, table_name=t, type="event", analysis="standard",
                     windows=windows_setting, minimum_frequency=MINIMUM_FREQUENCY,
                     group="cohort_name", strata="", additional="concept_id")
        for t in EVENT_TABLES])
    ids_run = tuple(sorted({c.cohort_definition_id for c in ctx.cohorts} | {cohort.cohort_definition_id}))
    memo_key = ("large_scale", ids_run)  # every cohort of the run in one query, once per run
    if memo_key not in ctx.memo:
        ctx.memo[memo_key] = lsc_frame(ctx, ids_run)
    df = ctx.memo[memo_key]
    df = df[pd.to_numeric(df["cid"]) == cohort.cohort_definition_id]
    rows: list[dict] = []
    for rec in df.itertuples(index=False):  # aggregates only: concepts above the threshold
        n, den = int(rec.n), int(rec.denominator)
        base = {"result_id": ids[rec.table_name], "cdm_name": ctx.cdm_name, "group_name": "cohort_name",
                "group_level": cohort.cohort_name, "strata_name": "overall", "strata_level": "overall",
                "variable_name": str(rec.concept_name), "variable_level": rec.window_name,
                "additional_name": "concept_id", "additional_level": str(int(rec.concept_id))}
        rows.append({**base, "estimate_name": "count", "estimate_type": "integer", "estimate_value": str(n)})
        rows.append({**base, "estimate_name": "percentage", "estimate_type": "percentage",
                     "estimate_value": f"{100.0 * n / den:.2f}"})
    return SummarisedResult(pd.DataFrame(rows, columns=list(RESULT_COLUMNS)), settings)


DIAGNOSTICS: list[Diagnostic] = [
    Diagnostic(
        name="summarise_large_scale_characteristics",
        scope="cohort",
        result_types=(RESULT_TYPE,),
        run=summarise_large_scale_characteristics,
        params={"windows": [list(w) for w in WINDOWS], "minimum_frequency": MINIMUM_FREQUENCY,
                "tables": list(EVENT_TABLES), "type": "event", "analysis": "standard", "version": 1},
    ),
]
