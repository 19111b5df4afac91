"""``genomics profile --cdm``: clinical data by concept ids, on a hand-built DuckDB CDM.

Expectations are written next to each row, before running. The diagnosis is the catalog's
breast_cancer cohort (Circe: the condition must fall inside an observation period; descendants of
4112853 count); receptor status comes only from the ids in site_agent/genomics/concepts.py, so a
measurement whose NAME says "Estrogen receptor" but whose id is not in the set is ignored.
"""

from __future__ import annotations

import csv
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from site_agent.cdm import connect_cdm
from site_agent.cdm.ddl import cdm_ddl
from site_agent.genomics import concepts as K
from site_agent.genomics.cdm_clinical import read_cdm_clinical

EVIDENCE = Path(__file__).resolve().parents[1] / "cohort_definitions" / "vocab_evidence.csv"
DECOY = 2099000001  # local concept named like an ER test, not in the receptor set
CHILD = 2099000002  # a local descendant of Malignant tumor of breast

CONCEPTS = [  # concept_id, name, domain
    (4112853, "Malignant tumor of breast", "Condition"), (CHILD, "Invasive carcinoma of left breast", "Condition"),
    (201826, "Type 2 diabetes mellitus", "Condition"),
    (3004390, "Estrogen receptor [Interpretation] in Tissue", "Measurement"),
    (3041343, "Estrogen receptor Ag [Presence] in Tissue by Immune stain", "Measurement"),
    (3041608, "Progesterone receptor Ag [Presence] in Tissue by Immune stain", "Measurement"),
    (43055014, "HER2 Ag [Presence] in Tissue by Immunoassay", "Measurement"),
    (DECOY, "Estrogen receptor status (local lab code)", "Measurement"),
    (45884084, "Positive", "Meas Value"), (45878583, "Negative", "Meas Value"),
    (9191, "Positive", "Meas Value"), (9189, "Negative", "Meas Value"),
]
PERSONS = [  # person_id, gender, year_of_birth, race, ethnicity
    (1, 8532, 1960, 8516, 38003564),  # female, black or african american, not hispanic
    (2, 8532, 1950, 8527, 38003563),  # female, white, hispanic
    (3, 8507, 1970, 0, 0),            # male, race/ethnicity unknown
    (4, 8532, 1980, 8515, 0),         # asian
]
CONDITIONS = [  # id, person, concept, date
    (1, 1, 4112853, "2015-03-01"), (2, 1, 4112853, "2012-06-01"),  # first diagnosis 2012 -> age 52
    (3, 2, 201826, "2001-01-01"), (4, 2, CHILD, "2018-01-01"),       # descendant -> age 68
    (5, 3, 201826, "2010-01-01"),                                    # no breast cancer -> age unknown
    (6, 4, 4112853, "2005-01-01"),  # before person 4's observation period: not in the cohort -> unknown
]
MEASUREMENTS = [  # id, person, concept, date, value_as_concept_id, value_source_value
    (1, 1, 3004390, "2012-06-02", 45884084, None),   # ER positive ...
    (2, 1, 3041343, "2013-01-01", 9189, None),       # ... then ER negative: the latest wins -> negative
    (3, 1, DECOY, "2014-01-01", 45884084, None),     # decoy, later and positive: ignored
    (4, 2, 3041343, "2018-01-02", 9191, None),       # ER positive (SNOMED value)
    (5, 2, 43055014, "2018-01-02", 45878583, None),  # HER2 negative
    (6, 2, 3041608, "2018-01-02", 0, "positive"),    # PR: no value concept -> unknown (text not read)
    (7, 3, DECOY, "2011-01-01", 45884084, None),     # only a decoy: ER unknown, "no measurement" note
]


def _cdm(path: Path) -> str:
    con = duckdb.connect(str(path))
    for s in cdm_ddl("duckdb", "5.4", "main"):
        con.execute(s)
    con.executemany("INSERT INTO concept VALUES (?, ?, ?, 'X', 'X', 'S', ?, DATE '1970-01-01', DATE '2099-12-31', NULL)",
                    [(c, n, d, str(c)) for c, n, d in CONCEPTS])
    con.executemany("INSERT INTO concept_ancestor VALUES (?, ?, 0, 0)", [(c, c) for c, _, _ in CONCEPTS])
    con.execute(f"INSERT INTO concept_ancestor VALUES (4112853, {CHILD}, 1, 1)")
    con.executemany("INSERT INTO person (person_id, gender_concept_id, year_of_birth, race_concept_id, "
                    "ethnicity_concept_id) VALUES (?, ?, ?, ?, ?)", PERSONS)
    con.executemany("INSERT INTO observation_period VALUES (?, ?, ?, ?, 32880)",
                    [(p, p, "2000-01-01" if p != 4 else "2010-01-01", "2020-12-31") for p, *_ in PERSONS])
    con.executemany("INSERT INTO condition_occurrence (condition_occurrence_id, person_id, condition_concept_id, "
                    "condition_start_date, condition_type_concept_id) VALUES (?, ?, ?, ?, 32817)", CONDITIONS)
    con.executemany("INSERT INTO measurement (measurement_id, person_id, measurement_concept_id, measurement_date, "
                    "measurement_type_concept_id, value_as_concept_id, value_source_value) "
                    "VALUES (?, ?, ?, ?, 32817, ?, ?)", MEASUREMENTS)
    con.close()
    return f"duckdb:///{path}"


