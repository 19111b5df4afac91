"""summarise_characteristics and summarise_large_scale_characteristics, checked against a
plain pandas implementation over the synthetic site's (small) tables, and on Eunomia on
both backends against hand-written SQL."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from site_agent.cdm import connect_cdm
from site_agent.cohorts import build_cohorts, collect_definitions
from site_agent.diagnostics import characteristics, large_scale
from site_agent.diagnostics.base import DiagnosticContext
from site_agent.diagnostics.characteristics import summarise_characteristics
from site_agent.diagnostics.large_scale import summarise_large_scale_characteristics
from tests.conftest import DEFINITIONS

GIB = Path(__file__).parent / "data" / "gi_bleed_adults.json"
CHECKED = ("sclc", "nsclc", "lung_chemotherapy")  # the last has several records per subject


# ---------------------------------------------------------------- synthetic site
@pytest.fixture(scope="module")
def lung(synth_site, tmp_path_factory):
    """Lung cohorts built on a private copy; the diagnostics' results and the raw tables."""
    path = tmp_path_factory.mktemp("diag_char") / "site.duckdb"
    shutil.copy(synth_site.out, path)
    defs = collect_definitions([DEFINITIONS / "lung"])
    with connect_cdm(str(path), write_schema="results") as cdm:
        build_cohorts(cdm, defs)
        ctx = DiagnosticContext(cdm=cdm, cdm_name="site_a", cohorts=tuple(defs))
        by_name = {d.cohort_name: d for d in defs}
        chars = {n: summarise_characteristics(ctx, (by_name[n],)) for n in CHECKED}
        lsc = {n: summarise_large_scale_characteristics(ctx, (by_name[n],)) for n in CHECKED}
        q = cdm.query_df
        tables = {
            "person": q("SELECT person_id, gender_concept_id, year_of_birth, month_of_birth, day_of_birth "
                        "FROM main.person"),
            "op": q("SELECT person_id, observation_period_start_date AS os, observation_period_end_date AS oe "
                    "FROM main.observation_period"),
            "visit": q("SELECT person_id, visit_start_date AS d FROM main.visit_occurrence"),
            "cohort": q("SELECT cohort_definition_id, subject_id, cohort_start_date AS s, cohort_end_date AS e "
                        "FROM results.cohort"),
        }
        for t, (col, dcol) in large_scale.EVENT_TABLES.items():
            tables[t] = q(f"SELECT person_id, {col} AS concept_id, {dcol} AS d FROM main.{t}")
    for df in tables.values():
        for c in ("os", "oe", "d", "s", "e"):
            if c in df.columns:
                df[c] = pd.to_datetime(df[c])
    return {"path": str(path), "defs": by_name, "chars": chars, "lsc": lsc, "t": tables}


def _value(res, variable, estimate, level=None) -> str | None:
    d = res.data
    sel = (d["variable_name"] == variable) & (d["estimate_name"] == estimate)
    sel &= d["variable_level"].isna() if level is None else d["variable_level"] == level
    hit = d.loc[sel, "estimate_value"]
    assert len(hit) == 1, (variable, level, estimate, len(hit))
    return hit.iloc[0]


def _reference_features(t: dict, cohort_id: int) -> pd.DataFrame:
    """One row per cohort record, computed in pandas from the definitions."""
    c = t["cohort"][t["cohort"]["cohort_definition_id"] == cohort_id].reset_index(drop=True)
    c["rid"] = np.arange(len(c))
    p = c.merge(t["person"], left_on="subject_id", right_on="person_id", how="left")
    bm, bd = p["month_of_birth"].fillna(1), p["day_of_birth"].fillna(1)
    before_birthday = (p["s"].dt.month < bm) | ((p["s"].dt.month == bm) & (p["s"].dt.day < bd))
    p["age"] = p["s"].dt.year - p["year_of_birth"] - before_birthday.astype(int)
    p["sex"] = p["gender_concept_id"].map({8532: "Female", 8507: "Male"}).fillna("None")
    o = c.merge(t["op"], left_on="subject_id", right_on="person_id")
    o = o[(o["os"] <= o["s"]) & (o["s"] <= o["oe"])]
    o = o.assign(prior=(o["s"] - o["os"]).dt.days, future=(o["oe"] - o["s"]).dt.days)
    p = p.merge(o[["rid", "prior", "future"]], on="rid", how="left")
    v = c.merge(t["visit"], left_on="subject_id", right_on="person_id")
    dt = (v["d"] - v["s"]).dt.days
    nv = v[(dt >= -365) & (dt <= -1)].groupby("rid").size()
    p["visits"] = p["rid"].map(nv).fillna(0).astype(int)
    p["days_in_cohort"] = (p["e"] - p["s"]).dt.days + 1
    return p


