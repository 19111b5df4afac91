"""Incidence of each cohort (as outcome) in the general-population denominators.

Mirrors ``IncidencePrevalence::estimateIncidence()`` as PhenotypeR's ``populationDiagnostics()``
calls it: ``interval = c("years", "overall")``, ``outcomeWashout = Inf``,
``repeatedEvents = FALSE``, ``completeDatabaseIntervals = FALSE``, no censoring cohort.

Semantics, per denominator interval (person x observation period x stratum, see
:mod:`denominators`) and the person's *first* outcome cohort entry ``o``:

* ``o`` before the interval's entry: the interval is dropped (washout = all history), so a
  person with an earlier outcome contributes no time in later observation periods;
* entry <= ``o`` <= exit: one event, person time ends on ``o`` (inclusive);
* otherwise the interval contributes its full time.

Each interval's time is split over calendar years (clipped to the study period; the first
and last years may be partial). ``person_days`` = days (both ends inclusive),
``person_years`` = days / 365.25, IR = events / PY x 100,000, exact Poisson 95% CI
``qchisq(.025, 2k)/2/PY`` and ``qchisq(.975, 2(k+1))/2/PY`` (x 1e5; 0 for k = 0). One SQL
query for every cohort of the run computes all 24 strata x (years + overall) with
``GROUPING SETS``, by interval arithmetic: no denominator row is expanded into one row per
calendar year (:func:`incidence_sql`).

Deviation: ``denominator_count`` counts persons (several observation periods of a person in
one interval count once); ``analysis_interval`` is in ``additional`` only (not a setting),
as in IncidencePrevalence v1; rows are only emitted for intervals with person time.
"""

from __future__ import annotations

from functools import partial

import pandas as pd
from scipy.stats import chi2

from optima_common.results import SummarisedResult
from site_agent.cdm.dialect import year_of
from site_agent.cohorts.definitions import CohortDefinition
from site_agent.diagnostics.base import DiagnosticContext, settings_row
from site_agent.diagnostics.denominators import (
    IP_PACKAGE,
    Denominator,
    attrition_records,
    denominator_attrition,
    ensure_denominator,
    estimate_rows,
    num,
    subject_rows,
    years_sql,
)

ADDITIONAL = "incidence_start_date &&& incidence_end_date &&& analysis_interval"
WASHOUT_REASON = "Excluded due to prior event (do not pass outcome washout during study period)"


def poisson_ci(k: int, py: float) -> tuple[float, float]:
    """Exact Poisson 95% CI of k events over py person-years, per 100,000 person-years."""
    lo = 0.0 if k == 0 else chi2.ppf(0.025, 2 * k) / 2
    hi = chi2.ppf(0.975, 2 * (k + 1)) / 2
    return lo / py * 1e5, hi / py * 1e5


