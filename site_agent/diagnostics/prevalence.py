"""Point and period prevalence of each cohort (as outcome) in the general-population denominators.

Mirrors ``IncidencePrevalence::estimatePointPrevalence()`` (``timePoint = "start"``) and
``estimatePeriodPrevalence()`` as PhenotypeR's ``populationDiagnostics()`` calls the latter:
``interval = c("years", "overall")``, ``completeDatabaseIntervals = TRUE``,
``fullContribution = FALSE``. Point prevalence is yearly (1 January of each complete year).

* Calendar years count only when wholly inside the study period (complete database
  intervals); ``overall`` is the whole study period.
* Period prevalence, per interval: denominator = persons with any denominator time in it;
  outcome = those of them with an outcome cohort entry overlapping that time
  (``cohort_start <= min(exit, interval end)`` and ``cohort_end >= max(entry, interval start)``).
* Point prevalence at ``t``: denominator = persons in a denominator interval on ``t``;
  outcome = those of them with ``cohort_start <= t <= cohort_end``.
* prevalence = outcome / denominator, Wilson score 95% interval.

No washout: prior outcomes do not leave the denominator. Deviation: a person with several
observation periods in one interval counts once (IncidencePrevalence counts persons too).
"""

from __future__ import annotations

import datetime as dt
import math
from functools import partial

import pandas as pd
from scipy.stats import norm

from optima_common.results import SummarisedResult
from site_agent.cdm.dialect import year_of
from site_agent.cohorts.definitions import CohortDefinition
from site_agent.diagnostics.base import DiagnosticContext, settings_row
from site_agent.diagnostics.denominators import (
    IP_PACKAGE,
    Denominator,
    attrition_records,
    date_lit,
    denominator_attrition,
    ensure_denominator,
    estimate_rows,
    num,
    subject_rows,
    years_sql,
)

ADDITIONAL = "prevalence_start_date &&& prevalence_end_date &&& analysis_interval"
#: complete years up to this many: outcome years as bit masks (one BIGINT per person; 62 keeps clear of the sign
#: bit); more years: ranges merged into islands by window functions (the same counts, slower)
MASK_YEARS = 62
COMPLETE_REASON = "Not observed during the complete database interval"
PREVALENCE_PARAMS: dict = {
    "age_groups": [[0, 150], [0, 17], [18, 64], [65, 150]], "sexes": ["Both", "Male", "Female"],
    "days_prior_observation": [0, 365], "study_start": None, "study_end": None,
    "types": ["point", "period"], "time_point": "start",
}