@pytest.fixture(scope="module")
def lung_pg(lung, pg_url, synth_pg_schema):
    """The same site on PostgreSQL (a copy of the DuckDB file): its characteristics and its cohort table."""
    defs = collect_definitions([DEFINITIONS / "lung"])
    with connect_cdm(pg_url, cdm_schema=synth_pg_schema, write_schema="results_diag_char_pg") as cdm:
        build_cohorts(cdm, defs)
        ctx = DiagnosticContext(cdm=cdm, cdm_name="site_a", cohorts=tuple(defs))
        by_name = {d.cohort_name: d for d in defs}
        chars = {n: summarise_characteristics(ctx, (by_name[n],)) for n in CHECKED}
        cohort = cdm.query_df("SELECT cohort_definition_id, subject_id, cohort_start_date AS s, "
                              "cohort_end_date AS e FROM results_diag_char_pg.cohort")
    for c in ("s", "e"):
        cohort[c] = pd.to_datetime(cohort[c])
    return {"chars": chars, "t": {**lung["t"], "cohort": cohort}}


@pytest.mark.parametrize("name", CHECKED)
def test_characteristics_match_pandas(lung, name):
    _check_against_pandas(lung["chars"][name], lung["t"], lung["defs"][name].cohort_definition_id, name)


@pytest.mark.parametrize("name", CHECKED)
def test_characteristics_match_pandas_postgresql(lung, lung_pg, name):
    """PostgreSQL's array percentiles (and the rest) against pandas, and byte for byte against DuckDB."""
    res = lung_pg["chars"][name]
    _check_against_pandas(res, lung_pg["t"], lung["defs"][name].cohort_definition_id, name)
    pd.testing.assert_frame_equal(res.data, lung["chars"][name].data)


