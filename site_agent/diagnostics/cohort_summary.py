"""Cohort counts, attrition, overlap and timing, in CohortCharacteristics layouts.

Mirrors (``package_name = "CohortCharacteristics"``):

* ``summariseCohortCount()``     → ``summarise_cohort_count``     (scope "cohort")
* ``summariseCohortAttrition()`` → ``summarise_cohort_attrition`` (scope "cohort")
* ``summariseCohortOverlap()``   → ``summarise_cohort_overlap``   (scope "pair")
* ``summariseCohortTiming()``    → ``summarise_cohort_timing``    (scope "pair")

A pair unit ``(reference, comparator)`` emits both directions (``ref &&& comp`` and
``comp &&& ref``), as the R functions do for every ordered pair. Only the ``overall``
stratum is produced (the R defaults). All counting happens in SQL on ``ctx.cohort_table``,
always filtered by ``cohort_definition_id``.

Deviations: timing has no ``density`` estimates; its quantiles (``q25``, ``median``,
``q75``; linear interpolation, R type 7, DuckDB ``quantile_cont`` / PostgreSQL
``percentile_cont``) are written as ``numeric`` since they may be fractional (``min``/``max``
are ``integer``). Attrition reasons are the steps of :func:`site_agent.cohorts.cohort_attrition`
(Circe inclusion rules), not CohortConstructor's reason texts.
"""

from __future__ import annotations

from typing import Any

from optima_common.results import SEP, SummarisedResult
from site_agent.cdm.dialect import days_between, quantile
from site_agent.cohorts.attrition import cohort_attrition
from site_agent.cohorts.definitions import CohortDefinition
from site_agent.diagnostics.base import (
    Diagnostic,
    DiagnosticContext,
    fmt_number,
    settings_row,
)

PACKAGE = "CohortCharacteristics"
COUNT = "summarise_cohort_count"
ATTRITION = "summarise_cohort_attrition"
OVERLAP = "summarise_cohort_overlap"
TIMING = "summarise_cohort_timing"
PAIR_GROUP = f"cohort_name_reference{SEP}cohort_name_comparator"
TIMING_QUANTILES: tuple[tuple[str, float], ...] = (("q25", 0.25), ("median", 0.5), ("q75", 0.75))


def _table_name(ctx: DiagnosticContext) -> str:
    return ctx.cohort_table.rsplit(".", 1)[-1]


def _record(ctx: DiagnosticContext, **kw: Any) -> dict[str, Any]:
    return {"cdm_name": ctx.cdm_name, "variable_level": None, **kw}


# ---------------------------------------------------------------- count
def summarise_cohort_count(ctx: DiagnosticContext, unit: tuple[CohortDefinition, ...]) -> SummarisedResult:
    """``summariseCohortCount()``: ``Number records`` / ``Number subjects`` (``count``), group
    ``cohort_name``; an empty cohort gives both counts as ``0``."""
    (cohort,) = unit
    row = ctx.cdm.query_df(
        f"SELECT count(*) AS n_records, count(DISTINCT subject_id) AS n_subjects FROM {ctx.cohort_table} "
        f"WHERE cohort_definition_id = {int(cohort.cohort_definition_id)}").iloc[0]
    records = [
        _record(ctx, group_name="cohort_name", group_level=cohort.cohort_name, variable_name=var,
                estimate_name="count", estimate_type="integer", estimate_value=str(int(row[col])))
        for var, col in (("Number records", "n_records"), ("Number subjects", "n_subjects"))
    ]
    settings = [settings_row(1, COUNT, package_name=PACKAGE, table_name=_table_name(ctx))]
    return SummarisedResult.from_records(records, settings)


