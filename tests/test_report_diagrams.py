"""Pooled cells suppressed at every site, lower bounds, and the diagrams' data (hand-built sites,
expectations written from the inputs: 13 + 11 visible + one suppressed site = 24, a lower bound)."""

from __future__ import annotations

import datetime as dt
import json
import re

import pandas as pd

from coordinator.pooling.results import network_result
from coordinator.report import diagrams as D
from coordinator.report import sections as S
from optima_common.bundle import Provenance, ResultBundle, SuppressionRecord
from optima_common.results import SummarisedResult, validate_csv

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _row(rid, cdm, group, variable, level, value, estimate="count", strata=("overall", "overall"),
         additional=("overall", "overall"), group_name="target_cohort_name"):
    return {"result_id": rid, "cdm_name": cdm, "group_name": group_name, "group_level": group,
            "strata_name": strata[0], "strata_level": strata[1], "variable_name": variable, "variable_level": level,
            "estimate_name": estimate, "estimate_type": "integer", "estimate_value": str(value),
            "additional_name": additional[0], "additional_level": additional[1]}


#: per site: pathway "lobectomy-carboplatin+etoposide", pathway "pneumonectomy" (suppressed everywhere),
#: subjects, attrition (2 steps) and an overlap pair
SITES = {"a": (13, "-", 40, (50, 40, 10), (20, 7, "-")),
         "b": (11, "-", 30, (35, 30, 5), (15, 9, 6)),
         "c": ("-", "-", 8, (9, 8, 1), ("-", "-", "-"))}


def _bundle(site: str, manifest_id: str = "m1", manifest_sha: str = "0" * 64) -> ResultBundle:
    seq, pneu, subj, (start, final, excl), (only_a, both, only_b) = SITES[site]
    rows = [_row(1, site, "sclc", "number subjects", None, subj),
            _row(1, site, "sclc", "pathway", "lobectomy-carboplatin+etoposide", seq),
            _row(1, site, "sclc", "pathway", "pneumonectomy", pneu)]
    for cohort, k in (("sclc", 1), ("death", 2)):  # death: twice the subjects
        for step, reason, n, x in ((1, "Qualifying initial records", start, 0), (2, "Age >= 18", final, excl)):
            for var, val in (("number_subjects", n), ("excluded_subjects", x)):
                val = val if val == "-" else k * val
                rows.append(_row(2, site, cohort, var, None, val, strata=("reason", reason),
                                 additional=("reason_id", str(step)), group_name="cohort_name"))
    pair = ("cohort_name_reference &&& cohort_name_comparator", "sclc &&& death")
    for var, val in (("Only in reference cohort", only_a), ("In both cohorts", both),
                     ("Only in comparator cohort", only_b)):
        rows.append(_row(3, site, pair[1], var, "Subjects", val, group_name=pair[0]))
    settings = [{"result_id": i, "result_type": t, "package_name": "p", "package_version": "1", "min_cell_count": "5"}
                for i, t in ((1, "treatment_pathways"), (2, "summarise_cohort_attrition"),
                             (3, "summarise_cohort_overlap"))]
    res = SummarisedResult.from_records(rows, settings)
    return ResultBundle(site=site, manifest_id=manifest_id, manifest_sha256=manifest_sha, created_at=NOW,
                        provenance=Provenance(cdm_name=site, package_version="0.1.0"),
                        suppression=SuppressionRecord(min_cell_count=5, site_floor=5, method="test"),
                        results_csv=res.to_csv_text())


def _net():
    return network_result([_bundle(s) for s in SITES])


def _pooled(data: pd.DataFrame, level: str) -> dict:
    d = data[(data["cdm_name"] == "network") & (data["variable_level"] == level)]
    return dict(zip(d["estimate_name"], d["estimate_value"], strict=True))