def _check_against_pandas(res, t: dict, cohort_id: int, name: str) -> None:
    ref = _reference_features(t, cohort_id)
    n = len(ref)
    assert n > 100
    assert _value(res, "Number records", "count") == str(n)
    assert _value(res, "Number subjects", "count") == str(ref["subject_id"].nunique())
    # sex
    for sex, k in ref["sex"].value_counts().items():
        assert _value(res, "Sex", "count", sex) == str(k)
        assert float(_value(res, "Sex", "percentage", sex)) == pytest.approx(100 * k / n)
    # age: continuous quantiles (numpy "linear" = percentile_cont), mean and sample sd
    age = ref["age"].astype(float)
    assert _value(res, "Age", "min") == str(int(age.min()))
    assert _value(res, "Age", "max") == str(int(age.max()))
    for est, q in (("q25", 0.25), ("median", 0.5), ("q75", 0.75)):
        assert float(_value(res, "Age", est)) == pytest.approx(np.quantile(age, q))
        assert float(_value(res, "Prior observation", est)) == pytest.approx(np.quantile(ref["prior"].dropna(), q))
        assert float(_value(res, "Future observation", est)) == pytest.approx(np.quantile(ref["future"].dropna(), q))
        assert float(_value(res, "Days in cohort", est)) == pytest.approx(np.quantile(ref["days_in_cohort"], q))
        assert float(_value(res, "Number visits prior year", est)) == pytest.approx(np.quantile(ref["visits"], q))
    assert float(_value(res, "Age", "mean")) == pytest.approx(age.mean())
    assert float(_value(res, "Age", "sd")) == pytest.approx(age.std(ddof=1))
    assert float(_value(res, "Future observation", "mean")) == pytest.approx(ref["future"].mean())
    assert _value(res, "Days in cohort", "max") == str(int(ref["days_in_cohort"].max()))
    # dates: percentile_disc is numpy's "inverted_cdf" on the ordered dates
    starts, ends = sorted(ref["s"].dt.date), sorted(ref["e"].dt.date)
    for est, q in (("q25", 0.25), ("median", 0.5), ("q75", 0.75)):  # smallest x with F(x) >= q
        assert _value(res, "Cohort start date", est) == str(starts[int(np.ceil(q * n)) - 1])
        assert _value(res, "Cohort end date", est) == str(ends[int(np.ceil(q * n)) - 1])
    assert _value(res, "Cohort end date", "min") == str(ref["e"].min().date())
    # age groups: the three broad groups and the 5-year bands both add up to the records
    for var, groups in characteristics.AGE_GROUPS.items():
        total = 0
        for lo, hi in groups:
            k = int(((ref["age"] >= lo) & (ref["age"] <= hi)).sum())
            if k:
                assert _value(res, var, "count", f"{lo} to {hi}") == str(k)
            total += k
        got = res.data[(res.data["variable_name"] == var) & (res.data["estimate_name"] == "count")]
        assert got["estimate_value"].astype(int).sum() == n
        assert total + (0 if got["variable_level"].ne("None").all() else int(_value(res, var, "count", "None"))) == n
    # visits in the prior year: flag and count
    flag = int((ref["visits"] > 0).sum())
    assert flag > 0
    assert _value(res, "Any visit prior year", "count") == str(flag)
    assert float(_value(res, "Any visit prior year", "percentage")) == pytest.approx(100 * flag / n)
    assert float(_value(res, "Number visits prior year", "mean")) == pytest.approx(ref["visits"].mean())
    vis = res.data[res.data["variable_name"] == "Number visits prior year"]
    assert set(vis["additional_name"]) == {"table &&& window &&& value"}
    assert set(vis["additional_level"]) == {"visit_occurrence &&& -365 to -1 &&& count"}
    # layout
    assert res.settings["result_type"].tolist() == ["summarise_characteristics"]
    assert set(res.data["group_name"]) == {"cohort_name"} and set(res.data["group_level"]) == {name}
    assert res.data["estimate_value"].map(lambda v: v is None or isinstance(v, str)).all()


def _reference_lsc(t: dict, cohort_id: int) -> tuple[dict, int]:
    c = t["cohort"][t["cohort"]["cohort_definition_id"] == cohort_id][["subject_id", "s"]].drop_duplicates()
    den = c["subject_id"].nunique()
    out: dict[tuple[str, str, int], int] = {}
    for table in large_scale.EVENT_TABLES:
        ev = t[table][t[table]["concept_id"] != 0]
        m = c.merge(ev, left_on="subject_id", right_on="person_id")
        m["dt"] = (m["d"] - m["s"]).dt.days
        for lo, hi in large_scale.WINDOWS:
            w = m[(m["dt"] >= lo) & (m["dt"] <= hi)]
            for concept, k in w.groupby("concept_id")["subject_id"].nunique().items():
                out[(table, f"{lo} to {hi}", int(concept))] = int(k)
    return out, den


