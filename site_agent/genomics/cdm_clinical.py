"""Age at diagnosis, sex, race, ethnicity and ER/PR/HER2 status from the site's OMOP CDM, by concept ids.

* Diagnosis: the network catalog's ``breast_cancer`` cohort (built into ``<write_schema>.cohort`` by
  the same code as ``site-agent nlp metastasis``); the first cohort start per person.
* Sex, race, ethnicity: the person's gender/race/ethnicity concept ids (site_agent/genomics/concepts.py).
* ER, PR, HER2: the latest measurement whose ``measurement_concept_id`` is one of the receptor's ids,
  positive or negative by ``value_as_concept_id``; anything else (no such measurement, another value)
  is "unknown". Concept names are never matched.
"""

from __future__ import annotations

import pandas as pd

from site_agent.genomics import concepts as K
from site_agent.genomics.readers import Notes, normalise_clinical


def _receptor_sql(c: str) -> str:
    which = " ".join(f"WHEN m.measurement_concept_id IN ({K.sql_ids(ids)}) THEN '{col}'"
                     for col, ids in K.RECEPTORS.items())
    return (f"SELECT person_id, receptor, status FROM (SELECT m.person_id, CASE {which} END AS receptor, "
            f"  CASE WHEN m.value_as_concept_id IN ({K.sql_ids(K.POSITIVE)}) THEN 'positive' "
            f"       WHEN m.value_as_concept_id IN ({K.sql_ids(K.NEGATIVE)}) THEN 'negative' ELSE 'unknown' END AS status, "
            f"  ROW_NUMBER() OVER (PARTITION BY m.person_id, CASE {which} END "
            f"                     ORDER BY m.measurement_date DESC, m.measurement_id DESC) AS k "
            f"  FROM {c}.measurement m "
            f"  WHERE m.measurement_concept_id IN ({K.sql_ids(set().union(*K.RECEPTORS.values()))})) x WHERE k = 1")


def read_cdm_clinical(cdm, persons: pd.Index) -> tuple[pd.DataFrame, list[str]]:
    """(clinical frame indexed by person_id, note lines). Builds the ``breast_cancer`` cohort."""
    from site_agent.nlp.cdm_run import build_breast_cohort

    cohort_id = build_breast_cohort(cdm)
    c, w = cdm.cdm_schema, cdm.write_schema
    demo = cdm.query_df(
        f"SELECT p.person_id, p.year_of_birth, {K.sql_case('p.gender_concept_id', K.SEX)} AS sex, "
        f"{K.sql_case('p.race_concept_id', K.RACE)} AS race, "
        f"{K.sql_case('p.ethnicity_concept_id', K.ETHNICITY)} AS ethnicity, "
        f"EXTRACT(YEAR FROM dx.dx) AS first_year "
        f"FROM {c}.person p LEFT JOIN (SELECT subject_id, MIN(cohort_start_date) AS dx FROM {w}.cohort "
        f"  WHERE cohort_definition_id = {int(cohort_id)} GROUP BY subject_id) dx ON dx.subject_id = p.person_id")
    out = demo.assign(age_at_diagnosis=pd.to_numeric(demo["first_year"]) - pd.to_numeric(demo["year_of_birth"]))
    rec = cdm.query_df(_receptor_sql(c))
    wide = rec.pivot(index="person_id", columns="receptor", values="status").reindex(columns=list(K.RECEPTORS))
    out = out.merge(wide, left_on="person_id", right_index=True, how="left")
    out = out[out["person_id"].isin(persons)]
    notes = Notes()
    notes.add("CDM: persons with no ER/PR/HER2 measurement under the receptor concept ids of "
              "site_agent/genomics/concepts.py (receptor status unknown)",
              out.loc[~out["person_id"].isin(rec["person_id"]), "person_id"])
    notes.add("CDM: persons not in the breast_cancer cohort (age at diagnosis unknown)",
              out.loc[out["first_year"].isna(), "person_id"])
    clin = normalise_clinical(out.drop(columns=["year_of_birth", "first_year"]), f"CDM {cdm.display_url}")
    return clin, notes.lines


def read_cdm_linkage(cdm) -> pd.Series:
    """barcode -> person_id from the OMOP ``specimen`` table (``specimen_source_id``, else
    ``specimen_source_value``), for sites that record their sequenced samples there."""
    from optima_common.errors import GenomicsDataError

    t = cdm.query_df(f"SELECT DISTINCT COALESCE(specimen_source_id, specimen_source_value) AS barcode, person_id "
                     f"FROM {cdm.cdm_schema}.specimen "
                     f"WHERE COALESCE(specimen_source_id, specimen_source_value) IS NOT NULL")
    if t.empty:
        raise GenomicsDataError(f"CDM {cdm.display_url}: the specimen table links no sample barcode to a person",
                                hint="give --linkage FILE")
    if t["barcode"].duplicated().any():
        dup = sorted(t.loc[t["barcode"].duplicated(), "barcode"])[:5]
        raise GenomicsDataError(f"CDM specimen: barcode(s) linked to two persons: {', '.join(dup)}")
    return pd.Series(t["person_id"].astype("int64").to_numpy(), index=t["barcode"].astype(str).str.strip())