# ---------------------------------------------------------------- attrition
def summarise_cohort_attrition(ctx: DiagnosticContext, unit: tuple[CohortDefinition, ...]) -> SummarisedResult:
    """``summariseCohortAttrition()``: strata ``reason``, additional ``reason_id``, variables
    ``number_records``, ``number_subjects``, ``excluded_records``, ``excluded_subjects``."""
    (cohort,) = unit
    records = []
    for step in cohort_attrition(ctx.cdm, cohort):  # a few steps per cohort
        for var in ("number_records", "number_subjects", "excluded_records", "excluded_subjects"):
            records.append(_record(
                ctx, group_name="cohort_name", group_level=cohort.cohort_name, strata_name="reason",
                strata_level=step.reason, variable_name=var, estimate_name="count", estimate_type="integer",
                estimate_value=str(int(getattr(step, var))), additional_name="reason_id",
                additional_level=str(step.reason_id)))
    settings = [settings_row(1, ATTRITION, package_name=PACKAGE,
                             cohort_definition_id=cohort.cohort_definition_id, table_name=_table_name(ctx))]
    return SummarisedResult.from_records(records, settings)


# ---------------------------------------------------------------- overlap
def _run_ids(ctx: DiagnosticContext, unit: tuple[CohortDefinition, ...]) -> tuple[int, ...]:
    """Every cohort of the run (and the unit's): the pair diagnostics answer all pairs in one query."""
    return tuple(sorted({int(c.cohort_definition_id) for c in (*ctx.cohorts, *unit)}))


def _overlap_counts(ctx: DiagnosticContext, ids: tuple[int, ...]) -> dict[tuple[int, int], int]:
    """(a, b) with a <= b -> subjects in both cohorts ((a, a): the cohort's subjects), for every
    pair of ``ids`` at once (once per run: one scan of the cohort table instead of one per pair)."""
    key = ("cohort_overlap", ids)
    if key not in ctx.memo:
        t, in_ids = ctx.cohort_table, ", ".join(str(i) for i in ids)
        df = ctx.cdm.query_df(f"""
WITH s AS (SELECT DISTINCT cohort_definition_id AS cid, subject_id FROM {t} WHERE cohort_definition_id IN ({in_ids}))
SELECT x.cid AS a, y.cid AS b, count(*) AS n FROM s x JOIN s y ON y.subject_id = x.subject_id AND y.cid >= x.cid
GROUP BY x.cid, y.cid""")
        ctx.memo[key] = {(int(a), int(b)): int(n) for a, b, n in df.itertuples(index=False)}  # <= ids^2 rows
    return ctx.memo[key]


def _pct(part: int, total: int) -> str | None:
    return fmt_number(100.0 * part / total) if total else None


def summarise_cohort_overlap(ctx: DiagnosticContext, unit: tuple[CohortDefinition, ...]) -> SummarisedResult:
    """``summariseCohortOverlap(overlapBy = "subject_id")``: subjects only in the reference,
    in both, only in the comparator; ``count`` and ``percentage`` of the union (×100)."""
    ref, comp = unit
    a, b = int(ref.cohort_definition_id), int(comp.cohort_definition_id)
    counts = _overlap_counts(ctx, _run_ids(ctx, unit))
    n_ref, n_comp = counts.get((a, a), 0), counts.get((b, b), 0)
    n_both = counts.get((min(a, b), max(a, b)), 0)
    records = []
    for r_def, c_def, only_r, only_c in ((ref, comp, n_ref - n_both, n_comp - n_both),
                                         (comp, ref, n_comp - n_both, n_ref - n_both)):
        total = only_r + n_both + only_c
        level = f"{r_def.cohort_name}{SEP}{c_def.cohort_name}"
        for var, n in (("Only in reference cohort", only_r), ("In both cohorts", n_both),
                       ("Only in comparator cohort", only_c)):
            base = _record(ctx, group_name=PAIR_GROUP, group_level=level, variable_name=var)
            base["variable_level"] = "Subjects"
            records.append({**base, "estimate_name": "count", "estimate_type": "integer", "estimate_value": str(n)})
            records.append({**base, "estimate_name": "percentage", "estimate_type": "percentage",
                            "estimate_value": _pct(n, total)})
    settings = [settings_row(1, OVERLAP, package_name=PACKAGE, overlap_by="subject_id")]
    return SummarisedResult.from_records(records, settings)


