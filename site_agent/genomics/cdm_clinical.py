"""Age at diagnosis, sex, race, ethnicity and ER/PR/HER2 status from the site's OMOP CDM.

One aggregate query per item, by concept names (so it works with any vocabulary load that carries
SNOMED/LOINC names): the diagnosis is the earliest condition whose concept name speaks of a
malignant breast neoplasm; a receptor status is the latest measurement whose concept name names the
receptor, read from its value concept ("positive"/"negative" in the name) or, failing that, from
``value_source_value``. Persons without either are "unknown".
"""

from __future__ import annotations

import pandas as pd

from site_agent.genomics.readers import normalise_clinical

RECEPTORS = {"er_status": ("%estrogen receptor%", "%oestrogen receptor%"),
             "pr_status": ("%progesterone receptor%", "%progesterone receptor%"),
             "her2_status": ("%her2%", "%erbb2%")}


def read_cdm_clinical(cdm, persons: pd.Index) -> pd.DataFrame:
    c, v = cdm.cdm_schema, cdm.vocab_schema
    demo = cdm.query_df(
        f"SELECT p.person_id, p.year_of_birth, LOWER(g.concept_name) AS sex, LOWER(r.concept_name) AS race, "
        f"LOWER(e.concept_name) AS ethnicity, dx.first_year "
        f"FROM {c}.person p "
        f"LEFT JOIN {v}.concept g ON g.concept_id = p.gender_concept_id "
        f"LEFT JOIN {v}.concept r ON r.concept_id = p.race_concept_id "
        f"LEFT JOIN {v}.concept e ON e.concept_id = p.ethnicity_concept_id "
        f"LEFT JOIN (SELECT co.person_id, MIN(EXTRACT(YEAR FROM co.condition_start_date)) AS first_year "
        f"           FROM {c}.condition_occurrence co JOIN {v}.concept k ON k.concept_id = co.condition_concept_id "
        f"           WHERE LOWER(k.concept_name) LIKE '%breast%' AND (LOWER(k.concept_name) LIKE '%malignant%' "
        f"             OR LOWER(k.concept_name) LIKE '%carcinoma%' OR LOWER(k.concept_name) LIKE '%cancer%') "
        f"           GROUP BY co.person_id) dx ON dx.person_id = p.person_id")
    out = demo.assign(age_at_diagnosis=pd.to_numeric(demo["first_year"]) - pd.to_numeric(demo["year_of_birth"]))
    for col, (a, b) in RECEPTORS.items():
        m = cdm.query_df(
            f"SELECT person_id, status FROM (SELECT m.person_id, "
            f"  CASE WHEN LOWER(COALESCE(val.concept_name, m.value_source_value, '')) LIKE '%negative%' THEN 'negative' "
            f"       WHEN LOWER(COALESCE(val.concept_name, m.value_source_value, '')) LIKE '%positive%' THEN 'positive' "
            f"       ELSE 'unknown' END AS status, "
            f"  ROW_NUMBER() OVER (PARTITION BY m.person_id ORDER BY m.measurement_date DESC, m.measurement_id DESC) AS k "
            f"  FROM {c}.measurement m JOIN {v}.concept q ON q.concept_id = m.measurement_concept_id "
            f"  LEFT JOIN {v}.concept val ON val.concept_id = m.value_as_concept_id "
            f"  WHERE LOWER(q.concept_name) LIKE '{a}' OR LOWER(q.concept_name) LIKE '{b}') x WHERE k = 1")
        out = out.merge(m.rename(columns={"status": col}), on="person_id", how="left")
    out = out[out["person_id"].isin(persons)]
    return normalise_clinical(out.drop(columns=["year_of_birth", "first_year"]), f"CDM {cdm.display_url}")


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