def test_a_cell_suppressed_at_every_site_is_marked_not_zero_and_survives_the_csv(tmp_path):
    net = _net()
    every = _pooled(net.result.data, "pneumonectomy")
    assert every == {"count": "-", "all_sites_suppressed": "TRUE", "suppressed_sites": "3"}
    some = _pooled(net.result.data, "lobectomy-carboplatin+etoposide")
    assert some == {"count": "24", "lower_bound": "TRUE", "suppressed_sites": "1"}
    # the CSV (omopgenerics layout) carries both marks and reads back as a summarised_result
    path = tmp_path / "results.csv"
    path.write_text(net.result.to_csv_text())
    validate_csv(path)
    back = SummarisedResult.from_csv_text(path.read_text(), source="test")
    assert _pooled(back.data, "pneumonectomy") == every
    flags = back.data[back.data["estimate_name"].isin(["all_sites_suppressed", "lower_bound"])]
    assert set(flags["estimate_type"]) == {"logical"}


def test_report_tables_show_all_sites_suppressed_and_lower_bounds():
    v = S.View(_net())
    html = S.pathways_section(v)
    row = re.search(r"<tr><td>overall</td><td>pathway</td><td>pneumonectomy</td><td>count</td>(.*?)</tr>", html).group(1)
    assert "&lt;5 at all 3 sites" in row and ">0<" not in row
    assert "&ge;24" in html
    lb = S.lower_bounds_section(v)
    assert "Pooled cells suppressed at every site (1)" in lb  # pneumonectomy only: the others are visible somewhere
    assert "<td>treatment_pathways</td><td>1</td>" in lb and "<td>summarise_cohort_overlap</td><td>0" not in lb


def _payload(div: str) -> dict:
    return json.loads(re.search(r'<script type="application/json">(.*?)</script>', div, re.DOTALL).group(1))


def test_diagram_data_keep_suppressed_cells_and_lower_bounds():
    v = S.View(_net())
    sk = _payload(D.pathways_diagram(v))
    assert sk["sites"] == ["a", "b", "c", "network"]
    seqs = {q["path"]: q for q in sk["groups"]["sclc"]["network"]["seq"]}
    assert seqs["lobectomy-carboplatin+etoposide"] | {} == {"path": "lobectomy-carboplatin+etoposide", "n": 24.0,
                                                           "t": "≥24", "k": "lb"}
    assert seqs["pneumonectomy"]["n"] is None and seqs["pneumonectomy"]["k"] == "all"
    assert sk["groups"]["sclc"]["network"]["total"]["t"] == "78"  # 40 + 30 + 8, all visible
    assert {q["path"]: q["k"] for q in sk["groups"]["sclc"]["c"]["seq"]} == {
        "lobectomy-carboplatin+etoposide": "sup", "pneumonectomy": "sup"}

    att = _payload(D.attrition_diagram(v))["groups"]["sclc"]
    assert [s["reason"] for s in att["network"]] == ["Qualifying initial records", "Age >= 18"]
    assert [s["left"]["t"] for s in att["network"]] == ["94", "78"]  # 50+35+9, 40+30+8
    assert att["network"][1]["excl"] == {"n": 16.0, "t": "16", "k": ""}  # 10 + 5 + 1
    assert [s["left"]["t"] for s in _payload(D.attrition_diagram(v))["groups"]["death"]["network"]] == ["188", "156"]

    ven = _payload(D.overlap_diagram(v))["groups"]["sclc &&& death"]
    assert ven["network"]["names"] == ["sclc", "death"]
    assert ven["network"]["a"]["t"] == "≥35" and ven["network"]["ab"]["t"] == "≥16"  # 20+15, 7+9 (c suppressed)
    assert ven["network"]["b"]["t"] == "≥6" and ven["c"]["a"]["k"] == "sup"


def test_diagram_json_cannot_end_its_script():
    div = D.embed("venn", "t", {"groups": {"</script><script>alert(1)</script>": {}}, "sites": []})
    assert div.count("</script>") == 1