@pytest.mark.parametrize("name", CHECKED)
def test_large_scale_matches_pandas(lung, name):
    res = lung["lsc"][name]
    ref, den = _reference_lsc(lung["t"], lung["defs"][name].cohort_definition_id)
    kept = {k: v for k, v in ref.items() if v / den >= 0.01}
    dropped = {k: v for k, v in ref.items() if v / den < 0.01}
    assert dropped, "the threshold must remove something for this test to mean anything"
    tables = dict(zip(res.settings["result_id"], res.settings["table_name"], strict=True))
    d = res.data
    counts = d[d["estimate_name"] == "count"]
    got = {(tables[r], w, int(c)): int(v) for r, w, c, v in
           zip(counts["result_id"], counts["variable_level"], counts["additional_level"], counts["estimate_value"],
               strict=True)}
    assert got == kept
    assert {k[1] for k in got} == {f"{lo} to {hi}" for lo, hi in large_scale.WINDOWS}
    pcts = d[d["estimate_name"] == "percentage"]
    for r, w, c, v in zip(pcts["result_id"], pcts["variable_level"], pcts["additional_level"],
                          pcts["estimate_value"], strict=True):
        assert v == f"{100 * kept[(tables[r], w, int(c))] / den:.2f}"
        assert float(v) >= 1.0
    assert res.settings["table_name"].tolist() == list(large_scale.EVENT_TABLES)
    assert set(res.settings["type"]) == {"event"} and set(res.settings["analysis"]) == {"standard"}
    assert set(d["additional_name"]) == {"concept_id"}
    assert not d["variable_name"].isna().any()


def test_empty_cohort_gives_zero_counts_and_all_settings(lung):
    ghost = dataclasses.replace(lung["defs"]["sclc"], cohort_definition_id=999, cohort_name="ghost")
    with connect_cdm(lung["path"], write_schema="results") as cdm:
        ctx = DiagnosticContext(cdm=cdm, cdm_name="site_a", cohorts=(ghost,))
        ch = summarise_characteristics(ctx, (ghost,))
        ls = summarise_large_scale_characteristics(ctx, (ghost,))
    assert sorted(zip(ch.data["variable_name"], ch.data["estimate_value"], strict=True)) == [
        ("Number records", "0"), ("Number subjects", "0")]
    assert len(ch.settings) == 1
    assert len(ls.data) == 0 and len(ls.settings) == len(large_scale.EVENT_TABLES)
    assert [d.name for d in characteristics.DIAGNOSTICS + large_scale.DIAGNOSTICS] == [
        "summarise_characteristics", "summarise_large_scale_characteristics"]


@pytest.mark.parametrize("backend", ["duckdb", "postgresql"])
def test_entries_of_absent_persons_outside_observation_and_in_a_second_period(lung, lung_pg, pg_url,
                                                                            synth_pg_schema, backend):
    """Hand-built entries: a subject with no ``person`` row, an entry before its person's only
    observation period, and one entry in each of a person's two periods. The subjects' person rows
    and periods are read into tables of their own before they meet the entries (session 16):
    each entry must still find the period holding its date, and none where there is none."""
    url, cdm_schema, write = ((lung["path"], "main", "results") if backend == "duckdb"
                              else (pg_url, synth_pg_schema, "results_diag_char_pg"))
    ghost = dataclasses.replace(lung["defs"]["sclc"], cohort_definition_id=998, cohort_name="hand_built")
    with connect_cdm(url, cdm_schema=cdm_schema, write_schema=write) as cdm:
        q = cdm.query_df
        two = q(f"SELECT person_id, MIN(observation_period_start_date) AS a1, MIN(observation_period_end_date) AS b1, "
                f"MAX(observation_period_start_date) AS a2, MAX(observation_period_end_date) AS b2 "
                f"FROM {cdm_schema}.observation_period GROUP BY person_id HAVING COUNT(*) = 2 "
                f"AND MIN(observation_period_end_date) - MIN(observation_period_start_date) > 30 "
                f"AND MAX(observation_period_end_date) - MAX(observation_period_start_date) > 30 "
                f"ORDER BY person_id LIMIT 1").iloc[0]  # both periods long enough to hold day 10 / day 20
        one = q(f"SELECT person_id, MIN(observation_period_start_date) AS a FROM {cdm_schema}.observation_period "
                f"GROUP BY person_id HAVING COUNT(*) = 1 ORDER BY person_id LIMIT 1").iloc[0]
        absent = int(q(f"SELECT MAX(person_id) + 1000 AS x FROM {cdm_schema}.person").iloc[0]["x"])
        genders = q(f"SELECT person_id, gender_concept_id FROM {cdm_schema}.person "
                    f"WHERE person_id IN ({int(two['person_id'])}, {int(one['person_id'])})")
        sex_of = {8532: "female", 8507: "male"}
        by_person = {int(p): sex_of.get(int(g), "none") for p, g in genders.itertuples(index=False)}
        a1, b1, a2, b2 = (pd.Timestamp(two[k]).date() for k in ("a1", "b1", "a2", "b2"))
        a = pd.Timestamp(one["a"]).date()
        day = pd.Timedelta(days=1)
        entries = [(int(two["person_id"]), a1 + 10 * day), (int(two["person_id"]), a2 + 20 * day),
                   (int(one["person_id"]), a - 5 * day), (absent, a)]
        values = ", ".join(f"(998, {s}, DATE '{d}', DATE '{d}')" for s, d in entries)
        cdm.execute_all([f"INSERT INTO {write}.cohort (cohort_definition_id, subject_id, cohort_start_date, "
                         f"cohort_end_date) VALUES {values}"])
        try:
            ctx = DiagnosticContext(cdm=cdm, cdm_name="site_a", cohorts=(ghost,))
            r = characteristics.feature_frame(ctx, (998,)).iloc[0]
        finally:
            cdm.execute_all([f"DELETE FROM {write}.cohort WHERE cohort_definition_id = 998"])
    assert (int(r["n_records"]), int(r["n_subjects"])) == (4, 3)
    assert (int(r["prior_obs_min"]), int(r["prior_obs_max"])) == (10, 20)  # the entry outside observation has none
    futures = sorted([(b1 - (a1 + 10 * day)).days, (b2 - (a2 + 20 * day)).days])
    assert (int(r["future_obs_min"]), int(r["future_obs_max"])) == tuple(futures)
    expected_sex = {"female": 0, "male": 0, "none": 1}  # the absent person: no sex, no age
    for pid in (int(two["person_id"]), int(two["person_id"]), int(one["person_id"])):  # per record
        expected_sex[by_person[pid]] += 1
    assert {k: int(r[f"sex_{k}"]) for k in expected_sex} == expected_sex
    assert int(r["ag0_0_17"]) + int(r["ag0_18_64"]) + int(r["ag0_65_150"]) == 3