# ---------------------------------------------------------------- timing
def _timing_sql(ctx: DiagnosticContext, ids: tuple[int, ...]) -> str:
    """For every ordered pair (reference ``a``, comparator ``b``) of ``ids`` at once: the subjects
    in both and the distribution of b's first start - a's first start (days)."""
    d, t = ctx.cdm.dialect, ctx.cohort_table
    aggs = ", ".join(["count(*) AS n_records", "count(DISTINCT subject_id) AS n_subjects",
                      "min(days) AS d_min", "max(days) AS d_max",
                      *(f"{quantile(d, 'days', p)} AS d_{name}" for name, p in TIMING_QUANTILES)])
    in_ids = ", ".join(str(i) for i in ids)
    return f"""
WITH f AS (SELECT cohort_definition_id AS cid, subject_id, min(cohort_start_date) AS start_date FROM {t}
           WHERE cohort_definition_id IN ({in_ids}) GROUP BY cohort_definition_id, subject_id),
     pairs AS (SELECT r.cid AS a, c.cid AS b, r.subject_id, {days_between(d, 'r.start_date', 'c.start_date')} AS days
               FROM f r INNER JOIN f c ON r.subject_id = c.subject_id AND r.cid <> c.cid)
SELECT a, b, {aggs} FROM pairs GROUP BY a, b
"""


def summarise_cohort_timing(ctx: DiagnosticContext, unit: tuple[CohortDefinition, ...]) -> SummarisedResult:
    """``summariseCohortTiming(restrictToFirstEntry = TRUE)`` without density.

    For subjects in both cohorts, ``days_between_cohort_entries`` = comparator's first
    cohort_start_date - reference's first cohort_start_date (signed days). Rows
    ``number records`` / ``number subjects`` (``count``) and min/q25/median/q75/max. A pair
    without common subjects gives the two counts as ``0`` and no distribution rows.
    """
    ref, comp = unit
    ids = _run_ids(ctx, unit)
    key = ("cohort_timing", ids)
    if key not in ctx.memo:  # every ordered pair of the run in one query, once per run
        df = ctx.cdm.query_df(_timing_sql(ctx, ids))
        ctx.memo[key] = {(int(r["a"]), int(r["b"])): r for _, r in df.iterrows()}  # <= ids^2 rows
    by_pair = ctx.memo[key]
    a, b = int(ref.cohort_definition_id), int(comp.cohort_definition_id)
    by_dir = {d: by_pair[k] for d, k in enumerate(((a, b), (b, a))) if k in by_pair}
    records = []
    for direction, (r_def, c_def) in enumerate(((ref, comp), (comp, ref))):
        level = f"{r_def.cohort_name}{SEP}{c_def.cohort_name}"
        base = _record(ctx, group_name=PAIR_GROUP, group_level=level)
        row = by_dir.get(direction)
        n_rec = int(row["n_records"]) if row is not None else 0
        n_sub = int(row["n_subjects"]) if row is not None else 0
        records.append({**base, "variable_name": "number records", "estimate_name": "count",
                        "estimate_type": "integer", "estimate_value": str(n_rec)})
        records.append({**base, "variable_name": "number subjects", "estimate_name": "count",
                        "estimate_type": "integer", "estimate_value": str(n_sub)})
        if row is None or n_rec == 0:
            continue
        for est in ("min", "q25", "median", "q75", "max"):
            records.append({**base, "variable_name": "days_between_cohort_entries", "estimate_name": est,
                            "estimate_type": "integer" if est in ("min", "max") else "numeric",
                            "estimate_value": fmt_number(row[f"d_{est}"])})
    settings = [settings_row(1, TIMING, package_name=PACKAGE, restrict_to_first_entry="TRUE")]
    return SummarisedResult.from_records(records, settings)


DIAGNOSTICS: list[Diagnostic] = [
    Diagnostic(name="cohort_count", scope="cohort", result_types=(COUNT,), run=summarise_cohort_count),
    Diagnostic(name="cohort_attrition", scope="cohort", result_types=(ATTRITION,), run=summarise_cohort_attrition),
    Diagnostic(name="cohort_overlap", scope="pair", result_types=(OVERLAP,), run=summarise_cohort_overlap,
               params={"overlap_by": "subject_id"}, package_name=PACKAGE),
    Diagnostic(name="cohort_timing", scope="pair", result_types=(TIMING,), run=summarise_cohort_timing,
               params={"restrict_to_first_entry": True, "density": False}, package_name=PACKAGE),
]
