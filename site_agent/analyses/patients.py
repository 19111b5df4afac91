"""The study's per-patient frame, built in SQL at the site and never released.

One row per target-cohort person (first entry): index date, end of follow-up (end of the
observation period holding the index), first death and first progression on or after
index, age at index in completed years on the index (diagnosis) date, from year, month and
day of birth (month and day imputed as 1 where the CDM lacks them, as IncidencePrevalence;
Circe's own age is year of index minus year of birth), sex and stage
(I or II from the stage concept sets; when no stage group is recorded, II if T3 or N1 is,
else I), all within 30 days before to 60 days after index as the cohort's rule.
"""

from __future__ import annotations

import pandas as pd

from site_agent.cdm.connection import CdmConnection
from site_agent.cdm.dialect import add_days, days_between
from site_agent.cohorts.concept_sets import resolve_concept_set_sql


def patient_frame(cdm: CdmConnection, *, target_id: int, death_id: int, progression_id: int,
                  stage_sets: dict[str, list[dict]]) -> pd.DataFrame:
    """Columns: person_id, index_date, time_followup, time_death, death, time_progression, progression,
    age, sex, stage (times in days from index)."""
    ct, s, dia = f"{cdm.write_schema}.cohort", cdm.cdm_schema, cdm.dialect

    def in_set(label: str) -> str:
        items = stage_sets.get(label)
        return f"IN ({resolve_concept_set_sql(cdm, items)})" if items else "IN (NULL)"

    lo, hi = add_days(dia, "t.index_date", -30), add_days(dia, "t.index_date", 60)
    sql = f"""
    WITH t AS (SELECT subject_id AS person_id, MIN(cohort_start_date) AS index_date FROM {ct}
               WHERE cohort_definition_id = {target_id} GROUP BY subject_id),
    fu AS (SELECT t.person_id, MAX(o.observation_period_end_date) AS fu_end FROM t
           JOIN {s}.observation_period o ON o.person_id = t.person_id
            AND t.index_date BETWEEN o.observation_period_start_date AND o.observation_period_end_date
           GROUP BY t.person_id),
    ev AS (SELECT t.person_id,
                  MIN(CASE WHEN c.cohort_definition_id = {death_id} THEN c.cohort_start_date END) AS death_date,
                  MIN(CASE WHEN c.cohort_definition_id = {progression_id} AND c.cohort_start_date > t.index_date
                      THEN c.cohort_start_date END) AS prog_date
           FROM t JOIN {ct} c ON c.subject_id = t.person_id AND c.cohort_start_date >= t.index_date
            AND c.cohort_definition_id IN ({death_id}, {progression_id})
           GROUP BY t.person_id),
    st AS (SELECT t.person_id,
                  MAX(CASE WHEN m.measurement_concept_id {in_set("II")} THEN 1 ELSE 0 END) AS s2,
                  MAX(CASE WHEN m.measurement_concept_id {in_set("I")} THEN 1 ELSE 0 END) AS s1,
                  MAX(CASE WHEN m.measurement_concept_id {in_set("T3")} OR m.measurement_concept_id {in_set("N1")}
                      THEN 1 ELSE 0 END) AS tnm2
           FROM t JOIN {s}.measurement m ON m.person_id = t.person_id
            AND m.measurement_date BETWEEN {lo} AND {hi}
           GROUP BY t.person_id)
    SELECT t.person_id, t.index_date, fu.fu_end, ev.death_date, ev.prog_date,
           EXTRACT(YEAR FROM t.index_date) - p.year_of_birth
             - CASE WHEN EXTRACT(MONTH FROM t.index_date) < COALESCE(p.month_of_birth, 1)
                     OR (EXTRACT(MONTH FROM t.index_date) = COALESCE(p.month_of_birth, 1)
                         AND EXTRACT(DAY FROM t.index_date) < COALESCE(p.day_of_birth, 1))
                    THEN 1 ELSE 0 END AS age,
           CASE p.gender_concept_id WHEN 8507 THEN 'Male' WHEN 8532 THEN 'Female' ELSE 'None' END AS sex,
           CASE WHEN st.s2 = 1 THEN 'II' WHEN st.s1 = 1 THEN 'I' WHEN st.tnm2 = 1 THEN 'II' ELSE 'I' END AS stage,
           {days_between(dia, "t.index_date", "fu.fu_end")} AS time_followup,
           {days_between(dia, "t.index_date", "LEAST(COALESCE(ev.death_date, fu.fu_end), fu.fu_end)")} AS time_death,
           CASE WHEN ev.death_date IS NOT NULL AND ev.death_date <= fu.fu_end THEN 1 ELSE 0 END AS death,
           {days_between(dia, "t.index_date", "LEAST(COALESCE(ev.prog_date, fu.fu_end), fu.fu_end)")} AS time_progression,
           CASE WHEN ev.prog_date IS NOT NULL AND ev.prog_date <= fu.fu_end THEN 1 ELSE 0 END AS progression
    FROM t JOIN fu ON fu.person_id = t.person_id
    JOIN {s}.person p ON p.person_id = t.person_id
    LEFT JOIN ev ON ev.person_id = t.person_id
    LEFT JOIN st ON st.person_id = t.person_id
    ORDER BY t.person_id"""
    df = cdm.query_df(sql)
    for col in ("time_followup", "time_death", "death", "time_progression", "progression", "age"):
        df[col] = pd.to_numeric(df[col]).astype("int64")
    return df