# ---------------------------------------------------------------- Eunomia, both backends
def test_eunomia_gi_bleed_both_backends(eunomia_cdm):
    url, schema, write = eunomia_cdm
    defs = collect_definitions([GIB])
    with connect_cdm(url, cdm_schema=schema, write_schema=write) as cdm:
        build_cohorts(cdm, defs)
        ctx = DiagnosticContext(cdm=cdm, cdm_name="eunomia", cohorts=tuple(defs))
        res = summarise_characteristics(ctx, (defs[0],))
        lsc = summarise_large_scale_characteristics(ctx, (defs[0],))
        cid, ct = defs[0].cohort_definition_id, f"{write}.cohort"
        sex = cdm.query_df(
            f"SELECT p.gender_concept_id AS g, COUNT(*) AS n FROM {ct} c JOIN {schema}.person p "
            f"ON p.person_id = c.subject_id WHERE c.cohort_definition_id = {cid} GROUP BY p.gender_concept_id")
        # age as the integer part of (yyyymmdd(index) - yyyymmdd(birth)) / 10000
        age_mean = cdm.scalar(
            f"SELECT AVG(FLOOR(((EXTRACT(YEAR FROM c.cohort_start_date) * 10000 + EXTRACT(MONTH FROM "
            f"c.cohort_start_date) * 100 + EXTRACT(DAY FROM c.cohort_start_date)) - (p.year_of_birth * 10000 "
            f"+ COALESCE(p.month_of_birth, 1) * 100 + COALESCE(p.day_of_birth, 1))) / 10000.0)) "
            f"FROM {ct} c JOIN {schema}.person p ON p.person_id = c.subject_id WHERE c.cohort_definition_id = {cid}")
        gib_window0 = cdm.scalar(
            f"SELECT COUNT(DISTINCT c.subject_id) FROM {ct} c JOIN {schema}.condition_occurrence o "
            f"ON o.person_id = c.subject_id AND o.condition_start_date = c.cohort_start_date "
            f"WHERE c.cohort_definition_id = {cid} AND o.condition_concept_id = 192671")
    names = {8507: "Male", 8532: "Female"}
    for g, n in zip(sex["g"], sex["n"], strict=True):
        assert _value(res, "Sex", "count", names[int(g)]) == str(int(n))
    assert sum(int(n) for n in sex["n"]) == int(_value(res, "Number records", "count")) > 400
    assert float(_value(res, "Age", "mean")) == pytest.approx(float(age_mean), rel=1e-9)
    assert int(_value(res, "Age", "min")) >= 18  # the definition requires adults
    d = lsc.data
    hit = d[(d["additional_level"] == "192671") & (d["variable_level"] == "0 to 0") & (d["estimate_name"] == "count")]
    assert hit["estimate_value"].tolist() == [str(int(gib_window0))]
    assert hit["variable_name"].tolist() == ["Gastrointestinal hemorrhage"]


