"""Genomics across sites (pooled mutation frequencies) and clinical data read from an OMOP CDM."""

from __future__ import annotations

import datetime as dt

import duckdb
import numpy as np
import pandas as pd
import pytest

from coordinator.pooling.results import network_result
from optima_common.bundle import Provenance, ResultBundle, SuppressionRecord
from site_agent.genomics.profile import run_profile
from site_agent.genomics.synth import generate
from site_agent.study_exec import result_csv_text


def _site(root, name, n, seed):
    generate(root / name, n, seed=seed)
    run = run_profile([root / name / "mutations.maf"], root / name / "expression.tsv", root / name / "linkage.csv",
                      clinical=root / name / "clinical.csv", cdm_name=name)
    b = ResultBundle(site=name, manifest_id="m1", manifest_sha256="a" * 64, created_at=dt.datetime.now(dt.UTC),
                     provenance=Provenance(cdm_name=name, package_version="0.1.0"),
                     suppression=SuppressionRecord(min_cell_count=5, site_floor=5, method="test"),
                     results_csv=result_csv_text(run.result))
    return b, run


def test_network_pools_mutation_frequencies_with_random_effects(tmp_path):
    sites = [_site(tmp_path, "north", 300, 1), _site(tmp_path, "south", 400, 2), _site(tmp_path, "east", 250, 3)]
    net = network_result([b for b, _ in sites])
    d = net.result.data
    pooled = d[(d["cdm_name"] == "network") & (d["variable_level"] == "TP53")]
    est = dict(zip(pooled["estimate_name"], pooled["estimate_value"]))
    # textbook DerSimonian-Laird on the logit proportions, written out here
    x, n = [], []
    for _, run in sites:
        r = run.result.data
        x.append(float(r[(r["variable_level"] == "TP53") & (r["estimate_name"] == "count")
                         & (r["result_id"] == 1)]["estimate_value"].iat[0]))
        n.append(float(r[(r["variable_name"] == "number subjects") & (r["result_id"] == 1)]["estimate_value"].iat[0]))
    x, n = np.array(x), np.array(n)
    y, v = np.log(x / (n - x)), 1 / x + 1 / (n - x)
    w = 1 / v
    q = (w * (y - (w * y).sum() / w.sum()) ** 2).sum()
    tau2 = max(0.0, (q - 2) / (w.sum() - (w ** 2).sum() / w.sum()))
    ws = 1 / (v + tau2)
    mu = (ws * y).sum() / ws.sum()
    se = ws.sum() ** -0.5
    assert float(est["random_effects_percentage"]) == pytest.approx(100 / (1 + np.exp(-mu)), rel=1e-6)
    assert float(est["random_effects_95CI_lower"]) == pytest.approx(100 / (1 + np.exp(-(mu - 1.959964 * se))), rel=1e-5)
    assert float(est["tau_squared"]) == pytest.approx(tau2, abs=1e-9)
    assert int(est["meta_sites"]) == 3
    assert int(est["count"]) == int(x.sum())  # the generic pooling sums the released counts
    assert 25 < float(est["random_effects_percentage"]) < 42
    from coordinator.report.genomics import genomics_section
    from coordinator.report.sections import View

    html = genomics_section(View(net))
    assert "<h2>Genomics</h2>" in html and f"<td>{float(est['random_effects_percentage']):.1f}</td>" in html
    assert "PIK3CA H1047R" in html and "LumA" in html