def incidence_sql(ctx: DiagnosticContext, den: Denominator, cohort_ids: tuple[int, ...], mode: str = "delta",
                  subjects: str | None = None) -> str:
    """Per (outcome cohort, stratum, sex | Both, year | overall): persons, person-days and first events.

    Every aggregate is a sum over denominator rows, so the result over all rows equals
    ``base`` (all rows, outcome ignored: the same for every outcome, computed once per
    connection, ``cid`` 0) plus ``delta``: minus the outcome persons' rows as ``base`` counts
    them, plus the same rows with washout and censoring at the first outcome. Rows whose first
    outcome comes after their exit contribute the same to both and are left out. ``delta``
    touches only the outcome persons' rows and answers every cohort of ``cohort_ids`` at once
    (grouped by ``cid``); ``subjects``: the table of the outcome persons' denominator rows
    (:func:`~site_agent.diagnostics.denominators.subject_rows`), read instead of the whole denominator.

    No row is expanded into one row per calendar year. A row's contribution to year ``y``
    depends only on its entry year ``ey``, its end year ``xy`` and (in ``ey`` and ``xy``) its
    own dates, so rows are first summed per (cid, stratum, sex, ey, xy) (count, sums of the
    entry and end day numbers, first intervals, events); that small table is then joined with
    the years ``ey <= y <= xy``: person-days in ``y`` are
    ``(y = xy ? sum(end) : n * yend) - (y = ey ? sum(entry) : n * ystart) + n`` (day numbers),
    the row counts in ``y`` unless ``y = ey`` and the person's previous interval ended in that
    year too, it is counted as a record and (if first) an overall person in ``ey``, and its
    event in ``xy``.
    """
    y = years_sql(f"{_year(den.study_start)}", f"{_year(den.study_end)}")
    yo = partial(year_of, den.dialect)
    ids = ", ".join(str(int(i)) for i in cohort_ids)
    # the years (PostgreSQL's EXTRACT is numeric: costly) are computed once per row here, not in
    # the grouping keys and again in the aggregates; ``is_late``: the person's previous interval in
    # the stratum ended in the entry year or later, ``is_first``: there was none
    cols = "cid, stratum_id, sex, entry_date, end_date, ey, xy, is_late, is_first, has_out, w"
    late = (f"CASE WHEN prev_exit IS NOT NULL AND {yo('prev_exit')} >= {yo('entry_date')} "
            f"THEN 1 ELSE 0 END")
    first = "CASE WHEN prev_exit IS NULL THEN 1 ELSE 0 END"
    if mode == "delta":
        d = f"""o AS (SELECT cid, person_id, first_out, {yo('first_out')} AS oy
               FROM (SELECT cohort_definition_id AS cid, subject_id AS person_id, MIN(cohort_start_date) AS first_out
                     FROM {ctx.cohort_table} WHERE cohort_definition_id IN ({ids})
                     GROUP BY cohort_definition_id, subject_id) t),
    j AS (SELECT o.cid, dn.stratum_id, dn.sex, dn.entry_date, dn.exit_date, o.first_out, o.oy,
                 {yo('dn.entry_date')} AS ey, {yo('dn.exit_date')} AS xy,
                 {late.replace('prev_exit', 'dn.prev_exit').replace('entry_date', 'dn.entry_date')} AS is_late,
                 {first.replace('prev_exit', 'dn.prev_exit')} AS is_first
          FROM {subjects or den.table} dn JOIN o ON o.person_id = dn.person_id WHERE o.first_out <= dn.exit_date),
    d ({cols}) AS (
          SELECT cid, stratum_id, sex, entry_date, exit_date, ey, xy, is_late, is_first, 0, -1 FROM j
          UNION ALL
          SELECT cid, stratum_id, sex, entry_date, first_out, ey, oy, is_late, is_first, 1, 1 FROM j WHERE first_out >= entry_date)"""
    else:  # base
        d = (f"d ({cols}) AS (SELECT 0, stratum_id, sex, entry_date, exit_date, {yo('entry_date')}, "
             f"{yo('exit_date')}, {late}, {first}, 0, 1 FROM {den.table})")
    ep = "DATE '1970-01-01'"
    return f"""
    WITH {d},
    g AS (SELECT cid, stratum_id, sex, ey, xy,
                 SUM(w) AS n,
                 SUM(w * is_late) AS n_late,
                 SUM(w * is_first) AS n_first,
                 SUM(w * (entry_date - {ep})) AS s_entry,
                 SUM(w * (end_date - {ep})) AS s_end,
                 SUM(w * has_out) AS k
          FROM d GROUP BY cid, stratum_id, sex, ey, xy),
    gy AS (SELECT g.*, y.yr, y.ystart - {ep} AS ys, y.yend - {ep} AS ye
           FROM g JOIN {y} y ON y.yr >= g.ey AND y.yr <= g.xy)
    SELECT cid, stratum_id, sex, yr,
           CAST(SUM(n - CASE WHEN yr = ey THEN n_late ELSE 0 END) AS BIGINT) AS n_year,
           CAST(SUM(CASE WHEN yr = ey THEN n_first ELSE 0 END) AS BIGINT) AS n_overall,
           CAST(SUM(CASE WHEN yr = xy THEN s_end ELSE n * ye END - CASE WHEN yr = ey THEN s_entry ELSE n * ys END + n)
                AS BIGINT) AS days,
           CAST(SUM(CASE WHEN yr = xy THEN k ELSE 0 END) AS BIGINT) AS k,
           CAST(SUM(CASE WHEN yr = ey THEN n ELSE 0 END) AS BIGINT) AS n_records
    FROM gy
    GROUP BY GROUPING SETS ((cid, stratum_id, sex, yr), (cid, stratum_id, yr), (cid, stratum_id, sex), (cid, stratum_id))"""


_SUMS = ["n_year", "n_overall", "days", "k", "n_records"]
_KEY = ["cid", "stratum_id", "sex", "yr"]


