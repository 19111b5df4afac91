"""Shared by the population diagnostics tests: result access, a plain pandas reimplementation of
incidence and prevalence (small data only), the tiny hand-made CDM's rows, and the comparison of
a run with the pandas reference."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
from scipy.stats import chi2

from site_agent.cohorts.definitions import CohortDefinition
from site_agent.diagnostics.base import DiagnosticContext
from site_agent.diagnostics.population import DIAGNOSTICS

REPO = Path(__file__).resolve().parents[1]
D = dt.date
INC = next(d for d in DIAGNOSTICS if d.name == "incidence")
PREV = next(d for d in DIAGNOSTICS if d.name == "prevalence")


def days(a: dt.date, b: dt.date) -> int:
    """Days from a to b, both inclusive."""
    return (b - a).days + 1


# ---------- result access ----------
def estimates(res, result_type: str) -> pd.DataFrame:
    """Wide table: one row per (denominator settings, interval) with the estimates as columns."""
    s = res.settings.set_index("result_id")
    d = res.data[res.data["result_id"].map(s["result_type"]) == result_type].copy()
    for col in ("denominator_age_group", "denominator_sex", "denominator_days_prior_observation"):
        d[col] = d["result_id"].map(s[col])
    if "analysis_type" in s:
        d["analysis_type"] = d["result_id"].map(s["analysis_type"])
    parts = d["additional_level"].str.split(" &&& ", expand=True)
    d["start"], d["end"], d["interval"] = parts[0], parts[1], parts[2]
    keys = ["group_level", "denominator_age_group", "denominator_sex", "denominator_days_prior_observation",
            "start", "end", "interval"] + (["analysis_type"] if "analysis_type" in d else [])
    return d.pivot_table(index=keys, columns="estimate_name", values="estimate_value", aggfunc="first").reset_index()


def pick(w: pd.DataFrame, age="0 to 150", sex="Both", prior="0", interval="years", start=None, kind=None) -> pd.Series:
    m = ((w["denominator_age_group"] == age) & (w["denominator_sex"] == sex)
         & (w["denominator_days_prior_observation"] == prior) & (w["interval"] == interval))
    if start is not None:
        m &= w["start"] == start
    if kind is not None:
        m &= w["analysis_type"] == f"{kind} prevalence"
    rows = w[m]
    assert len(rows) == 1, rows
    return rows.iloc[0]


# ---------- a plain pandas reimplementation (for small data only) ----------
def ref_intervals(person: pd.DataFrame, op: pd.DataFrame, start: dt.date, end: dt.date,
                  lo: int, hi: int, prior: int, sex: str) -> pd.DataFrame:
    p = person[person["gender_concept_id"].isin([8507, 8532])].copy()
    if sex != "Both":
        p = p[p["gender_concept_id"] == (8507 if sex == "Male" else 8532)]
    p["dob"] = pd.to_datetime(pd.DataFrame({"year": p["year_of_birth"], "month": p["month_of_birth"].fillna(1),
                                            "day": 1})) + pd.to_timedelta(p["day_of_birth"].fillna(1) - 1, unit="D")
    x = op.merge(p[["person_id", "dob"]], on="person_id")
    age_start = x["dob"] + pd.DateOffset(years=lo)
    age_end = x["dob"] + pd.DateOffset(years=hi + 1) - pd.Timedelta(days=1)
    s0, e0 = pd.Timestamp(start), pd.Timestamp(end)
    entry = (x["observation_period_start_date"] + pd.Timedelta(days=prior)).where(
        x["observation_period_start_date"] + pd.Timedelta(days=prior) >= age_start, age_start)
    x["entry"] = entry.clip(lower=s0)
    x["exit"] = x["observation_period_end_date"].where(x["observation_period_end_date"] <= age_end, age_end).clip(upper=e0)
    return x.loc[x["entry"] <= x["exit"], ["person_id", "entry", "exit"]].reset_index(drop=True)


def ref_incidence(iv: pd.DataFrame, cohort: pd.DataFrame, year: int | None) -> tuple[int, int, int]:
    """(denominator_count, outcome_count, person_days) with washout Inf, first event only."""
    first = cohort.groupby("subject_id")["cohort_start_date"].min().rename("first")
    x = iv.merge(first, left_on="person_id", right_index=True, how="left")
    x = x[x["first"].isna() | (x["first"] >= x["entry"])].copy()
    event = x["first"].notna() & (x["first"] <= x["exit"])
    x["end"] = x["exit"].where(~event, x["first"])
    x["event"] = event
    if year is not None:
        ys, ye = pd.Timestamp(year, 1, 1), pd.Timestamp(year, 12, 31)
        x["event"] &= (x["end"] >= ys) & (x["end"] <= ye)
        x["entry"], x["end"] = x["entry"].clip(lower=ys), x["end"].clip(upper=ye)
        x = x[x["entry"] <= x["end"]]
    return x["person_id"].nunique(), int(x["event"].sum()), int(((x["end"] - x["entry"]).dt.days + 1).sum())


def ref_prevalence(iv: pd.DataFrame, cohort: pd.DataFrame, ps: dt.date, pe: dt.date) -> tuple[int, int]:
    """(denominator, outcome) persons for the period [ps, pe] (ps == pe: point prevalence)."""
    x = iv.copy()
    x["s"], x["e"] = x["entry"].clip(lower=pd.Timestamp(ps)), x["exit"].clip(upper=pd.Timestamp(pe))
    x = x[x["s"] <= x["e"]]
    y = x.merge(cohort, left_on="person_id", right_on="subject_id")
    y = y[(y["cohort_start_date"] <= y["e"]) & (y["cohort_end_date"] >= y["s"])]
    return x["person_id"].nunique(), y["person_id"].nunique()


def ci_poisson(k: int, pd_: int) -> tuple[float, float]:
    py = pd_ / 365.25
    lo = 0.0 if k == 0 else chi2.ppf(0.025, 2 * k) / 2 / py * 1e5
    return lo, chi2.ppf(0.975, 2 * (k + 1)) / 2 / py * 1e5


# ---------- the tiny hand-made CDM ----------
PERSONS = [  # person_id, gender, year, month, day
    (1, 8507, 1980, 6, 15), (2, 8532, 1946, 5, 10), (3, 8507, 1995, 2, 1), (4, 8532, 1960, None, None),
    (5, 0, 1970, 1, 1), (6, 8507, 2011, 4, 1), (7, 8532, 1970, 1, 1), (8, 8507, 1980, 1, 1),
]
OBS = [  # person_id, start, end
    (1, D(2010, 1, 1), D(2012, 12, 31)), (2, D(2010, 7, 1), D(2012, 6, 30)),
    (3, D(2010, 1, 1), D(2010, 12, 31)), (3, D(2012, 1, 1), D(2012, 12, 31)),
    (4, D(2010, 3, 1), D(2012, 12, 31)), (5, D(2010, 1, 1), D(2012, 12, 31)),
    (6, D(2011, 4, 1), D(2012, 12, 31)), (7, D(2011, 6, 1), D(2011, 12, 31)),
]
OUTCOME = [  # subject_id, start, end (cohort 5); cohort 9 holds noise that must be ignored
    (1, D(2011, 3, 1), D(2011, 3, 10)), (1, D(2012, 2, 1), D(2012, 2, 5)), (3, D(2010, 6, 1), D(2010, 6, 30)),
    (4, D(2009, 5, 1), D(2010, 12, 31)), (7, D(2011, 6, 1), D(2011, 6, 1)), (5, D(2011, 1, 1), D(2011, 1, 2)),
]


def make_ctx(cdm, name="tiny") -> DiagnosticContext:
    return DiagnosticContext(cdm=cdm, cdm_name=name, cohorts=())


def outcome_def(cid=5, name="outcome") -> CohortDefinition:
    return CohortDefinition(cohort_definition_id=cid, cohort_name=name, path=Path(f"{name}.json"),
                            json_text="{}", sha256="0" * 64)


def compare_with_pandas(cdm, person, op, cohort, outcome, start, end, years, strata=None):
    inc = estimates(INC.run(make_ctx(cdm), (outcome,)), "incidence")
    prev = estimates(PREV.run(make_ctx(cdm), (outcome,)), "prevalence")
    strata = strata or [(lo, hi, sex, prior) for lo, hi in ((0, 150), (0, 17), (18, 64), (65, 150))
                        for sex in ("Both", "Male", "Female") for prior in (0, 365)]
    checked = {"inc": 0, "prev": 0}
    for lo, hi, sex, prior in strata:
        iv = ref_intervals(person, op, start, end, lo, hi, prior, sex)
        age = f"{lo} to {hi}"
        for yr in [*years, None]:
            n, k, pdays = ref_incidence(iv, cohort, yr)
            if n:
                r = pick(inc, age=age, sex=sex, prior=str(prior), interval="overall" if yr is None else "years",
                         start=None if yr is None else str(max(start, D(yr, 1, 1))))
                assert (int(r["denominator_count"]), int(r["outcome_count"]), int(r["person_days"])) == \
                    (n, k, pdays), (age, sex, prior, yr)
                checked["inc"] += 1
            if yr is None:
                continue
            for kind, pe in (("period", D(yr, 12, 31)), ("point", D(yr, 1, 1))):
                n, k = ref_prevalence(iv, cohort, D(yr, 1, 1), pe)
                if n:
                    r = pick(prev, age=age, sex=sex, prior=str(prior), start=f"{yr}-01-01", kind=kind)
                    assert (int(r["denominator_count"]), int(r["outcome_count"])) == (n, k), (kind, age, sex, yr)
                    checked["prev"] += 1
    assert checked["inc"] > len(strata) and checked["prev"] > len(strata)
    # and nothing more: SQL emits exactly the intervals that pandas finds populated
    keys = {(f"{lo} to {hi}", sex, str(prior)) for lo, hi, sex, prior in strata}
    for name, w in (("inc", inc), ("prev", prev[prev["interval"] == "years"])):
        sel = w[[(a, s, p) in keys for a, s, p in zip(w["denominator_age_group"], w["denominator_sex"],
                                                   w["denominator_days_prior_observation"])]]
        sel = sel[(sel["interval"] == "overall") | sel["start"].str[:4].astype(int).isin(years)]
        assert len(sel) == checked[name], name
