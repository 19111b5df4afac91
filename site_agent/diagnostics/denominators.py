"""General-population denominator cohorts, built in SQL (IncidencePrevalence parity).

Mirrors ``IncidencePrevalence::generateDenominatorCohortSet()`` (its internal
``getDenominatorCohorts()``) for the PhenotypeR ``populationDiagnostics()`` grid: age groups
``0 to 150``, ``0 to 17``, ``18 to 64``, ``65 to 150`` x sex ``Both``/``Male``/``Female`` x
days of prior observation ``0``/``365`` = 24 denominator cohorts, named
``denominator_cohort_1`` ... ``denominator_cohort_24`` in that nesting order (age outer,
prior observation inner).

Per person and observation period (each period is its own denominator interval):

* date of birth = ``year_of_birth``/``month_of_birth``/``day_of_birth``, missing (or out of
  range) month/day as 1; an impossible day rolls over (29 February 2025 = 1 March 2025),
  where IncidencePrevalence's ``as.Date()`` would give NA;
* entry = latest of (period start + prior days, date reaching the minimum age, study start);
* exit = earliest of (period end, day before reaching maximum age + 1, study end);
* the interval is kept when entry <= exit; sex comes from ``gender_concept_id`` 8507/8532.

The study period defaults to the CDM's whole observation range (min start, max end).

Attrition (``REASONS_*``, IncidencePrevalence wording and order): steps 1-5 are common to all
strata, 6-8 are per age x prior-observation stratum, then ``Not Male``/``Not Female`` for the
sex strata. ``number_records`` counts person x observation-period rows (a person without an
observation period is one row), so from ``Starting population`` on records >= subjects.

**Where it lives.** The denominator does not depend on the outcome, so it is built once per
database connection as a TEMP table whose name carries a hash of the parameters and a cheap
CDM fingerprint (``CREATE TEMP TABLE IF NOT EXISTS``): every cohort unit of a run then reuses
it, nothing is written to the write schema (no clean-up, no clash between concurrent runs
or diagnostics, no stale table after a crash), and a unit that runs alone simply builds it.
Sex is not a column of the strata: the table holds the 8 age x prior-observation strata
with the person's sex, and ``Both`` is obtained with ``GROUPING SETS`` (sex is fixed per
person, so every count is additive over sex). ``prev_exit`` (the exit of the person's
previous interval in the same stratum) lets the estimators count distinct persons with a
plain ``SUM`` instead of ``COUNT(DISTINCT ...)``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass

import pandas as pd

from site_agent.cdm.connection import CdmConnection
from site_agent.cdm.dialect import add_years, index_and_analyze

AGE_GROUPS: tuple[tuple[int, int], ...] = ((0, 150), (0, 17), (18, 64), (65, 150))
SEXES: tuple[str, ...] = ("Both", "Male", "Female")
PRIOR_DAYS: tuple[int, ...] = (0, 365)

DEFAULT_PARAMS: dict = {
    "age_groups": [list(a) for a in AGE_GROUPS],
    "sexes": list(SEXES),
    "days_prior_observation": list(PRIOR_DAYS),
    "study_start": None,  # None: the CDM's first observation_period_start_date
    "study_end": None,  # None: the CDM's last observation_period_end_date
}

#: denominator attrition reasons (IncidencePrevalence wording)
REASONS_COMMON = ("Starting population", "Missing year of birth", "Missing sex",
                  "Cannot satisfy age criteria during the study period based on year of birth",
                  "No observation time available during study period")
REASONS_STRATUM = ("Doesn't satisfy age criteria during the study period",
                   "Prior history requirement not fulfilled during study period",
                   "No observation time available after applying age and prior history criteria")
REASON_SEX = {"Male": "Not Male", "Female": "Not Female"}


@dataclass(frozen=True)
class Stratum:
    """One denominator cohort of the grid."""

    cohort_id: int  # 1..24: denominator_cohort_<id>
    stratum_id: int  # age x prior-observation stratum (1..8), the key in the SQL tables
    min_age: int
    max_age: int
    sex: str
    prior_days: int

    @property
    def name(self) -> str:
        return f"denominator_cohort_{self.cohort_id}"

    @property
    def age_group(self) -> str:
        return f"{self.min_age} to {self.max_age}"


@dataclass(frozen=True)
class Denominator:
    """Handles of the denominator built for one connection and parameter set."""

    table: str  # TEMP table: stratum_id, person_id, sex, entry_date, exit_date, prev_exit
    attrition_table: str  # TEMP table: stratum_id, sex, reason_id, records, subjects
    study_start: dt.date
    study_end: dt.date
    strata: tuple[Stratum, ...]
    dialect: str

    def settings(self, s: Stratum) -> dict[str, str]:
        """The ``denominator_*`` settings of one denominator cohort."""
        return {
            "denominator_age_group": s.age_group, "denominator_sex": s.sex,
            "denominator_days_prior_observation": str(s.prior_days),
            "denominator_start_date": self.study_start.isoformat(),
            "denominator_end_date": self.study_end.isoformat(),
            "denominator_requirements_at_entry": "FALSE", "denominator_target_cohort_name": "None",
            "denominator_time_at_risk": "0 to Inf",
        }


def make_strata(params: dict) -> tuple[Stratum, ...]:
    ages = [tuple(a) for a in params["age_groups"]]
    priors = list(params["days_prior_observation"])
    out, cid = [], 0
    for ai, (lo, hi) in enumerate(ages):
        for sex in params["sexes"]:
            for pi, prior in enumerate(priors):
                cid += 1
                out.append(Stratum(cid, ai * len(priors) + pi + 1, int(lo), int(hi), sex, int(prior)))
    return tuple(out)


def date_lit(d: dt.date) -> str:
    return f"DATE '{d.isoformat()}'"


def years_sql(first: str, last: str) -> str:
    """A table (yr, ystart, yend) of calendar years from SQL integer expressions, in SQL.

    With whole-number bounds the years are a VALUES list of date literals: joined to millions
    of denominator rows, a generated series made PostgreSQL recompute ``make_date`` for every
    (row, year) pair of the join filter (docs/performance.md)."""
    if first.strip().lstrip("-").isdigit() and last.strip().lstrip("-").isdigit() and int(first) <= int(last):
        rows = ", ".join(f"({y}, DATE '{y:04d}-01-01', DATE '{y:04d}-12-31')" for y in range(int(first), int(last) + 1))
        return f"(SELECT * FROM (VALUES {rows}) AS v(yr, ystart, yend))"
    return (f"(SELECT CAST(g AS INTEGER) AS yr, make_date(CAST(g AS INTEGER), 1, 1) AS ystart, "
            f"make_date(CAST(g AS INTEGER), 12, 31) AS yend FROM generate_series({first}, {last}) AS t(g))")


def _to_date(v) -> dt.date:
    return v if isinstance(v, dt.date) and not isinstance(v, dt.datetime) else pd.Timestamp(v).date()


def ensure_denominator(cdm: CdmConnection, params: dict | None = None, run_memo: dict | None = None) -> Denominator:
    """Build (once per connection and parameter set) the denominator and its attrition.

    ``run_memo``: the run's memo on this connection (``DiagnosticContext.memo``). With it, the
    observation-period summary that names the tables and the ``Denominator`` itself are worked
    out once per run and parameter set, not once per cohort unit (at 10M persons the summary
    alone cost 47 server s over 20 units; docs/performance.md). Without it (a unit run alone),
    everything is checked again: the CDM may have changed since the last call."""
    params = {**DEFAULT_PARAMS, **(params or {})}
    cs, dia = cdm.cdm_schema, cdm.dialect
    den_key = ("denominator", cs, json.dumps(params, sort_keys=True, default=str))
    if run_memo is not None and den_key in run_memo:
        return run_memo[den_key]
    fp_key = ("observation_period_summary", cs)
    if run_memo is not None and fp_key in run_memo:
        fp = run_memo[fp_key]
    else:
        fp = cdm.query_df(
            f"SELECT MIN(observation_period_start_date) AS s, MAX(observation_period_end_date) AS e, "
            f"COUNT(*) AS n_op, (SELECT COUNT(*) FROM {cs}.person) AS n_p FROM {cs}.observation_period").iloc[0]
        if run_memo is not None:
            run_memo[fp_key] = fp
    if fp["s"] is None or pd.isna(fp["s"]):
        start = end = dt.date(1970, 1, 1)
    else:
        start, end = _to_date(fp["s"]), _to_date(fp["e"])
    if params.get("study_start"):
        start = dt.date.fromisoformat(params["study_start"])
    if params.get("study_end"):
        end = dt.date.fromisoformat(params["study_end"])
    strata = make_strata(params)
    key = json.dumps([params, cs, str(start), str(end), int(fp["n_op"]), int(fp["n_p"])],
                     sort_keys=True, default=str)
    h = hashlib.sha256(key.encode()).hexdigest()[:12]
    den = Denominator(f"optima_denominator_{h}", f"optima_denominator_attrition_{h}", start, end, strata, dia)
    max_age = max(s.max_age for s in strata)
    min_age = min(s.min_age for s in strata)
    s0, e0 = date_lit(start), date_lit(end)
    person = f"""SELECT pe.person_id, pe.year_of_birth,
               CASE pe.gender_concept_id WHEN 8507 THEN 'Male' WHEN 8532 THEN 'Female' END AS sex,
               CASE WHEN pe.year_of_birth IS NOT NULL THEN make_date(CAST(pe.year_of_birth AS INTEGER),
                    CASE WHEN pe.month_of_birth BETWEEN 1 AND 12 THEN CAST(pe.month_of_birth AS INTEGER) ELSE 1 END, 1)
                    + CASE WHEN pe.day_of_birth BETWEEN 1 AND 31 THEN CAST(pe.day_of_birth AS INTEGER) - 1 ELSE 0 END
               END AS dob,
               o.observation_period_start_date AS op_start, o.observation_period_end_date AS op_end
        FROM {cs}.person pe LEFT JOIN {cs}.observation_period o ON o.person_id = pe.person_id"""
    c2 = "year_of_birth IS NOT NULL"
    c3 = f"{c2} AND sex IS NOT NULL"
    c4 = (f"{c3} AND {add_years(dia, 'dob', str(min_age))} <= {e0} "
          f"AND {add_years(dia, 'dob', str(max_age))} >= {s0}")
    c5 = f"{c4} AND op_start <= {e0} AND op_end >= {s0}"
    # persons with more than one observation period (the others are one row of ``base``)
    op_cte = (f"WITH base AS ({person}), op AS (SELECT * FROM base WHERE {c5}), "
              f"mp AS MATERIALIZED (SELECT person_id FROM {cs}.observation_period GROUP BY person_id "
              f"HAVING COUNT(*) > 1)")
    # attrition: per person first (records meeting each step, a flag per step), then sums; counting
    # distinct persons as COUNT(DISTINCT CASE ...) made PostgreSQL sort every step's rows
    # (8 sorts of the person x period x stratum rows; docs/performance.md)
    steps_common = ["1 = 1", c2, c3, c4, c5]
    # one-row persons need no grouping: their flags are their sums (with the same split below: 43.0 ->
    # ~42 server CPU s for incidence + prevalence at 1M on PostgreSQL; docs/performance.md)
    # pp and ps are read once each, so they are not MATERIALIZED: PostgreSQL streams them into their
    # aggregates instead of writing them out (1M rows of 24 flags: 200 MB of temporary file at 1M persons)
    pp = ("pp AS (SELECT "
          + ", ".join(f"CASE WHEN {c} THEN 1 ELSE 0 END AS r{i + 1}" for i, c in enumerate(steps_common))
          + " FROM base b WHERE NOT EXISTS (SELECT 1 FROM mp WHERE mp.person_id = b.person_id) UNION ALL SELECT "
          + ", ".join(f"SUM(CASE WHEN {c} THEN 1 ELSE 0 END) AS r{i + 1}" for i, c in enumerate(steps_common))
          + " FROM base b WHERE EXISTS (SELECT 1 FROM mp WHERE mp.person_id = b.person_id) GROUP BY b.person_id)")
    # the per-stratum steps per person too: one row per person with a column per (stratum, step), the
    # stratum's ages and prior days written in, instead of one row per (stratum, person) (8 times the rows
    # to group: 11 of the 15 CPU s the denominator cost at 1M persons on DuckDB)
    kinds = sorted({(s.stratum_id, s.min_age, s.max_age, s.prior_days) for s in strata})
    # (the date of reaching each age bound computed once per row, not once per condition)
    bounds = sorted({int(lo) for _, lo, _, _ in kinds} | {int(hi) + 1 for _, _, hi, _ in kinds})
    ages = ", ".join(f"{add_years(dia, 'op.dob', str(b))} AS age_{b}" for b in bounds)
    flags = {}
    for sid, lo, hi, prior in kinds:
        steps = _stratum_steps(dia, s0, e0, str(int(lo)), str(int(hi)), str(int(prior)),
                               age_start=f"op.age_{int(lo)}", age_end=f"op.age_{int(hi) + 1} - 1")[2:]
        flags.update({f"r{6 + i}_{sid}": f"CASE WHEN {c} THEN 1 ELSE 0 END" for i, c in enumerate(steps)})
    # MATERIALIZED: inlined, PostgreSQL evaluated the age dates (make_interval) inside each of the 24
    # aggregates that read them (9 of the 28 s the attrition took at 1M persons; docs/performance.md)
    opa = f"opa AS MATERIALIZED (SELECT op.*, {ages} FROM op)"
    # a person with one observation period is one row already: only the others are summed per person
    # (only the ~10% of persons with several periods are grouped)
    ps = (f"ps AS (SELECT op.sex, {', '.join(f'{e} AS {n}' for n, e in flags.items())} FROM op1 op "
          f"UNION ALL SELECT op.sex, {', '.join(f'SUM({e}) AS {n}' for n, e in flags.items())} "
          f"FROM opm op GROUP BY op.sex, op.person_id)")
    # the denominator rows: one SELECT per stratum, its bounds written in (crossed with a strata
    # table, the age dates were computed per person and stratum, several times each); persons with
    # one observation period have no previous interval, so only the others go through the LAG
    # window (sorting all 4.6M rows at 1M persons was a third of the statement)
    multi = "EXISTS (SELECT 1 FROM mp WHERE mp.person_id = op.person_id)"
    opd = (f"op1 AS MATERIALIZED (SELECT * FROM opa op WHERE NOT ({multi})), "
           f"opm AS MATERIALIZED (SELECT * FROM opa op WHERE {multi})")

    def iv(src: str) -> str:
        return " UNION ALL ".join(
            f"SELECT {sid} AS stratum_id, op.person_id, op.sex, {en} AS entry_date, {ex} AS exit_date "
            f"FROM {src} op WHERE {en} <= {ex}"
            for sid, lo, hi, prior in kinds
            for en, ex in [_stratum_steps(dia, s0, e0, str(int(lo)), str(int(hi)), str(int(prior)),
                                          age_start=f"op.age_{int(lo)}", age_end=f"op.age_{int(hi) + 1} - 1")[:2]])

    # each table read once: one aggregate over pp and one (with and without sex) over ps, turned into
    # rows afterwards (a statement per reason and stratum read the 1M-row ps 24 times: 10 of the 21 s
    # the attrition took at 1M persons on PostgreSQL; docs/performance.md)
    ppt = ("ppt AS MATERIALIZED (SELECT "
           + ", ".join(f"SUM(r{i}) AS rec{i}, SUM(CASE WHEN r{i} > 0 THEN 1 ELSE 0 END) AS sub{i}" for i in range(1, 6))
           + " FROM pp)")
    sums = [(f"rec{i}_{sid}", f"sub{i}_{sid}", f"r{i}_{sid}") for sid, *_ in kinds for i in range(6, 9)]
    # per sex (a hash aggregate of two groups), then all = the sum of the sexes: sex is never NULL in ps,
    # so NULL stands for all (GROUPING SETS ((), (sex)) sorted the 1M rows)
    pst = ("pss AS MATERIALIZED (SELECT sex, "
           + ", ".join(f"SUM({r}) AS {rec}, SUM(CASE WHEN {r} > 0 THEN 1 ELSE 0 END) AS {sub}" for rec, sub, r in sums)
           + " FROM ps GROUP BY sex), pst AS (SELECT * FROM pss UNION ALL SELECT CAST(NULL AS VARCHAR(6)), "
           + ", ".join(f"SUM({rec}), SUM({sub})" for rec, sub, _ in sums) + " FROM pss)")
    common = " UNION ALL ".join(
        f"SELECT CAST(NULL AS INTEGER) AS stratum_id, CAST(NULL AS VARCHAR(6)) AS sex, {i} AS reason_id, "
        f"rec{i} AS records, sub{i} AS subjects FROM ppt"
        for i in range(1, 6))
    per_stratum = " UNION ALL ".join(
        f"SELECT {sid} AS stratum_id, sex, {i} AS reason_id, rec{i}_{sid} AS records, sub{i}_{sid} AS subjects FROM pst"
        for sid, *_ in kinds for i in range(6, 9))
    statements = [
        f"""CREATE TEMP TABLE IF NOT EXISTS {den.table} AS
        {op_cte}, {opa}, {opd}, ivm AS ({iv('opm')})
        SELECT stratum_id, person_id, sex, entry_date, exit_date, CAST(NULL AS DATE) AS prev_exit
        FROM ({iv('op1')}) iv1
        UNION ALL
        SELECT stratum_id, person_id, sex, entry_date, exit_date,
               LAG(exit_date) OVER (PARTITION BY stratum_id, person_id ORDER BY entry_date) AS prev_exit
        FROM ivm""",
        f"CREATE TEMP TABLE IF NOT EXISTS {den.attrition_table} AS {op_cte}, {pp}, {opa}, {opd}, {ps}, {ppt}, {pst} {common} "
        f"UNION ALL {per_stratum}",
    ]
    if ("denominator_analyzed", den.table) not in cdm.memo:  # planner statistics, once per connection
        statements += index_and_analyze(dia, den.table) + index_and_analyze(dia, den.attrition_table)
        cdm.memo[("denominator_analyzed", den.table)] = True
    cdm.execute_all(statements)
    if run_memo is not None:
        run_memo[den_key] = den
    return den


def subject_rows(cdm: CdmConnection, den: Denominator, cohort_table: str, cohort_ids: tuple[int, ...],
                 run_memo: dict | None = None) -> str:
    """The denominator rows of the persons in any cohort of ``cohort_ids``: a TEMP table, made once per run.

    The outcome statements of incidence and prevalence join cohort entries to the denominator
    rows of their persons only. Joined to the whole denominator, PostgreSQL hashed all of it
    once per statement (46.1M rows in 8 batches at 10M persons, ~25 s each time, for 1.4M cohort
    persons); this table holds their rows only. Measured (docs/performance.md, session 17): at 1M
    it saves 2-4 server s; at 10M the two outcome statements and the table took 173 s against 174
    and 215 s for the statements alone in two runs of the old code. It depends on the cohort
    table, which a later run may have rebuilt, so it is made again in each run (dropped first:
    the connection may have served an earlier run) and once per run with ``run_memo``."""
    key = ("denominator_subjects", den.table, cohort_table, tuple(cohort_ids))
    if run_memo is not None and key in run_memo:
        return run_memo[key]
    ids = ", ".join(str(int(i)) for i in cohort_ids)
    h = hashlib.sha256(json.dumps([den.table, cohort_table, list(key[3])]).encode()).hexdigest()[:12]
    table = f"optima_denominator_subjects_{h}"
    cdm.execute_all([
        f"DROP TABLE IF EXISTS {table}",
        f"CREATE TEMP TABLE {table} AS SELECT dn.* FROM {den.table} dn "
        f"WHERE dn.person_id IN (SELECT subject_id FROM {cohort_table} WHERE cohort_definition_id IN ({ids}))",
        *index_and_analyze(den.dialect, table)])
    if run_memo is not None:
        run_memo[key] = table
    return table


def _stratum_steps(dia: str, s0: str, e0: str, min_age: str, max_age: str, prior: str,
                   age_start: str | None = None, age_end: str | None = None) -> tuple[str, ...]:
    """(entry, exit, step 6, step 7, step 8) of a person's period ``op`` in a stratum, in SQL; the
    stratum's bounds are SQL expressions (columns of the strata table, or numbers written in);
    ``age_start``/``age_end``: the dates of reaching them, when computed already."""
    age_start = age_start or add_years(dia, "op.dob", min_age)
    age_end = age_end or f"{add_years(dia, 'op.dob', f'{max_age} + 1')} - 1"
    entry = f"GREATEST(op.op_start + {prior}, {age_start}, {s0})"
    exit_ = f"LEAST(op.op_end, {age_end}, {e0})"
    c6 = f"GREATEST(op.op_start, {age_start}, {s0}) <= LEAST(op.op_end, {age_end}, {e0})"
    c7 = f"{c6} AND op.op_start + {prior} <= LEAST(op.op_end, {e0})"
    c8 = f"{c7} AND {entry} <= {exit_}"
    return entry, exit_, c6, c7, c8


def denominator_attrition(cdm: CdmConnection, den: Denominator) -> dict[tuple[int, str], list[tuple[str, int, int]]]:
    """(stratum_id, sex) -> [(reason, records, subjects), ...] for the denominator steps."""
    df = cdm.query_df(f"SELECT stratum_id, sex, reason_id, records, subjects FROM {den.attrition_table}")
    common: dict[int, tuple[int, int]] = {}
    strat: dict[tuple[int, str, int], tuple[int, int]] = {}
    for sid, sex, rid, rec, sub in df.itertuples(index=False):  # a few dozen rows
        rec = 0 if rec is None or pd.isna(rec) else int(rec)
        sub = 0 if sub is None or pd.isna(sub) else int(sub)
        if sid is None or pd.isna(sid):
            common[int(rid)] = (rec, sub)
        else:
            strat[(int(sid), "Both" if sex is None or pd.isna(sex) else str(sex), int(rid))] = (rec, sub)
    out: dict[tuple[int, str], list[tuple[str, int, int]]] = {}
    for s in den.strata:
        steps = [(REASONS_COMMON[i - 1], *common.get(i, (0, 0))) for i in range(1, 6)]
        steps += [(REASONS_STRATUM[i - 6], *strat.get((s.stratum_id, "Both", i), (0, 0))) for i in range(6, 9)]
        if s.sex in REASON_SEX:
            steps.append((REASON_SEX[s.sex], *strat.get((s.stratum_id, s.sex, 8), (0, 0))))
        out[(s.stratum_id, s.sex)] = steps
    return out


# ---------- shared output helpers for incidence.py and prevalence.py ----------
GROUP_NAME = "denominator_cohort_name &&& outcome_cohort_name"
IP_PACKAGE = "IncidencePrevalence"


def num(x: float | None, digits: int | None = None) -> str | None:
    """A numeric estimate as text (R-like: integers without a decimal point, NaN as NA)."""
    if x is None or x != x:
        return None
    if digits is not None:
        x = round(float(x), digits)
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def estimate_rows(cdm_name: str, rid: int, level: str, additional_name: str, additional_level: str,
                  estimates: list[tuple[str, str, str, str | None]]) -> list[dict]:
    """Rows of one (denominator, outcome) group: ``(variable, estimate_name, type, value)`` each."""
    return [{"result_id": rid, "cdm_name": cdm_name, "group_name": GROUP_NAME, "group_level": level,
             "strata_name": "overall", "strata_level": "overall", "variable_name": var, "variable_level": None,
             "estimate_name": name, "estimate_type": typ, "estimate_value": val,
             "additional_name": additional_name, "additional_level": additional_level}
            for var, name, typ, val in estimates]


def attrition_records(cdm_name: str, result_id: int, group_level: str,
                      steps: list[tuple[str, int, int]]) -> list[dict]:
    """omopgenerics attrition rows: strata ``reason``, additional ``reason_id``, 4 counts per step."""
    out: list[dict] = []
    prev: tuple[int, int] | None = None
    for i, (reason, rec, sub) in enumerate(steps, start=1):
        ex_rec, ex_sub = (0, 0) if prev is None else (prev[0] - rec, prev[1] - sub)
        for var, val in (("number_records", rec), ("number_subjects", sub),
                         ("excluded_records", ex_rec), ("excluded_subjects", ex_sub)):
            out.append({"result_id": result_id, "cdm_name": cdm_name, "group_name": GROUP_NAME,
                        "group_level": group_level, "strata_name": "reason", "strata_level": reason,
                        "variable_name": var, "variable_level": None, "estimate_name": "count",
                        "estimate_type": "integer", "estimate_value": str(int(val)),
                        "additional_name": "reason_id", "additional_level": str(i)})
        prev = (rec, sub)
    return out
