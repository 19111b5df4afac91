"""Population diagnostics (incidence, prevalence) against hand counts, pandas and hand SQL.

The pandas reference and the result helpers: tests/population_reference.py; random intervals and
62 complete years: tests/test_diag_population_random.py."""

from __future__ import annotations

import shutil

import duckdb
import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from site_agent.cdm.connection import connect_cdm
from site_agent.cdm.ddl import cdm_ddl, results_ddl
from site_agent.cohorts import build_cohorts, collect_definitions
from site_agent.diagnostics.base import DiagnosticContext
from tests.population_reference import (
    INC,
    OBS,
    OUTCOME,
    PERSONS,
    PREV,
    REPO,
    D,
    ci_poisson,
    compare_with_pandas,
    days,
    estimates,
    make_ctx,
    outcome_def,
    pick,
)


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


def test_tiny_incidence_by_hand(tiny):
    res = INC.run(make_ctx(tiny), (outcome_def(),))
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
    res = PREV.run(make_ctx(tiny), (outcome_def(),))
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
    ctx = make_ctx(tiny)
    shared = [d.run(ctx, (o,)) for d in (INC, PREV) for o in (outcome_def(), outcome_def(9, "noise"))]
    summaries = [q for q in seen if "MIN(observation_period_start_date)" in q]
    assert len(summaries) == 1
    alone = [d.run(make_ctx(tiny), (o,)) for d in (INC, PREV) for o in (outcome_def(), outcome_def(9, "noise"))]
    for a, b in zip(shared, alone):
        pd.testing.assert_frame_equal(a.data, b.data)
    # a ninth person observed into 2013: a new run's incidence has 2013 rows, the first run's had none
    tiny.execute_all(["INSERT INTO main.person (person_id, gender_concept_id, year_of_birth, race_concept_id,"
                      " ethnicity_concept_id) VALUES (9, 8507, 1980, 0, 0)",
                      "INSERT INTO main.observation_period VALUES (99, 9, DATE '2012-01-01', DATE '2013-06-30', 32880)"])
    later = estimates(INC.run(make_ctx(tiny), (outcome_def(),)), "incidence")
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
    ctx = make_ctx(tiny)
    before_inc = estimates(INC.run(ctx, (outcome_def(),)), "incidence")
    before_prev = estimates(PREV.run(ctx, (outcome_def(),)), "prevalence")
    assert len(made) == 1
    # person 2 (female, observed 1 July 2010 - 30 June 2012) was only in the noise cohort 9
    r = pick(before_prev, start="2011-01-01", kind="period")
    assert (int(r["denominator_count"]), int(r["outcome_count"])) == (5, 2)
    tiny.execute_all(["INSERT INTO results.cohort VALUES (5, 2, DATE '2011-02-01', DATE '2011-02-10')"])
    ctx = make_ctx(tiny)
    after_prev = estimates(PREV.run(ctx, (outcome_def(),)), "prevalence")
    after_inc = estimates(INC.run(ctx, (outcome_def(),)), "incidence")
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
    compare_with_pandas(tiny, person, op, cohort, outcome_def(), D(2010, 1, 1), D(2012, 12, 31), years=[2010, 2011, 2012])


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
        compare_with_pandas(cdm, person, op, cohort, defs[0], start, end, years,
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
