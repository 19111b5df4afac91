"""A hand-built CDM of edge-case patients for the stage I-II SCLC cohort and study.

Each patient differs from a baseline by one thing at a rule's boundary; whether they belong
to the Circe cohort and to the study (which adds the protocol's exact age rule) is written
down here, from the definition's text, before anything runs:

* primary event: first SCLC condition ever, with >= 365 days of prior observation;
* "Age >= 18" (Circe: year of index minus year of birth);
* no malignancy other than skin or lung on any day before index (outside observation too);
* stage I/II group, or TNM M0 and ((N0 and T1-T3) or (N1 and T1-T2)), from 30 days before
  to 60 days after index;
* the study: at least 18 in completed years on the diagnosis date (birth month/day, else 1);
  stage II when a stage II group is recorded, else II when T3 or N1 is, else I.

The vocabulary is the synthetic generator's (public concept ids); all of its patients are
deleted first.
"""

from __future__ import annotations

import shutil
from datetime import date, timedelta

import duckdb
import pytest

from site_agent.cdm import connect_cdm
from site_agent.cohorts import build_cohorts, collect_definitions
from tests.conftest import DEFINITIONS

INDEX = date(2020, 6, 15)
SCLC, BREAST, SKIN_BCC = 4110591, 4112853, 4112752
STAGE_1, STAGE_2, STAGE_3 = 1635758, 1635217, 1634596
T1, T2, T3, N0, N1, M0 = 1633883, 1634651, 1635556, 1634070, 1633651, 1634757
EHR = 32817

# id: (description, changes from baseline, in Circe cohort, in study, study stage)
PATIENTS = {
    1: ("baseline: born 1950-06-01, stage I group on index", {}, True, True, "I"),
    2: ("18th birthday the day after index (Circe year age 18)", {"birth": (2002, 6, 16)}, True, False, None),
    3: ("18th birthday on the index date", {"birth": (2002, 6, 15)}, True, True, "I"),
    4: ("Circe age 17 (born 2003-01-01)", {"birth": (2003, 1, 1)}, False, False, None),
    5: ("born 2002, month and day unknown: imputed 1 January -> 18", {"birth": (2002, None, None)}, True, True, "I"),
    6: ("prior observation exactly 365 days", {"obs_start": INDEX - timedelta(days=365)}, True, True, "I"),
    7: ("prior observation 364 days", {"obs_start": INDEX - timedelta(days=364)}, False, False, None),
    8: ("stage group 30 days before index", {"stage": [(STAGE_1, -30)]}, True, True, "I"),
    9: ("stage group 31 days before index", {"stage": [(STAGE_1, -31)]}, False, False, None),
    10: ("stage group 60 days after index", {"stage": [(STAGE_2, 60)]}, True, True, "II"),
    11: ("stage group 61 days after index", {"stage": [(STAGE_1, 61)]}, False, False, None),
    12: ("no group; T3 N0 M0", {"stage": [(T3, 0), (N0, 0), (M0, 0)]}, True, True, "II"),
    13: ("no group; T3 N1 M0 (stage III)", {"stage": [(T3, 0), (N1, 0), (M0, 0)]}, False, False, None),
    14: ("no group; T2 N1 M0", {"stage": [(T2, 0), (N1, 0), (M0, 0)]}, True, True, "II"),
    15: ("no group; T1 N0 without M0", {"stage": [(T1, 0), (N0, 0)]}, False, False, None),
    16: ("stage III group only", {"stage": [(STAGE_3, 0)]}, False, False, None),
    17: ("breast cancer two years before", {"prior": [(BREAST, date(2018, 6, 1))]}, False, False, None),
    18: ("basal cell skin cancer before (allowed)", {"prior": [(SKIN_BCC, date(2018, 6, 1))]}, True, True, "I"),
    19: ("breast cancer on the index date (window ends the day before)", {"prior": [(BREAST, INDEX)]},
         True, True, "I"),
    20: ("breast cancer before the observation period", {"prior": [(BREAST, date(2010, 1, 1))]},
         False, False, None),
    21: ("staging only around a second, later SCLC record",
         {"second_sclc": date(2021, 1, 1), "stage": [(STAGE_1, 200)]}, False, False, None),
    22: ("stage II group and T3 N1 M0", {"stage": [(STAGE_2, 0), (T3, 0), (N1, 0), (M0, 0)]}, True, True, "II"),
}
CLINICAL = ("person", "observation_period", "condition_occurrence", "measurement", "drug_exposure",
            "procedure_occurrence", "death", "visit_occurrence", "visit_detail", "observation", "condition_era",
            "drug_era", "dose_era", "device_exposure", "note", "note_nlp", "specimen", "episode", "episode_event",
            "payer_plan_period", "cost", "fact_relationship", "cohort")


