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


def _lsc_sql(ctx: DiagnosticContext, cohort_ids: tuple[int, ...]) -> str:
    """Counts of distinct subjects per (cohort, table, window, concept) at or above the threshold.

    One set-based query for every cohort of ``cohort_ids`` (column ``cid``): the event tables
    are scanned once per run instead of once per cohort."""
    cdm = ctx.cdm_schema
    lo_all = min(w[0] for w in WINDOWS)
    hi_all = max(w[1] for w in WINDOWS)
    events = "\n  UNION ALL\n  ".join(
        f"SELECT '{t}' AS table_name, person_id, {col} AS concept_id, {dcol} AS d "
        f"FROM {cdm}.{t} WHERE {col} IS NOT NULL AND {col} <> 0"
        for t, (col, dcol) in EVENT_TABLES.items())
    # the windows are disjoint, so a record's window is one CASE (no join with a window table), and
    # distinct subjects are counted as COUNT(*) over DISTINCT rows: hash aggregates on PostgreSQL,
    # where COUNT(DISTINCT) sorts every group's rows (docs/performance.md)
    window_case = "CASE " + " ".join(f"WHEN dt >= {lo} AND dt <= {hi} THEN '{window_name(lo, hi)}'"
                                     for lo, hi in WINDOWS) + " END"
    # count / denominator >= f  <=>  count * 10000 >= f * 10000 * denominator (exact integers)
    scaled = round(MINIMUM_FREQUENCY * 10000)
    return f"""
WITH c AS (
  SELECT DISTINCT cohort_definition_id AS cid, subject_id, cohort_start_date AS s
  FROM {ctx.cohort_table} WHERE cohort_definition_id IN ({", ".join(str(int(i)) for i in cohort_ids)})
),
den AS (SELECT cid, COUNT(DISTINCT subject_id) AS n FROM c GROUP BY cid),
ev AS (
  {events}
),
near AS (
  SELECT c.cid, ev.table_name, ev.concept_id, c.subject_id, ev.d - c.s AS dt
  FROM c JOIN ev ON ev.person_id = c.subject_id
   AND ev.d >= c.s + ({lo_all}) AND ev.d <= c.s + ({hi_all})
),
hits AS (
  SELECT cid, table_name, window_name, concept_id, COUNT(*) AS n
  FROM (SELECT DISTINCT cid, table_name, concept_id, subject_id, {window_case} AS window_name FROM near) x
  WHERE window_name IS NOT NULL
  GROUP BY cid, table_name, window_name, concept_id
)
SELECT hits.cid, hits.table_name, hits.window_name, hits.concept_id, hits.n, den.n AS denominator,
       COALESCE(co.concept_name, 'UNKNOWN CONCEPT') AS concept_name
FROM hits JOIN den ON den.cid = hits.cid
LEFT JOIN {ctx.vocab_schema}.concept co ON co.concept_id = hits.concept_id
WHERE hits.n * 10000 >= {scaled} * den.n"""


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
        ctx.memo[memo_key] = ctx.cdm.query_df(_lsc_sql(ctx, ids_run))
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
