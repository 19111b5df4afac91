"""Cross-result disclosure control, and an audit of a real release by subtraction."""

from __future__ import annotations

import shutil

import pandas as pd

from optima_common.results import SummarisedResult
from site_agent.cdm import connect_cdm
from site_agent.cohorts import collect_definitions
from site_agent.diagnostics.runner import run_diagnostics
from site_agent.disclosure import blank_linked, withhold_nested_cohorts
from site_agent.suppression import suppress
from tests.conftest import DEFINITIONS

PAIR = "cohort_name_reference &&& cohort_name_comparator"


def row(rid, group_name, group_level, variable, value, estimate="count", strata=("overall", "overall"),
        additional=("overall", "overall")):
    return {"result_id": rid, "cdm_name": "x", "group_name": group_name, "group_level": group_level,
            "strata_name": strata[0], "strata_level": strata[1], "variable_name": variable,
            "estimate_name": estimate, "estimate_type": "integer", "estimate_value": str(value),
            "additional_name": additional[0], "additional_level": additional[1]}


def settings(rid, rt):
    return {"result_id": rid, "result_type": rt, "package_name": "p", "package_version": "1"}


def make(rows, types):
    return SummarisedResult.from_records(rows, [settings(i, t) for i, t in types.items()])


def overlap_rows(rid, a, b, only_a, both, only_b):
    return [row(rid, PAIR, f"{a} &&& {b}", "Only in reference cohort", only_a),
            row(rid, PAIR, f"{a} &&& {b}", "In both cohorts", both),
            row(rid, PAIR, f"{a} &&& {b}", "Only in comparator cohort", only_b)]


def test_nested_cohort_is_withheld_everywhere():
    res = make([
        *overlap_rows(1, "broad", "narrow", 3, 97, 0),
        *overlap_rows(1, "broad", "other", 50, 50, 40),
        row(2, "cohort_name", "broad", "Number subjects", 100),
        row(2, "cohort_name", "narrow", "Number subjects", 97),
        row(3, "cohort_name &&& codelist_name", "narrow &&& SCLC", "overall", 120, "record_count"),
        row(4, "denominator_cohort_name &&& outcome_cohort_name", "denominator_cohort_1 &&& narrow", "Outcome", 40,
            "outcome_count"),
    ], {1: "summarise_cohort_overlap", 2: "summarise_cohort_count", 3: "code_use", 4: "incidence"})
    out, withheld = withhold_nested_cohorts(res, 5)
    assert withheld == ["narrow"]
    d = out.data
    about_narrow = d["group_level"].str.contains("narrow")
    assert (d.loc[about_narrow, "estimate_value"] == "-").all()
    assert (d.loc[~about_narrow, "estimate_value"] != "-").all()
    # not nested (both sides have persons of their own): nothing withheld
    _, none = withhold_nested_cohorts(make(overlap_rows(1, "a", "b", 3, 50, 2), {1: "summarise_cohort_overlap"}), 5)
    assert none == []


def test_pair_and_attrition_blanked_when_any_cell_suppressed():
    att = [row(3, "cohort_name", "c1", v, n, strata=("reason", r), additional=("reason_id", i))
           for i, r, v, n in [("1", "start", "number_subjects", 100), ("2", "age", "number_subjects", 97),
                              ("2", "age", "excluded_subjects", 3)]]
    res = make([
        *overlap_rows(1, "a", "b", 2, 60, 30),
        *overlap_rows(1, "a", "c", 40, 60, 30),
        row(2, PAIR, "b &&& a", "number subjects", 60),
        row(2, PAIR, "c &&& a", "number subjects", 60),
        *att,
    ], {1: "summarise_cohort_overlap", 2: "summarise_cohort_timing", 3: "summarise_cohort_attrition"})
    out = blank_linked(suppress(res, 5)).data
    ab = out["group_level"].isin(["a &&& b", "b &&& a"])
    assert (out.loc[ab, "estimate_value"] == "-").all()
    assert (out.loc[out["group_level"].isin(["a &&& c", "c &&& a"]), "estimate_value"] != "-").all()
    assert (out.loc[out["group_level"] == "c1", "estimate_value"] == "-").all()


def test_release_audit_by_subtraction(synth_site, tmp_path):
    """Audit a real release: no difference of released numbers is a small count."""
    path = tmp_path / "site.duckdb"
    shutil.copy(synth_site.out, path)
    with connect_cdm(str(path)) as cdm:
        res = run_diagnostics(cdm, collect_definitions([DEFINITIONS / "lung"]), out=None, min_cell_count=5,
                              progress=lambda m: None).result
    d, s = res.data, res.settings
    typ = d["result_id"].map(dict(zip(s["result_id"], s["result_type"])))
    num = pd.to_numeric(d["estimate_value"], errors="coerce")
    small = lambda v: 0 < v < 5
    counts = {lvl: v for lvl, v, t, var in zip(d["group_level"], num, typ, d["variable_name"])
              if t == "summarise_cohort_count" and var == "Number subjects" and pd.notna(v)}
    # nested pairs: |A| - |B| must not be a small count when B lies inside A
    ov = d[(typ == "summarise_cohort_overlap") & (d["estimate_name"] == "count")]
    for level, rows in ov.groupby("group_level"):
        a, b = level.split(" &&& ")
        only = dict(zip(rows["variable_name"], pd.to_numeric(rows["estimate_value"], errors="coerce")))
        if only.get("Only in comparator cohort") == 0 and a in counts and b in counts:
            assert not small(counts[a] - counts[b]), level
    # attrition: consecutive visible steps never differ by a small count
    att = d[(typ == "summarise_cohort_attrition") & (d["variable_name"] == "number_subjects")].copy()
    att["v"] = pd.to_numeric(att["estimate_value"], errors="coerce")
    att["step"] = att["additional_level"].astype(int)
    for _, g in att.sort_values("step").groupby("group_level"):
        diffs = g["v"].diff().abs().dropna()
        assert not any(small(x) for x in diffs), g