def wilson_ci(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n."""
    z = norm.ppf(1 - (1 - level) / 2)
    p = k / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


def complete_years(den: Denominator) -> tuple[int, int]:
    """First and last calendar year wholly inside the study period (first > last when none)."""
    first = den.study_start.year + (0 if (den.study_start.month, den.study_start.day) == (1, 1) else 1)
    last = den.study_end.year - (0 if (den.study_end.month, den.study_end.day) == (12, 31) else 1)
    return first, last


def prevalence_sql(ctx: DiagnosticContext, den: Denominator, cohort_ids: tuple[int, ...],
                   subjects: str | None = None) -> tuple[str, str]:
    """Two queries: denominators (kind, stratum_id, sex, yr, value) and outcomes (cid, kind, ...).

    The outcome query answers every cohort of ``cohort_ids`` at once (grouped by ``cid``);
    ``subjects``: the table of those cohorts' persons' denominator rows
    (:func:`~site_agent.diagnostics.denominators.subject_rows`), read instead of the whole denominator.

    Nothing is expanded into one row per calendar year. A denominator row counts in the
    period of year ``y`` for ``y`` in [``lb``, end year] (``lb``: its entry year, or the year
    after when the person's previous interval ended in that year too, so persons count once)
    and at the point ``y``-01-01 for ``y`` in [year(entry - 1) + 1, end year]; rows are
    counted per (stratum, sex, ``lb``, point start, end year) and that small table is joined
    with the years. An outcome pair (denominator row x overlapping cohort entry) covers the
    years [year(ls), year(le)] of its overlap [ls, le] for the period and [year(ls - 1) + 1,
    year(le)] for the point; a person's ranges per (cohort, stratum) become one bit mask of the
    years they cover (:func:`_outcomes_by_mask`; with more than ``MASK_YEARS`` complete years,
    they are merged into disjoint ranges, gaps and islands, and counted like the denominator), so
    each person counts once per year.
    """
    first, last = complete_years(den)
    y = years_sql(str(first), str(last))
    yo = partial(year_of, den.dialect)
    span_s, span_e = dt.date(first, 1, 1) if first <= last else None, dt.date(last, 12, 31) if first <= last else None
    gs = "GROUPING SETS ((stratum_id, sex, yr), (stratum_id, yr))"
    gs_all = "GROUPING SETS ((stratum_id, sex), (stratum_id))"
    ogs = "GROUPING SETS ((cid, kind, stratum_id, sex, yr), (cid, kind, stratum_id, yr))"
    ogs_all = "GROUPING SETS ((cid, stratum_id, sex), (cid, stratum_id))"
    ids = ", ".join(str(int(i)) for i in cohort_ids)
    span_cond = (f"entry_date <= {date_lit(span_e)} AND exit_date >= {date_lit(span_s)}" if span_s else "1 = 0")
    span_first = (f"prev_exit IS NULL OR prev_exit < {date_lit(span_s)}" if span_s else "1 = 0")
    ey = yo("entry_date")
    dens = f"""
    WITH g AS (SELECT stratum_id, sex, lb, pl, xy, COUNT(*) AS n
               FROM (SELECT stratum_id, sex,
                            {ey} + CASE WHEN prev_exit IS NOT NULL AND {yo('prev_exit')} >= {ey}
                                        THEN 1 ELSE 0 END AS lb,
                            {yo('entry_date - 1')} + 1 AS pl, {yo('exit_date')} AS xy
                     FROM {den.table}) r
               GROUP BY stratum_id, sex, lb, pl, xy),
    agg AS MATERIALIZED (SELECT stratum_id, sex, yr,
                   CAST(SUM(CASE WHEN yr >= lb THEN n ELSE 0 END) AS BIGINT) AS v_period,
                   CAST(SUM(CASE WHEN yr >= pl THEN n ELSE 0 END) AS BIGINT) AS v_point
            FROM g JOIN {y} y ON y.yr >= LEAST(g.lb, g.pl) AND y.yr <= g.xy GROUP BY {gs}),
    tot AS MATERIALIZED (SELECT stratum_id, sex,
                   SUM(CASE WHEN prev_exit IS NULL THEN 1 ELSE 0 END) AS v_period,
                   SUM(CASE WHEN {span_cond} THEN 1 ELSE 0 END) AS v_records,
                   SUM(CASE WHEN ({span_cond}) AND ({span_first}) THEN 1 ELSE 0 END) AS v_subjects
            FROM {den.table} GROUP BY {gs_all})
    SELECT 'period' AS kind, stratum_id, sex, yr, v_period AS v FROM agg
    UNION ALL
    SELECT 'point', stratum_id, sex, yr, v_point FROM agg
    UNION ALL
    SELECT 'period', stratum_id, sex, NULL, v_period FROM tot
    UNION ALL
    SELECT 'span_records', stratum_id, sex, NULL, v_records FROM tot
    UNION ALL
    SELECT 'span_subjects', stratum_id, sex, NULL, v_subjects FROM tot"""
    c = f"""
    WITH c AS MATERIALIZED (SELECT cid, stratum_id, sex, person_id,
                      GREATEST({yo('ls')}, {first}) AS a_period,
                      GREATEST({yo('ls - 1')} + 1, {first}) AS a_point, LEAST({yo('le')}, {last}) AS b
               FROM (SELECT oc.cohort_definition_id AS cid, dn.stratum_id, dn.sex, dn.person_id,
                            GREATEST(dn.entry_date, oc.cohort_start_date) AS ls,
                            LEAST(dn.exit_date, oc.cohort_end_date) AS le
                     FROM {subjects or den.table} dn JOIN {ctx.cohort_table} oc
                       ON oc.subject_id = dn.person_id AND oc.cohort_definition_id IN ({ids})
                      AND oc.cohort_start_date <= dn.exit_date AND oc.cohort_end_date >= dn.entry_date) p)"""
    if first <= last and last - first + 1 <= MASK_YEARS:
        return dens, c + _outcomes_by_mask(y, first, ogs, ogs_all)
    # (a, b) is unique within a partition (DISTINCT), so both windows see the rows in the same order;
    # kind is 0 (period) / 1 (point) until the end (sorting a text column in each of the three sorts
    # cost more than the integers), and each year is computed once per pair, in ``c`` (PostgreSQL's
    # EXTRACT is numeric and was recomputed in the filter and in the DISTINCT's keys)
    part = "PARTITION BY cid, kind, stratum_id, person_id ORDER BY a, b"
    outs = c + f""",
    r AS (SELECT DISTINCT * FROM (
            SELECT cid, 0 AS kind, stratum_id, sex, person_id, a_period AS a, b FROM c WHERE a_period <= b
            UNION ALL
            SELECT cid, 1, stratum_id, sex, person_id, a_point, b FROM c WHERE a_point <= b) u),
    m AS (SELECT r.*, MAX(b) OVER ({part} ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS pmax FROM r),
    isl AS (SELECT m.*, SUM(CASE WHEN pmax IS NULL OR a > pmax THEN 1 ELSE 0 END)
                          OVER ({part} ROWS UNBOUNDED PRECEDING) AS island FROM m),
    merged AS (SELECT cid, kind, stratum_id, sex, MIN(a) AS a, MAX(b) AS b
               FROM isl GROUP BY cid, kind, stratum_id, sex, person_id, island),
    g AS (SELECT cid, kind, stratum_id, sex, a, b, COUNT(*) AS n FROM merged GROUP BY cid, kind, stratum_id, sex, a, b),
    gyr AS (SELECT cid, kind, stratum_id, sex, yr, CAST(SUM(n) AS BIGINT) AS v
            FROM g JOIN {y} y ON y.yr >= g.a AND y.yr <= g.b GROUP BY {ogs})
    SELECT cid, CASE kind WHEN 0 THEN 'period' ELSE 'point' END AS kind, stratum_id, sex, yr, v FROM gyr
    UNION ALL
    SELECT cid, 'period', stratum_id, sex, NULL, COUNT(*)
    FROM (SELECT DISTINCT cid, stratum_id, sex, person_id FROM c) dp GROUP BY {ogs_all}"""
    return dens, outs


def _outcomes_by_mask(years: str, first: int, ogs: str, ogs_all: str) -> str:
    """The outcome query's rest when the complete years fit in a BIGINT: per (cohort, stratum,
    person) the years its ranges cover are one bit mask (bit ``y - first``; ``BIT_OR`` of each
    range's bits), so overlapping and repeated entries count once per year without sorting them
    into islands; persons are then counted per distinct mask, and a year per mask bit set."""
    def bits(a: str) -> str:
        return (f"CASE WHEN {a} <= b THEN ((CAST(1 AS BIGINT) << (b - {a} + 1)) - 1) << ({a} - {first}) "
                "ELSE CAST(0 AS BIGINT) END")

    return f""",
    pm AS (SELECT cid, stratum_id, sex, person_id, BIT_OR({bits('a_period')}) AS m_period,
                  BIT_OR({bits('a_point')}) AS m_point
           FROM c GROUP BY cid, stratum_id, sex, person_id),
    gm AS MATERIALIZED (SELECT cid, stratum_id, sex, m_period, m_point, COUNT(*) AS n
                        FROM pm GROUP BY cid, stratum_id, sex, m_period, m_point),
    gyr AS (SELECT cid, kind, stratum_id, sex, yr, CAST(SUM(n) AS BIGINT) AS v
            FROM (SELECT cid, 0 AS kind, stratum_id, sex, m_period AS m, n FROM gm
                  UNION ALL SELECT cid, 1, stratum_id, sex, m_point, n FROM gm) g
            JOIN {years} y ON ((g.m >> (y.yr - {first})) & CAST(1 AS BIGINT)) = 1 GROUP BY {ogs})
    SELECT cid, CASE kind WHEN 0 THEN 'period' ELSE 'point' END AS kind, stratum_id, sex, yr, v FROM gyr
    UNION ALL
    SELECT cid, 'period', stratum_id, sex, NULL, CAST(SUM(n) AS BIGINT) FROM gm GROUP BY {ogs_all}"""


def _collect(df: pd.DataFrame) -> dict[tuple, int]:
    out: dict[tuple, int] = {}
    for kind, sid, sex, yr, v in df.itertuples(index=False):  # <= a few hundred rows
        sex = "Both" if sex is None or (not isinstance(sex, str) and pd.isna(sex)) else sex
        yr = None if yr is None or pd.isna(yr) else int(yr)
        out[(kind, int(sid), sex, yr)] = 0 if v is None or pd.isna(v) else int(v)
    return out


def run_prevalence(ctx: DiagnosticContext, unit: tuple[CohortDefinition, ...]) -> SummarisedResult:
    """``prevalence`` + ``prevalence_attrition``: ids 1-24 point, 25-48 period, then attrition."""
    (cohort,) = unit
    den = ensure_denominator(ctx.cdm, {k: v for k, v in PREVALENCE_PARAMS.items() if k not in ("types", "time_point")},
                             ctx.memo)
    ids = tuple(sorted({c.cohort_definition_id for c in ctx.cohorts} | {cohort.cohort_definition_id}))
    run_key = ("prevalence_outcomes", den.table, ids)  # every cohort of the run in one query, once per run
    subjects = None if run_key in ctx.memo else subject_rows(ctx.cdm, den, ctx.cohort_table, ids, ctx.memo)
    dens_sql, outs_sql = prevalence_sql(ctx, den, ids, subjects)
    memo_key = ("prevalence_denominators", den.table)  # outcome-independent: once per connection
    if memo_key not in ctx.cdm.memo:
        ctx.cdm.memo[memo_key] = _collect(ctx.cdm.query_df(dens_sql))
    n = ctx.cdm.memo[memo_key]
    if run_key not in ctx.memo:
        ctx.memo[run_key] = ctx.cdm.query_df(outs_sql)
    outs = ctx.memo[run_key]
    k = _collect(outs[pd.to_numeric(outs["cid"]) == cohort.cohort_definition_id].drop(columns="cid"))
    attr = denominator_attrition(ctx.cdm, den)
    first, last = complete_years(den)
    n_strata = len(den.strata)
    records: list[dict] = []
    settings: list[dict] = []
    for ti, kind in enumerate(("point", "period")):
        for s in den.strata:
            rid = ti * n_strata + s.cohort_id
            level = f"{s.name} &&& {cohort.cohort_name}"
            extra = {"analysis_type": f"{kind} prevalence", "analysis_complete_database_intervals": "TRUE",
                     "analysis_full_contribution": "FALSE", **den.settings(s), "package_name": IP_PACKAGE}
            settings.append(settings_row(rid, "prevalence", **extra))
            settings.append(settings_row(2 * n_strata + rid, "prevalence_attrition", **extra))
            for yr in [*range(first, last + 1), *([None] if kind == "period" else [])]:
                key = (kind, s.stratum_id, s.sex, yr)
                if not n.get(key):
                    continue
                if yr is None:
                    add = f"{den.study_start} &&& {den.study_end} &&& overall"
                elif kind == "point":
                    add = f"{yr}-01-01 &&& {yr}-01-01 &&& years"
                else:
                    add = f"{yr}-01-01 &&& {yr}-12-31 &&& years"
                records += _estimates(ctx.cdm_name, rid, level, add, n[key], k.get(key, 0))
            steps = list(attr[(s.stratum_id, s.sex)])
            steps.append(("Starting analysis population", steps[-1][1], steps[-1][2]))
            steps.append((COMPLETE_REASON, n.get(("span_records", s.stratum_id, s.sex, None), 0),
                          n.get(("span_subjects", s.stratum_id, s.sex, None), 0)))
            records += attrition_records(ctx.cdm_name, 2 * n_strata + rid, level, steps)
    data = pd.DataFrame.from_records(records) if records else SummarisedResult.empty().data
    return SummarisedResult(data, pd.DataFrame(settings))


def _estimates(cdm_name: str, rid: int, level: str, additional: str, n: int, k: int) -> list[dict]:
    lo, hi = wilson_ci(k, n)
    est = [("Denominator", "denominator_count", "integer", str(n)),
           ("Outcome", "outcome_count", "integer", str(k)),
           ("Outcome", "prevalence", "numeric", num(k / n, 5)),
           ("Outcome", "prevalence_95CI_lower", "numeric", num(lo, 5)),
           ("Outcome", "prevalence_95CI_upper", "numeric", num(hi, 5))]
    return estimate_rows(cdm_name, rid, level, ADDITIONAL, additional, est)
