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


#: the cohort entries of a run, materialised once per statement group (TEMP: per connection)
ENTRIES_TABLE = "optima_lsc_entries"


def _entries_sql(ctx: DiagnosticContext, cohort_ids: tuple[int, ...]) -> list[str]:
    """A TEMP table of (cid, subject_id, s), with planner statistics on PostgreSQL.

    As a CTE inside the event query PostgreSQL estimated it at a tenth of its size (1M entries
    at 1M persons) and sorted all 31M event rows by person for a merge join
    (docs/performance.md); a filled, ``ANALYZE``d table lets it hash-join each event table."""
    ids = ", ".join(str(int(i)) for i in cohort_ids)
    return [f"DROP TABLE IF EXISTS {ENTRIES_TABLE}",
            f"CREATE TEMP TABLE {ENTRIES_TABLE} AS SELECT DISTINCT cohort_definition_id AS cid, subject_id, "
            f"cohort_start_date AS s FROM {ctx.cohort_table} WHERE cohort_definition_id IN ({ids})",
            *index_and_analyze(ctx.cdm.dialect, ENTRIES_TABLE)]


def _table_sql(ctx: DiagnosticContext, table: str) -> str:
    """Subjects per (cohort, window, concept) of one event table, at or above the threshold.

    Distinct subjects are counted in two steps: one row per (cohort, subject, concept) with a
    0/1 flag per window (``MAX``), then the flags summed per (cohort, concept): one hash
    aggregate keyed on three integers instead of a ``DISTINCT`` over (…, window) rows and a
    second aggregate over those. The windows go back to rows only for the (small) sums."""
    col, dcol = EVENT_TABLES[table]
    lo_all = min(w[0] for w in WINDOWS)
    hi_all = max(w[1] for w in WINDOWS)
    flags = ",\n         ".join(
        f"MAX(CASE WHEN t.{dcol} >= e.s + ({lo}) AND t.{dcol} <= e.s + ({hi}) THEN 1 ELSE 0 END) AS w{k}"
        for k, (lo, hi) in enumerate(WINDOWS))
    sums = ", ".join(f"SUM(w{k}) AS n{k}" for k in range(len(WINDOWS)))
    pick = "CASE w.k " + " ".join(f"WHEN {k} THEN a.n{k}" for k in range(len(WINDOWS))) + " END"
    windows = ", ".join(f"({k}, '{window_name(lo, hi)}')" for k, (lo, hi) in enumerate(WINDOWS))
    # count / denominator >= f  <=>  count * 10000 >= f * 10000 * denominator (exact integers)
    scaled = round(MINIMUM_FREQUENCY * 10000)
    return f"""
WITH den AS (SELECT cid, COUNT(DISTINCT subject_id) AS n FROM {ENTRIES_TABLE} GROUP BY cid),
per_subject AS (
  SELECT e.cid, e.subject_id, t.{col} AS concept_id,
         {flags}
  FROM {ENTRIES_TABLE} e JOIN {ctx.cdm_schema}.{table} t ON t.person_id = e.subject_id
   AND t.{dcol} >= e.s + ({lo_all}) AND t.{dcol} <= e.s + ({hi_all})
  WHERE t.{col} IS NOT NULL AND t.{col} <> 0
  GROUP BY e.cid, e.subject_id, t.{col}
),
a AS (SELECT cid, concept_id, {sums} FROM per_subject GROUP BY cid, concept_id),
hits AS (
  SELECT a.cid, w.window_name, a.concept_id, {pick} AS n
  FROM a CROSS JOIN (VALUES {windows}) AS w(k, window_name)
)
SELECT hits.cid, '{table}' AS table_name, hits.window_name, hits.concept_id, hits.n, den.n AS denominator,
       COALESCE(co.concept_name, 'UNKNOWN CONCEPT') AS concept_name
FROM hits JOIN den ON den.cid = hits.cid
LEFT JOIN {ctx.vocab_schema}.concept co ON co.concept_id = hits.concept_id
WHERE hits.n > 0 AND hits.n * 10000 >= {scaled} * den.n"""


def lsc_frame(ctx: DiagnosticContext, cohort_ids: tuple[int, ...]) -> pd.DataFrame:
    """Columns cid, table_name, window_name, concept_id, n, denominator, concept_name.

    One statement per event table (each hash-joins its table to the cohort entries), for
    every cohort of ``cohort_ids`` at once: each table is scanned once per run."""
    cur = ctx.cdm.connection().connection.cursor()
    try:
        for st in _entries_sql(ctx, cohort_ids):
            cur.execute(st)
    finally:
        cur.close()
    frames = [ctx.cdm.query_df(_table_sql(ctx, t)) for t in EVENT_TABLES]
    cur = ctx.cdm.connection().connection.cursor()
    try:
        cur.execute(f"DROP TABLE IF EXISTS {ENTRIES_TABLE}")
    finally:
        cur.close()
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