def _time_rows(rid, stratum, table):
    out = []
    for t, n, d, c in table:
        for est, v in (("n_risk_count", n), ("n_events_count", d), ("n_censor_count", c)):
            out.append(row(rid, "target_cohort", "t", "outcome", v, est, strata=("seq", stratum),
                           additional=("time", str(t))) | {"variable_level": "death", "estimate_type": "numeric"})
    return out


def test_risk_table_withheld_from_first_small_interval():
    from site_agent.disclosure import protect_time_tables

    table = [(0, 40, 0, 0), (182, 40, 10, 5), (365, 25, 3, 6), (730, 16, 8, 8)]  # 3 deaths at 365
    est = [row(1, "target_cohort", "t", "outcome", "0.7", "estimate", strata=("seq", "a"), additional=("time", str(t)))
           | {"variable_level": "death", "estimate_type": "numeric"} for t in (0, 182, 365, 730)]
    summ = [row(3, "target_cohort", "t", "outcome", "500", "median_survival", strata=("seq", "a"))
            | {"variable_level": "death", "estimate_type": "numeric"}]
    res = make([*est, *_time_rows(2, "a", table), *summ],
               {1: "survival_estimates", 2: "survival_events", 3: "survival_summary"})
    out = protect_time_tables(res, 5).data
    t = pd.to_numeric(out["additional_level"], errors="coerce")
    assert (out.loc[t >= 365, "estimate_value"] == "-").all()
    assert (out.loc[t < 365, "estimate_value"] != "-").all()
    assert (out.loc[out["result_id"] == 3, "estimate_value"] == "-").all()
    # the released rows never let a small count be recomputed: at-risk chain is consistent
    visible = pd.DataFrame(table[:2], columns=["t", "n", "d", "c"])
    assert all(x == 0 or x >= 5 for x in (visible["n"] - visible["d"] - visible["c"]))


def test_cumulative_horizon_increments_protected():
    from site_agent.disclosure import protect_horizons

    rows_ = [row(1, "target_cohort", "t", "death", v, "count") | {"variable_level": lvl}
             for lvl, v in [("within 3 months", 10), ("within 6 months", 12), ("within 9 months", 20),
                            ("within 12 months", 21), ("within 5 years", 40)]]
    out = protect_horizons(make(rows_, {1: "outcome_horizons"}), 5).data.set_index("variable_level")["estimate_value"]
    assert out["within 3 months"] == "10" and out["within 6 months"] == "-"  # 12 - 10 = 2
    assert out["within 9 months"] == "20" and out["within 12 months"] == "-"  # 21 - 20 = 1
    assert out["within 5 years"] == "40"


def test_release_extremes_false_drops_min_max_and_small_group_quantiles():
    from site_agent.disclosure import drop_extremes

    rows = []
    for cohort, n in (("big", 40), ("small", 7)):
        rows.append(row(1, "cohort_name", cohort, "Number subjects", n))
        for est, v in (("min", 18), ("max", 97), ("median", 60), ("q25", 50), ("mean", 61.5)):
            rows.append(row(1, "cohort_name", cohort, "Age", v, estimate=est))
    out = drop_extremes(make(rows, {1: "summarise_characteristics"}), 20).data
    kept = set(zip(out["group_level"], out["estimate_name"]))
    assert not any(e in {"min", "max"} for _, e in kept)
    assert ("big", "median") in kept and ("big", "q25") in kept and ("big", "mean") in kept
    assert ("small", "median") not in kept and ("small", "q25") not in kept and ("small", "mean") in kept


def test_html_review_page_lists_secondary_suppressions_and_their_relation(tmp_path):
    from optima_common.disclosure import protect
    from site_agent.diagnostics.html import write_html

    rows = [row(1, "cohort_name", "c1", "Number records", 40), row(1, "cohort_name", "c1", "Number subjects", 40)]
    rows.append(row(1, "cohort_name", "c1", "Any visit prior year", 38,
                    additional=("table &&& window &&& value", "visit_occurrence &&& -365 to -1 &&& flag")))
    raw = make(rows, {1: "summarise_characteristics"})
    prot = protect(raw, suppress(raw, 5), 5)  # nothing is small, but 40 - 38 = 2 persons without a visit
    sec = prot.secondary_frame()
    assert list(sec["variable_name"]) == ["Any visit prior year"]
    page = write_html(prot.result, tmp_path / "r.html", title="t", min_cell_count=5, secondary=sec).read_text()
    assert "Secondary suppressions (1)" in page and "a flag is at most the records" in page


def test_the_lp_solver_writes_nothing_on_stdout():
    """HiGHS prints a banner from C on file descriptor 1; a command's --json output must stay clean."""
    import subprocess
    import sys

    code = "from optima_common.disclosure.solve import _quiet_highs; _quiet_highs(); _quiet_highs(); print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and proc.stdout == "ok\n", proc.stdout