def test_clinical_frame_by_concept_ids(tmp_path):
    with connect_cdm(_cdm(tmp_path / "cdm.duckdb"), write_schema="results") as cdm:
        clin, notes = read_cdm_clinical(cdm, pd.Index([1, 2, 3, 4]))
    assert clin.loc[1, "age_at_diagnosis"] == 52 and clin.loc[2, "age_at_diagnosis"] == 68
    assert np.isnan(clin.loc[3, "age_at_diagnosis"]) and np.isnan(clin.loc[4, "age_at_diagnosis"])
    assert list(clin.loc[1, ["er_status", "pr_status", "her2_status"]]) == ["negative", "unknown", "unknown"]
    assert list(clin.loc[2, ["er_status", "pr_status", "her2_status"]]) == ["positive", "unknown", "negative"]
    assert list(clin.loc[3, ["er_status", "pr_status", "her2_status"]]) == ["unknown"] * 3
    assert list(clin["sex"]) == ["female", "female", "male", "female"]
    assert list(clin["race"]) == ["black or african american", "white", "unknown", "asian"]
    assert list(clin["ethnicity"]) == ["not hispanic or latino", "hispanic or latino", "unknown", "unknown"]
    receptor = [n for n in notes if "ER/PR/HER2" in n]
    assert len(receptor) == 1 and receptor[0].endswith(": 2 (3, 4)")  # person 3 has only the decoy
    assert next(n for n in notes if "breast_cancer cohort" in n).endswith(": 2 (3, 4)")


def test_profile_through_the_specimen_linkage(tmp_path):
    url = _cdm(tmp_path / "cdm.duckdb")
    con = duckdb.connect(url.removeprefix("duckdb:///"))
    con.execute("INSERT INTO specimen (specimen_id, person_id, specimen_concept_id, specimen_type_concept_id, "
                "specimen_date, specimen_source_id, specimen_source_value) VALUES "
                "(1, 1, 0, 32817, DATE '2012-06-01', 'TCGA-AA-0001', NULL), "
                "(2, 2, 0, 32817, DATE '2018-01-01', NULL, 'TCGA-AA-0002'), "
                "(3, 3, 0, 32817, DATE '2011-01-01', 'TCGA-AA-0003', NULL)")
    con.close()
    maf = tmp_path / "m.maf"
    maf.write_text("Hugo_Symbol\tVariant_Classification\tTumor_Sample_Barcode\tHGVSp_Short\n"
                   "TP53\tMissense_Mutation\tTCGA-AA-0001-01A-11D-A000-09\tp.R175H\n"
                   "TP53\tSilent\tTCGA-AA-0002-01A-11D-A000-09\tp.R72R\n"
                   "TP53\tMissense_Mutation\tTCGA-AA-0009-01A-11D-A000-09\tp.R248Q\n")
    from site_agent.genomics.profile import run_profile

    run = run_profile([maf], None, "cdm", cdm_url=url, cdm_name="hand", min_cell_count=1)
    assert run.accounting["used"] == 2 and run.accounting["skipped"] == {"sample not linked": 1}
    d = run.raw.data
    n = d[(d["result_id"] == 1) & (d["variable_name"] == "number subjects")]["estimate_value"].iat[0]
    tp53 = d[(d["result_id"] == 1) & (d["variable_level"] == "TP53") & (d["estimate_name"] == "count")]
    assert n == "3" and tp53["estimate_value"].iat[0] == "1"  # persons 1-3 linked, one non-silent TP53
    assert any("ER/PR/HER2" in line and line.endswith(": 1 (3)") for line in run.notes)


def test_every_id_has_an_evidence_row():
    with EVIDENCE.open(newline="", encoding="utf-8") as fh:
        rows = {int(r["concept_id"]): r for r in csv.DictReader(fh)}
    for cid in K.all_ids():
        assert cid in rows, f"{cid} has no row in vocab_evidence.csv"
        assert rows[cid]["evidence"].strip() and rows[cid]["strength"] in ("STRONG", "MODERATE", "WEAK")
    assert rows[3004390]["concept_name"] == "Estrogen receptor [Interpretation] in Tissue"
    assert rows[45884084]["concept_code"] == "LA6576-8" and rows[45878583]["concept_code"] == "LA6577-6"


def test_synthetic_cdm_has_no_receptor_measurements_and_says_so(tmp_path):
    """The generator writes no ER/PR/HER2 measurements (site_agent/cdm/synth writes none), so every
    person's receptor status is unknown and one note line counts all of them."""
    from site_agent.cdm.synth import generate_site

    db = tmp_path / "s.duckdb"
    generate_site(db, persons=600, site="east", profile="oncology", seed=3)
    con = duckdb.connect(str(db), read_only=True)
    persons = pd.Index([r[0] for r in con.execute("SELECT person_id FROM main.person ORDER BY person_id "
                                                    "LIMIT 50").fetchall()])
    con.close()
    with connect_cdm(f"duckdb:///{db}", write_schema="results") as cdm:
        clin, notes = read_cdm_clinical(cdm, persons)
    assert len(clin) == 50 and (clin[["er_status", "pr_status", "her2_status"]] == "unknown").all().all()
    receptor = [n for n in notes if "ER/PR/HER2" in n]
    assert len(receptor) == 1 and ": 50 (" in receptor[0]
    assert set(clin["sex"]) <= {"female", "male"}  # the generator writes only 8532/8507
