"""Population diagnostics (incidence, prevalence) against hand counts, pandas and hand SQL."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2, norm

from site_agent.cdm.connection import connect_cdm
from site_agent.cdm.ddl import cdm_ddl, results_ddl
from site_agent.cohorts import build_cohorts, collect_definitions
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


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.duckdb"
    con = duckdb.connect(str(path))
    for s in cdm_ddl("duckdb", "5.4", "main") + results_ddl("results"):
        con.execute(s)
    con.executemany("INSERT INTO person (person_id, gender_concept_id, year_of_birth, month_of_birth, day_of_birth,"
                    " race_concept_id, ethnicity_concept_id) VALUES (?, ?, ?, ?, ?, 0, 0)", PERSONS)
    con.executemany("INSERT INTO observation_period VALUES (?, ?, ?, ?, 32880)",
                    [(i, *o) for i, o in enumerate(OBS, start=1)])
    con.executemany("INSERT INTO results.cohort VALUES (5, ?, ?, ?)", OUTCOME)
    con.execute("INSERT INTO results.cohort VALUES (9, 2, DATE '2010-08-01', DATE '2010-08-02')")
    con.close()
    cdm = connect_cdm(str(path))
    yield cdm
    cdm.close()


def _ctx(cdm, name="tiny") -> DiagnosticContext:
    return DiagnosticContext(cdm=cdm, cdm_name=name, cohorts=())


def _outcome(cid=5, name="outcome") -> CohortDefinition:
    return CohortDefinition(cohort_definition_id=cid, cohort_name=name, path=Path(f"{name}.json"),
                            json_text="{}", sha256="0" * 64)


def test_tiny_incidence_by_hand(tiny):
    res = INC.run(_ctx(tiny), (_outcome(),))
    assert set(res.settings["result_type"]) == {"incidence", "incidence_attrition"} and len(res.settings) == 48
    w = estimates(res, "incidence")
    # 2011, 0-150, Both, prior 0: p1 until the outcome on 1 March (event), p2 whole year, p6 from
    # birth, p7 one day (event on entry); p3 not observed, p4 had the outcome before, p5 no sex.
    r = pick(w, start="2011-01-01")
    pdays = days(D(2011, 1, 1), D(2011, 3, 1)) + 365 + days(D(2011, 4, 1), D(2011, 12, 31)) + 1
    assert (int(r["person_days"]), int(r["outcome_count"]), int(r["denominator_count"])) == (pdays, 2, 4)
    lo, hi = ci_poisson(2, pdays)
    assert float(r["incidence_100000_pys"]) == pytest.approx(2 / (pdays / 365.25) * 1e5, abs=1e-3)
    assert float(r["incidence_100000_pys_95CI_lower"]) == pytest.approx(lo, abs=1e-3)
    assert float(r["incidence_100000_pys_95CI_upper"]) == pytest.approx(hi, abs=1e-3)
    assert float(r["person_years"]) == pytest.approx(pdays / 365.25, abs=1e-3)
    # 2010, 0-150, Both: p1 366 days... no: 365; p2 from July; p3 until the outcome (1 June); p4 excluded
    r = pick(w, start="2010-01-01")
    pdays = 365 + days(D(2010, 7, 1), D(2010, 12, 31)) + days(D(2010, 1, 1), D(2010, 6, 1))
    assert (int(r["person_days"]), int(r["outcome_count"]), int(r["denominator_count"])) == (pdays, 1, 3)
    # 65 to 150, Female: p2 from the 65th birthday (10 May 2011) to the end of observation
    r = pick(w, age="65 to 150", sex="Female", interval="overall")
    assert (int(r["person_days"]), int(r["outcome_count"])) == (days(D(2011, 5, 10), D(2012, 6, 30)), 0)
    assert float(r["incidence_100000_pys_95CI_lower"]) == 0
    # 18 to 64, Female, 365 days prior: p2 from 1 July 2011 to the day before turning 65 -> nothing;
    # p7 has only 214 days of observation -> nothing; p4 outcome before -> nothing.
    assert not ((w["denominator_age_group"] == "18 to 64") & (w["denominator_sex"] == "Female")
                & (w["denominator_days_prior_observation"] == "365")).any()
    # 0 to 17, Male, prior 0, overall: p3's 2nd period is excluded (outcome in the 1st), p6 from birth
    r = pick(w, age="0 to 17", sex="Male", interval="overall")
    assert int(r["person_days"]) == days(D(2010, 1, 1), D(2010, 6, 1)) + days(D(2011, 4, 1), D(2012, 12, 31))
    assert (int(r["denominator_count"]), int(r["outcome_count"])) == (2, 1)
    # attrition: 8 persons; p5 has no sex; p8 no observation period; washout drops p4 (and p3's 2nd period)
    a = res.data[res.data["result_id"] == 25]  # attrition of denominator_cohort_1 (0-150, Both, prior 0)
    n = {(r.strata_level, r.variable_name): int(r.estimate_value) for r in a.itertuples()}
    assert n[("Starting population", "number_subjects")] == 8
    assert n[("Missing sex", "excluded_subjects")] == 1
    assert n[("No observation time available during study period", "number_subjects")] == 6
    assert n[("No observation time available during study period", "number_records")] == 7
    wash = "Excluded due to prior event (do not pass outcome washout during study period)"
    assert (n[(wash, "excluded_subjects")], n[(wash, "excluded_records")]) == (1, 2)


def test_tiny_prevalence_by_hand(tiny):
    res = PREV.run(_ctx(tiny), (_outcome(),))
    assert set(res.settings["result_type"]) == {"prevalence", "prevalence_attrition"} and len(res.settings) == 96
    w = estimates(res, "prevalence")
    # period 2010, Both 0-150 prior 0: p1, p2, p3, p4 observed; p3 (June) and p4 (until 31 Dec) prevalent
    r = pick(w, start="2010-01-01", kind="period")
    assert (int(r["denominator_count"]), int(r["outcome_count"])) == (4, 2)
    z = norm.ppf(0.975)
    p, n = 0.5, 4
    lo = (p + z * z / (2 * n) - z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (1 + z * z / n)
    assert float(r["prevalence_95CI_lower"]) == pytest.approx(lo, abs=1e-5)
    # point 1 Jan 2012: p1, p2, p3 (2nd period), p4, p6 observed; nobody inside an outcome episode
    r = pick(w, start="2012-01-01", kind="point")
    assert (int(r["denominator_count"]), int(r["outcome_count"])) == (5, 0)
    # period 2011: p1 (March), p7 (1 June) prevalent; p5 has no sex
    r = pick(w, start="2011-01-01", kind="period")
    assert (int(r["denominator_count"]), int(r["outcome_count"])) == (5, 2)
    r = pick(w, interval="overall", kind="period")
    assert (int(r["denominator_count"]), int(r["outcome_count"])) == (6, 4)


def test_one_run_summarises_observation_periods_once_and_a_new_run_sees_a_changed_cdm(tiny, monkeypatch):
    """The summary naming the denominator is read once per run (it was read once per cohort unit:
    20 times a suite); the memo lives in the run's context, so a later run on the same connection
    still sees the CDM as it is then."""
    seen: list[str] = []
    real = tiny.query_df
    monkeypatch.setattr(tiny, "query_df", lambda sql, *a, **k: (seen.append(sql), real(sql, *a, **k))[1])
    ctx = _ctx(tiny)
    shared = [d.run(ctx, (o,)) for d in (INC, PREV) for o in (_outcome(), _outcome(9, "noise"))]
    summaries = [q for q in seen if "MIN(observation_period_start_date)" in q]
    assert len(summaries) == 1
    alone = [d.run(_ctx(tiny), (o,)) for d in (INC, PREV) for o in (_outcome(), _outcome(9, "noise"))]
    for a, b in zip(shared, alone):
        pd.testing.assert_frame_equal(a.data, b.data)
    # a ninth person observed into 2013: a new run's incidence has 2013 rows, the first run's had none
    tiny.execute_all(["INSERT INTO main.person (person_id, gender_concept_id, year_of_birth, race_concept_id,"
                      " ethnicity_concept_id) VALUES (9, 8507, 1980, 0, 0)",
                      "INSERT INTO main.observation_period VALUES (99, 9, DATE '2012-01-01', DATE '2013-06-30', 32880)"])
    later = estimates(INC.run(_ctx(tiny), (_outcome(),)), "incidence")
    assert not (estimates(shared[0], "incidence")["start"] == "2013-01-01").any()
    assert int(pick(later, start="2013-01-01")["denominator_count"]) == 1


def test_outcome_persons_rows_made_once_per_run_and_again_after_the_cohort_changed(tiny, monkeypatch):
    """The outcome statements read the cohort persons' denominator rows from a TEMP table made once
    per run (for incidence and prevalence together); a later run on the same connection, after
    the cohort table changed, makes it again and counts the new entry."""
    made: list[str] = []
    real = tiny.execute_all
    monkeypatch.setattr(tiny, "execute_all", lambda stmts, *a, **k: (
        made.extend(s for s in stmts if s.startswith("CREATE TEMP TABLE optima_denominator_subjects")),
        real(stmts, *a, **k))[1])
    ctx = _ctx(tiny)
    before_inc = estimates(INC.run(ctx, (_outcome(),)), "incidence")
    before_prev = estimates(PREV.run(ctx, (_outcome(),)), "prevalence")
    assert len(made) == 1
    # person 2 (female, observed 1 July 2010 - 30 June 2012) was only in the noise cohort 9
    r = pick(before_prev, start="2011-01-01", kind="period")
    assert (int(r["denominator_count"]), int(r["outcome_count"])) == (5, 2)
    tiny.execute_all(["INSERT INTO results.cohort VALUES (5, 2, DATE '2011-02-01', DATE '2011-02-10')"])
    ctx = _ctx(tiny)
    after_prev = estimates(PREV.run(ctx, (_outcome(),)), "prevalence")
    after_inc = estimates(INC.run(ctx, (_outcome(),)), "incidence")
    assert len(made) == 2
    r = pick(after_prev, start="2011-01-01", kind="period")
    assert (int(r["denominator_count"]), int(r["outcome_count"])) == (5, 3)
    for sex in ("Both", "Female"):
        k0 = int(pick(before_inc, sex=sex, start="2011-01-01")["outcome_count"])
        assert int(pick(after_inc, sex=sex, start="2011-01-01")["outcome_count"]) == k0 + 1


def test_tiny_all_strata_match_pandas(tiny):
    person = tiny.query_df("SELECT * FROM main.person")
    op = tiny.query_df("SELECT * FROM main.observation_period")
    for c in ("observation_period_start_date", "observation_period_end_date"):
        op[c] = pd.to_datetime(op[c])
    cohort = pd.DataFrame(OUTCOME, columns=["subject_id", "cohort_start_date", "cohort_end_date"])
    for c in ("cohort_start_date", "cohort_end_date"):
        cohort[c] = pd.to_datetime(cohort[c])
    _compare_with_pandas(tiny, person, op, cohort, _outcome(), D(2010, 1, 1), D(2012, 12, 31), years=[2010, 2011, 2012])


def _compare_with_pandas(cdm, person, op, cohort, outcome, start, end, years, strata=None):
    inc = estimates(INC.run(_ctx(cdm), (outcome,)), "incidence")
    prev = estimates(PREV.run(_ctx(cdm), (outcome,)), "prevalence")
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


# ---------- the 20k synthetic site ----------
def test_synthetic_nsclc_matches_pandas(synth_site, tmp_path):
    path = tmp_path / "site.duckdb"
    shutil.copy(synth_site.out, path)
    defs = collect_definitions([REPO / "cohort_definitions" / "lung" / "nsclc.json"])
    with connect_cdm(str(path)) as cdm:
        build_cohorts(cdm, defs)
        person = cdm.query_df("SELECT person_id, gender_concept_id, year_of_birth, month_of_birth, day_of_birth "
                              "FROM main.person")
        op = cdm.query_df("SELECT person_id, observation_period_start_date, observation_period_end_date "
                          "FROM main.observation_period")
        cohort = cdm.query_df(f"SELECT subject_id, cohort_start_date, cohort_end_date FROM results.cohort "
                              f"WHERE cohort_definition_id = {defs[0].cohort_definition_id}")
        for df in (op, cohort):
            for c in df.columns[1:]:
                df[c] = pd.to_datetime(df[c])
        assert len(cohort) > 20
        start, end = op["observation_period_start_date"].min().date(), op["observation_period_end_date"].max().date()
        years = sorted({end.year - 1, end.year - 5, (start.year + end.year) // 2})
        _compare_with_pandas(cdm, person, op, cohort, defs[0], start, end, years,
                             strata=[(0, 150, "Both", 0), (18, 64, "Male", 365), (65, 150, "Female", 0)])


# ---------- Eunomia, both backends ----------
def test_eunomia_gi_bleed_person_days(eunomia_cdm):
    url, cdm_schema, write_schema = eunomia_cdm
    defs = collect_definitions([REPO / "tests" / "data" / "gi_bleed_adults.json"])
    with connect_cdm(url, cdm_schema=cdm_schema, write_schema=write_schema) as cdm:
        build_cohorts(cdm, defs)
        ctx = DiagnosticContext(cdm=cdm, cdm_name="Eunomia", cohorts=tuple(defs))
        inc = estimates(INC.run(ctx, (defs[0],)), "incidence")
        prev = estimates(PREV.run(ctx, (defs[0],)), "prevalence")
        cid, cs = defs[0].cohort_definition_id, cdm_schema
        hand = cdm.query_df(f"""
            WITH o AS (SELECT subject_id, MIN(cohort_start_date) AS f FROM {write_schema}.cohort
                       WHERE cohort_definition_id = {cid} GROUP BY subject_id),
            iv AS (SELECT op.person_id, op.observation_period_start_date AS s, op.observation_period_end_date AS e,
                          o.f FROM {cs}.observation_period op
                   JOIN {cs}.person p ON p.person_id = op.person_id AND p.gender_concept_id IN (8507, 8532)
                   LEFT JOIN o ON o.subject_id = op.person_id)
            SELECT SUM(CASE WHEN f IS NOT NULL AND f <= e THEN f ELSE e END - s + 1) AS pdays,
                   SUM(CASE WHEN f IS NOT NULL AND f <= e THEN 1 ELSE 0 END) AS k,
                   COUNT(DISTINCT person_id) AS n
            FROM iv WHERE f IS NULL OR f >= s""").iloc[0]
    r = pick(inc, interval="overall")
    assert int(r["person_days"]) == int(hand["pdays"])
    assert (int(r["outcome_count"]), int(r["denominator_count"])) == (int(hand["k"]), int(hand["n"]))
    assert int(hand["k"]) > 0
    yearly = inc[(inc["interval"] == "years") & (inc["denominator_age_group"] == "0 to 150")
                 & (inc["denominator_sex"] == "Both") & (inc["denominator_days_prior_observation"] == "0")]
    assert yearly["person_days"].astype(int).sum() == int(hand["pdays"])
    assert yearly["outcome_count"].astype(int).sum() == int(hand["k"])
    assert (prev["prevalence"].astype(float).between(0, 1)).all() and len(prev) > 0


# ---------- random intervals: several periods a year, overlapping outcome entries ----------
def _random_cdm(path: Path, seed: int, first: dt.date = D(2004, 1, 1), last: dt.date = D(2016, 12, 31),
                anchor: bool = False) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """300 persons with 1-3 observation periods (often two in one calendar year) and 0-4 outcome
    entries each, overlapping one another and the periods' edges (cohort 5), between ``first`` and
    ``last``; ``anchor``: one more person observed from ``first`` to ``last`` (the study period)."""
    rng = np.random.default_rng(seed)
    span = (last - first).days

    def days(n: int) -> int:  # n days of the default 13-year span, scaled to this one
        return round(n * span / 4748)

    persons, obs, outs = [], [], []
    for pid in range(1, 301):
        persons.append((pid, int(rng.choice([8507, 8532, 8507, 8532, 0])), int(rng.integers(first.year - 69, last.year)),
                        None if rng.random() < 0.2 else int(rng.integers(1, 13)),
                        None if rng.random() < 0.2 else int(rng.integers(1, 29))))
        day = first + dt.timedelta(days=int(rng.integers(0, days(2500))))
        for _ in range(int(rng.integers(1, 4))):
            end = day + dt.timedelta(days=int(rng.choice([rng.integers(0, 120), rng.integers(0, days(2000))])))
            if end > last:
                break
            obs.append((pid, day, end))
            day = end + dt.timedelta(days=int(rng.integers(1, 200)))
        for _ in range(int(rng.integers(0, 9))):
            s = first - dt.timedelta(days=214) + dt.timedelta(days=int(rng.integers(0, days(4900))))
            outs.append((pid, s, s + dt.timedelta(days=int(rng.choice([0, rng.integers(0, 60), rng.integers(0, 900)])))))
    if anchor:
        persons.append((301, 8532, first.year - 40, 6, 15))
        obs.append((301, first, last))
    con = duckdb.connect(str(path))
    for s in cdm_ddl("duckdb", "5.4", "main") + results_ddl("results"):
        con.execute(s)
    con.executemany("INSERT INTO person (person_id, gender_concept_id, year_of_birth, month_of_birth, day_of_birth,"
                    " race_concept_id, ethnicity_concept_id) VALUES (?, ?, ?, ?, ?, 0, 0)", persons)
    con.executemany("INSERT INTO observation_period VALUES (?, ?, ?, ?, 32880)",
                    [(i, *o) for i, o in enumerate(obs, start=1)])
    con.executemany("INSERT INTO results.cohort VALUES (5, ?, ?, ?)", outs)
    con.close()
    person = pd.DataFrame(persons, columns=["person_id", "gender_concept_id", "year_of_birth", "month_of_birth",
                                            "day_of_birth"])
    op = pd.DataFrame(obs, columns=["person_id", "observation_period_start_date", "observation_period_end_date"])
    cohort = pd.DataFrame(outs, columns=["subject_id", "cohort_start_date", "cohort_end_date"])
    for df in (op, cohort):
        for c in df.columns[1:]:
            df[c] = pd.to_datetime(df[c])
    return person, op, cohort


@pytest.mark.parametrize("mask_years", [62, 2])  # outcome years as bit masks; too many years for them: islands
@pytest.mark.parametrize("seed", [3, 11])
def test_random_overlapping_intervals_match_pandas(tmp_path, seed, mask_years, monkeypatch):
    """Interval arithmetic (no year expansion) and merged outcome ranges against plain pandas."""
    from site_agent.diagnostics import prevalence

    monkeypatch.setattr(prevalence, "MASK_YEARS", mask_years)
    person, op, cohort = _random_cdm(tmp_path / "random.duckdb", seed)
    # several periods of one person within a calendar year, and outcome entries overlapping each other
    op_years = op.assign(y=op["observation_period_start_date"].dt.year)
    assert op_years.duplicated(["person_id", "y"]).any()
    c = cohort.sort_values(["subject_id", "cohort_start_date"])
    assert ((c["subject_id"] == c["subject_id"].shift()) & (c["cohort_start_date"] <= c["cohort_end_date"].shift())).any()
    start, end = op["observation_period_start_date"].min().date(), op["observation_period_end_date"].max().date()
    with connect_cdm(str(tmp_path / "random.duckdb")) as cdm:
        _compare_with_pandas(cdm, person, op, cohort, _outcome(), start, end,
                             years=list(range(start.year + 1, end.year)))


@pytest.mark.parametrize("mask_years", [62, 61])  # exactly as many complete years as the masks hold; one too many
def test_sixty_two_complete_years_fill_the_mask_and_match_pandas(tmp_path, mask_years, monkeypatch):
    """1950-2011: 62 complete years, bits 0 to 61 of the prevalence masks (the sign bit stays clear);
    the first, middle and last years against pandas, by masks and by islands."""
    from site_agent.diagnostics import prevalence

    monkeypatch.setattr(prevalence, "MASK_YEARS", mask_years)
    person, op, cohort = _random_cdm(tmp_path / "long.duckdb", 5, first=D(1950, 1, 1), last=D(2011, 12, 31),
                                     anchor=True)
    assert op["observation_period_start_date"].min().date() == D(1950, 1, 1)
    assert op["observation_period_end_date"].max().date() == D(2011, 12, 31)
    with connect_cdm(str(tmp_path / "long.duckdb")) as cdm:
        _compare_with_pandas(cdm, person, op, cohort, _outcome(), D(1950, 1, 1), D(2011, 12, 31),
                             years=[1950, 1951, 1980, 2010, 2011],
                             strata=[(0, 150, "Both", 0), (18, 64, "Male", 365), (65, 150, "Female", 0)])