def _write(con: duckdb.DuckDBPyConnection) -> None:
    for t in CLINICAL:
        con.execute(f"DELETE FROM main.{t}")
    ids = {"co": 0, "m": 0}

    def condition(pid: int, concept: int, day: date) -> None:
        ids["co"] += 1
        con.execute("INSERT INTO main.condition_occurrence (condition_occurrence_id, person_id, condition_concept_id, "
                    "condition_start_date, condition_type_concept_id) VALUES (?, ?, ?, ?, ?)",
                    [ids["co"], pid, concept, day, EHR])

    for pid, (_, ch, *_) in PATIENTS.items():
        y, m, d = ch.get("birth", (1950, 6, 1))
        con.execute("INSERT INTO main.person (person_id, gender_concept_id, year_of_birth, month_of_birth, "
                    "day_of_birth, race_concept_id, ethnicity_concept_id) VALUES (?, 8507, ?, ?, ?, 0, 0)",
                    [pid, y, m, d])
        con.execute("INSERT INTO main.observation_period (observation_period_id, person_id, "
                    "observation_period_start_date, observation_period_end_date, period_type_concept_id) "
                    "VALUES (?, ?, ?, ?, ?)", [pid, pid, ch.get("obs_start", date(2015, 1, 1)), date(2023, 12, 31),
                                               EHR])
        condition(pid, SCLC, INDEX)
        if "second_sclc" in ch:
            condition(pid, SCLC, ch["second_sclc"])
        for concept, day in ch.get("prior", []):
            condition(pid, concept, day)
        for concept, offset in ch.get("stage", [(STAGE_1, 0)]):
            ids["m"] += 1
            con.execute("INSERT INTO main.measurement (measurement_id, person_id, measurement_concept_id, "
                        "measurement_date, measurement_type_concept_id) VALUES (?, ?, ?, ?, ?)",
                        [ids["m"], pid, concept, INDEX + timedelta(days=offset), EHR])


@pytest.fixture(scope="module")
def edge_duckdb(synth_site, tmp_path_factory):
    path = tmp_path_factory.mktemp("edge") / "edge.duckdb"
    shutil.copy(synth_site.out, path)
    con = duckdb.connect(str(path))
    try:
        _write(con)
    finally:
        con.close()
    return path


@pytest.fixture(params=["duckdb", "postgresql"])
def edge_cdm(request, edge_duckdb):
    """connect_cdm arguments for the hand-built CDM on each backend."""
    if request.param == "duckdb":
        return {"cdm": str(edge_duckdb)}
    from site_agent.cdm.transfer import copy_duckdb_to_postgres

    url = request.getfixturevalue("pg_url")
    copy_duckdb_to_postgres(edge_duckdb, url, "edge_cdm")
    return {"cdm": url, "cdm_schema": "edge_cdm", "write_schema": "edge_results"}


def test_cohort_membership_of_every_edge_case(edge_cdm):
    defs = {d.cohort_name: d for d in collect_definitions([DEFINITIONS / "lung"])}
    with connect_cdm(**edge_cdm) as cdm:
        build_cohorts(cdm, [defs["sclc_stage_i_ii"]])
        got = set(cdm.query_df(f"SELECT subject_id FROM {cdm.write_schema}.cohort WHERE cohort_definition_id = "
                               f"{defs['sclc_stage_i_ii'].cohort_definition_id}")["subject_id"].astype(int))
    expected = {pid for pid, (_, _, in_cohort, *_) in PATIENTS.items() if in_cohort}
    wrong = {pid: PATIENTS[pid][0] for pid in got ^ expected}
    assert not wrong, wrong


def test_study_applies_the_exact_age_rule_and_reports_it(edge_cdm, tmp_path):
    from optima_common.results import SummarisedResult
    from site_agent.analyses.study_run import age_rule_reason, run_study, study_patients
    from site_agent.study_spec import load_study

    loaded = load_study(DEFINITIONS / "studies" / "sclc_stage_i_ii.json")
    # release everything (min cell count 1) to read the attrition; suppression is tested elsewhere
    study = loaded.model_copy(update={"spec": loaded.spec.model_copy(update={"min_cell_count": 1})})
    with connect_cdm(**edge_cdm) as cdm:
        patients, _ = study_patients(cdm, study)
        run = run_study(cdm, study, tmp_path / "out", cdm_name="edge", site_min_cell_count=1)
    expected = {pid: stage for pid, (_, _, _, in_study, stage) in PATIENTS.items() if in_study}
    got = dict(zip(patients["person_id"].astype(int), patients["stage"]))
    assert got == expected
    assert int(patients.loc[patients["person_id"] == 3, "age"].iloc[0]) == 18
    assert int(patients.loc[patients["person_id"] == 5, "age"].iloc[0]) == 18
    # the released attrition ends with the study's age rule: one person removed (patient 2)
    res = SummarisedResult.from_csv(run.results_csv)
    ids = res.settings.loc[res.settings["result_type"] == "summarise_cohort_attrition", "result_id"]
    att = res.data[res.data["result_id"].isin(ids)]
    last = att[att["strata_level"] == age_rule_reason(18)].set_index("variable_name")["estimate_value"]
    n_cohort = sum(1 for v in PATIENTS.values() if v[2])
    assert last.to_dict() == {"number_records": str(n_cohort - 1), "number_subjects": str(n_cohort - 1),
                              "excluded_records": "1", "excluded_subjects": "1"}
    assert (att["estimate_value"].astype(int) >= 0).all()