def test_clinical_from_a_hand_built_cdm(tmp_path):
    """Expectations written from the rows below, before running."""
    db = tmp_path / "cdm.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE person (person_id INT, year_of_birth INT, gender_concept_id INT, race_concept_id INT, "
                "ethnicity_concept_id INT)")
    con.execute("CREATE TABLE concept (concept_id INT, concept_name VARCHAR)")
    con.execute("CREATE TABLE condition_occurrence (person_id INT, condition_concept_id INT, condition_start_date DATE)")
    con.execute("CREATE TABLE measurement (measurement_id INT, person_id INT, measurement_concept_id INT, "
                "measurement_date DATE, value_as_concept_id INT, value_source_value VARCHAR)")
    con.execute("INSERT INTO concept VALUES (8532,'FEMALE'),(8516,'Black or African American'),(8527,'White'),"
                "(38003564,'Not Hispanic or Latino'),(4112853,'Malignant tumor of breast'),(201826,'Type 2 diabetes'),"
                "(1,'Estrogen receptor [Presence] in Breast cancer specimen by Immune stain'),"
                "(2,'HER2 [Presence] in Breast cancer specimen by Immune stain'),(9191,'Positive'),(9189,'Negative')")
    con.execute("INSERT INTO person VALUES (1,1960,8532,8516,38003564),(2,1950,8532,8527,38003564),(3,1970,8532,8527,0)")
    con.execute("INSERT INTO condition_occurrence VALUES (1,4112853,'2015-03-01'),(1,4112853,'2012-06-01'),"
                "(2,201826,'2001-01-01'),(2,4112853,'2018-01-01'),(3,201826,'2010-01-01')")
    con.execute("INSERT INTO measurement VALUES (1,1,1,'2012-06-02',9191,NULL),(2,1,1,'2013-01-01',9189,NULL),"
                "(3,2,1,'2018-01-02',NULL,'ER positive (90%)'),(4,2,2,'2018-01-02',9189,NULL)")
    con.close()
    from site_agent.cdm import connect_cdm
    from site_agent.genomics.cdm_clinical import read_cdm_clinical

    with connect_cdm(f"duckdb:///{db}") as cdm:
        clin = read_cdm_clinical(cdm, pd.Index([1, 2, 3]))
    assert clin.loc[1, "age_at_diagnosis"] == 52  # 2012 - 1960, the earliest breast cancer record
    assert clin.loc[2, "age_at_diagnosis"] == 68
    assert np.isnan(clin.loc[3, "age_at_diagnosis"])  # no breast cancer condition
    assert clin.loc[1, "er_status"] == "negative"  # the latest ER measurement
    assert clin.loc[2, "er_status"] == "positive" and clin.loc[2, "her2_status"] == "negative"
    assert clin.loc[3, "er_status"] == "unknown" and clin.loc[1, "her2_status"] == "unknown"
    assert clin.loc[1, "race"] == "black or african american" and clin.loc[3, "ethnicity"] == "unknown"
    # the specimen table as the linkage, end to end through the command line
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE specimen (specimen_id INT, person_id INT, specimen_source_id VARCHAR, "
                "specimen_source_value VARCHAR)")
    con.execute("INSERT INTO specimen VALUES (1,1,'TCGA-AA-0001',NULL),(2,2,NULL,'TCGA-AA-0002'),(3,3,NULL,NULL)")
    con.close()
    maf = tmp_path / "m.maf"
    maf.write_text("Hugo_Symbol\tVariant_Classification\tTumor_Sample_Barcode\tHGVSp_Short\n"
                   "TP53\tMissense_Mutation\tTCGA-AA-0001-01A-11D-A000-09\tp.R175H\n"
                   "TP53\tSilent\tTCGA-AA-0002-01A-11D-A000-09\tp.R72R\n"
                   "TP53\tMissense_Mutation\tTCGA-AA-0009-01A-11D-A000-09\tp.R248Q\n")
    from site_agent.genomics.profile import run_profile

    run = run_profile([maf], None, "cdm", cdm_url=f"duckdb:///{db}", cdm_name="hand", min_cell_count=1)
    assert run.accounting["used"] == 2 and run.accounting["skipped"] == {"sample not linked": 1}
    d = run.raw.data
    n = d[(d["result_id"] == 1) & (d["variable_name"] == "number subjects")]["estimate_value"].iat[0]
    tp53 = d[(d["result_id"] == 1) & (d["variable_level"] == "TP53") & (d["estimate_name"] == "count")]
    assert n == "2" and tp53["estimate_value"].iat[0] == "1"  # persons 1 and 2 profiled, one non-silent TP53