def _keyed(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df["sex"] = df["sex"].astype(object).where(df["sex"].notna(), "Both")
    df["yr"] = pd.to_numeric(df["yr"], errors="coerce").fillna(-1).astype("int64")
    df["stratum_id"] = df["stratum_id"].astype("int64")
    df["cid"] = df["cid"].astype("int64")
    for c in _SUMS:
        df[c] = pd.to_numeric(df[c], errors="coerce").fillna(0).astype("int64")
    return df.set_index(_KEY)[_SUMS]


def _one(frame: pd.DataFrame, cid: int) -> pd.DataFrame:
    """The rows of one cohort, keyed by (stratum_id, sex, yr)."""
    if frame.empty:
        return frame.droplevel("cid")
    cids = frame.index.get_level_values("cid")
    return frame[cids == cid].droplevel("cid")


def incidence_counts(ctx: DiagnosticContext, den: Denominator, cohort_id: int) -> pd.DataFrame:
    """base + delta, keyed by (stratum_id, sex, yr) with yr -1 for overall.

    ``base`` is computed once per connection, ``delta`` once per run for every cohort of the
    run (set-based; the per-cohort version repeated the denominator scan once per cohort).
    """
    memo_key = ("incidence_base", den.table)
    if memo_key not in ctx.cdm.memo:
        ctx.cdm.memo[memo_key] = _one(_keyed(ctx.cdm.query_df(incidence_sql(ctx, den, (), "base"))), 0)
    base = ctx.cdm.memo[memo_key]
    ids = tuple(sorted({c.cohort_definition_id for c in ctx.cohorts} | {cohort_id}))
    run_key = ("incidence_delta", den.table, ids)
    if run_key not in ctx.memo:
        subjects = subject_rows(ctx.cdm, den, ctx.cohort_table, ids, ctx.memo)
        ctx.memo[run_key] = _keyed(ctx.cdm.query_df(incidence_sql(ctx, den, ids, "delta", subjects)))
    return base.add(_one(ctx.memo[run_key], cohort_id), fill_value=0).astype("int64")


def _year(d) -> int:
    return int(d.year)


def run_incidence(ctx: DiagnosticContext, unit: tuple[CohortDefinition, ...]) -> SummarisedResult:
    """``incidence`` + ``incidence_attrition`` for one outcome cohort (result ids 1-24, 25-48)."""
    (cohort,) = unit
    den = ensure_denominator(ctx.cdm, INCIDENCE_PARAMS, ctx.memo)
    counts = incidence_counts(ctx, den, cohort.cohort_definition_id)
    rows: dict[tuple, tuple[int, int, int, int, int]] = {
        (int(sid), sex, None if yr == -1 else int(yr)): tuple(int(v) for v in vals)
        for (sid, sex, yr), vals in zip(counts.index, counts.to_numpy())}  # <= 24 x years rows
    years = range(_year(den.study_start), _year(den.study_end) + 1)
    n_strata = len(den.strata)
    attr = denominator_attrition(ctx.cdm, den)
    records: list[dict] = []
    settings: list[dict] = []
    for s in den.strata:
        level = f"{s.name} &&& {cohort.cohort_name}"
        extra = {**den.settings(s), "analysis_outcome_washout": "Inf", "analysis_repeated_events": "FALSE",
                 "analysis_complete_database_intervals": "FALSE", "analysis_censor_cohort_name": "None",
                 "package_name": IP_PACKAGE}
        settings.append(settings_row(s.cohort_id, "incidence", **extra))
        settings.append(settings_row(n_strata + s.cohort_id, "incidence_attrition", **extra))
        for yr in [*years, None]:
            got = rows.get((s.stratum_id, s.sex, yr))
            if got is None or got[2] == 0:
                continue
            n_year, n_overall, days, k, _ = got
            if yr is None:
                start, end, interval, n = den.study_start, den.study_end, "overall", n_overall
            else:
                start = max(den.study_start, den.study_start.replace(year=yr, month=1, day=1))
                end = min(den.study_end, den.study_end.replace(year=yr, month=12, day=31))
                interval, n = "years", n_year
            records += _estimates(ctx.cdm_name, s.cohort_id, level, f"{start} &&& {end} &&& {interval}",
                                  n, k, days)
        steps = list(attr[(s.stratum_id, s.sex)])
        total = rows.get((s.stratum_id, s.sex, None))
        base = steps[-1]
        steps.append(("Starting analysis population", base[1], base[2]))
        steps.append((WASHOUT_REASON, total[4] if total else 0, total[1] if total else 0))
        records += attrition_records(ctx.cdm_name, n_strata + s.cohort_id, level, steps)
    data = pd.DataFrame.from_records(records) if records else SummarisedResult.empty().data
    return SummarisedResult(data, pd.DataFrame(settings))


def _estimates(cdm_name: str, rid: int, level: str, additional: str, n: int, k: int, days: int) -> list[dict]:
    py = days / 365.25
    lo, hi = poisson_ci(k, py)
    est = [("Denominator", "denominator_count", "integer", str(n)),
           ("Outcome", "outcome_count", "integer", str(k)),
           ("Denominator", "person_days", "numeric", str(days)),
           ("Denominator", "person_years", "numeric", num(py, 3)),
           ("Outcome", "incidence_100000_pys", "numeric", num(k / py * 1e5, 3)),
           ("Outcome", "incidence_100000_pys_95CI_lower", "numeric", num(lo, 3)),
           ("Outcome", "incidence_100000_pys_95CI_upper", "numeric", num(hi, 3))]
    return estimate_rows(cdm_name, rid, level, ADDITIONAL, additional, est)


INCIDENCE_PARAMS: dict = {
    "age_groups": [[0, 150], [0, 17], [18, 64], [65, 150]], "sexes": ["Both", "Male", "Female"],
    "days_prior_observation": [0, 365], "study_start": None, "study_end": None,
}