def test_eunomia_same_result_on_both_backends(eunomia_duckdb, eunomia_pg_schema, pg_url, tmp_path):
    """The SQL is portable: DuckDB and PostgreSQL give the same rows (floats to 12 digits)."""
    path = tmp_path / "eunomia.duckdb"
    shutil.copy(eunomia_duckdb, path)
    defs = collect_definitions([GIB])
    out = []
    for url, schema, write in ((str(path), "main", "results"), (pg_url, eunomia_pg_schema, "results_diag_char_x")):
        with connect_cdm(url, cdm_schema=schema, write_schema=write) as cdm:
            build_cohorts(cdm, defs)
            ctx = DiagnosticContext(cdm=cdm, cdm_name="eunomia", cohorts=tuple(defs))
            res = pd.concat([summarise_characteristics(ctx, (defs[0],)).data,
                             summarise_large_scale_characteristics(ctx, (defs[0],)).data])
        res["estimate_value"] = [v if v is None or t in ("date", "integer") else f"{float(v):.12g}"
                                 for v, t in zip(res["estimate_value"], res["estimate_type"], strict=True)]
        out.append(res.reset_index(drop=True))
    assert len(out[0]) > 100
    pd.testing.assert_frame_equal(out[0], out[1])


@pytest.mark.parametrize("size, kept", [(100, True), (101, False)])
def test_large_scale_threshold_boundary(lung, size, kept):
    """A concept in exactly 1 of 100 subjects (1.00%) is kept; 1 of 101 (0.99%) is dropped."""
    t = lung["t"]
    cond = t["condition_occurrence"]
    concept = int(cond["concept_id"].value_counts().index[-1])  # a rare concept
    first = cond[cond["concept_id"] == concept].iloc[0]
    others = sorted(set(t["op"]["person_id"]) - set(cond.loc[cond["concept_id"] == concept, "person_id"]))
    rows = [(int(first["person_id"]), first["d"].date())]
    op = t["op"].drop_duplicates("person_id").set_index("person_id")
    rows += [(int(p), op.loc[p, "os"].date()) for p in others[: size - 1]]
    values = ", ".join(f"(998, {p}, DATE '{d}', DATE '{d}')" for p, d in rows)
    ghost = dataclasses.replace(lung["defs"]["sclc"], cohort_definition_id=998, cohort_name="boundary")
    with connect_cdm(lung["path"], write_schema="results") as cdm:
        with cdm.transaction() as script:
            script.execute("DELETE FROM results.cohort WHERE cohort_definition_id = 998")
            script.execute(f"INSERT INTO results.cohort VALUES {values}")
        try:
            res = summarise_large_scale_characteristics(DiagnosticContext(cdm, "site_a", (ghost,)), (ghost,))
        finally:
            with cdm.transaction() as script:
                script.execute("DELETE FROM results.cohort WHERE cohort_definition_id = 998")
    d = res.data
    hit = d[(d["result_id"] == 1) & (d["additional_level"] == str(concept)) & (d["variable_level"] == "0 to 0")]
    if kept:
        assert sorted(hit["estimate_value"]) == ["1", "1.00"]
    else:
        assert hit.empty
