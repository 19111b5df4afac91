"""From the attacker's side: released CSVs only, every relation a reader can see, LP over all of them.

Small synthetic oncology sites with stage I-II SCLC made frequent (the generator's stage mix is
a module constant, set here before generating). The truth is the same analyses run with a
minimum cell count of 1; the released files are what the site writes with its floor of 5.
The attacker (tests/attacker.py) imports nothing of the production audit.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.attacker import narrowed
from optima_common.disclosure import check_release
from optima_common.results import SummarisedResult
from site_agent.analyses.study_run import run_study, study_tables
from site_agent.cdm import connect_cdm
from site_agent.cdm.synth import generate_site
from site_agent.cohorts import collect_definitions
from site_agent.diagnostics.runner import run_diagnostics
from site_agent.study_spec import load_study
from tests.conftest import DEFINITIONS

MIN = 5
SITES = [("attack_small", 700, 21), ("attack_mid", 1800, 22)]


def released_and_truth(cdm_path: Path, out: Path, name: str):
    study = load_study(DEFINITIONS / "studies" / "sclc_stage_i_ii.json")
    defs = collect_definitions([DEFINITIONS])
    quiet = lambda _m: None
    with connect_cdm(f"duckdb:///{cdm_path}", write_schema="results") as cdm:
        truth_d = run_diagnostics(cdm, defs, out=None, min_cell_count=1, cdm_name=name, progress=quiet).result
        rel_d = run_diagnostics(cdm, defs, out=out / "diagnostics.csv", min_cell_count=MIN, cdm_name=name,
                                progress=quiet)
        # the truth row for row: the study's tables as a release at MIN shapes them, before suppression
        truth_s = study_tables(cdm, study, name, MIN)[0]
        rel_s = run_study(cdm, study, out / "study", cdm_name=name, site_min_cell_count=MIN)
    return ((SummarisedResult.from_csv(rel_d.out), truth_d), (SummarisedResult.from_csv(rel_s.results_csv), truth_s))


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    root = tmp_path_factory.mktemp("attack")
    import dataclasses

    from site_agent.cdm.synth import params

    before = params.RATES["oncology"]
    params.RATES["oncology"] = dataclasses.replace(before, sclc_stage=(0.5, 0.4, 0.05, 0.05))  # stage I-II enriched
    try:
        out = {}
        for name, n, seed in SITES:
            res = generate_site(out=root / f"{name}.duckdb", persons=n, site=name, profile="oncology", seed=seed)
            (root / name).mkdir()
            out[name] = released_and_truth(res.out, root / name, name)
    finally:
        params.RATES["oncology"] = before
    return out


@pytest.mark.parametrize("name", [s[0] for s in SITES])
def test_attacker_narrows_no_small_count(sites, name):
    for released, truth in sites[name]:
        assert len(released.data) == len(truth.data)
        small = (truth.data["estimate_name"].str.contains("count")
                 & truth.data["estimate_value"].isin([str(i) for i in range(1, MIN)])).sum()
        assert small > 0  # there is something to protect
        leaks = narrowed(released, truth, MIN)
        assert leaks == [], leaks[:5]


@pytest.mark.parametrize("name", [s[0] for s in SITES])
def test_released_files_pass_the_coordinator_audit(sites, name):
    for released, _truth in sites[name]:
        assert check_release(released, MIN) == []


def test_attacker_finds_what_plain_suppression_leaves(sites):
    """The attacker is not toothless: on plain cell suppression of the same truth it narrows cells."""
    from site_agent.suppression import suppress

    _, truth = sites["attack_mid"][0]
    plain = suppress(truth, MIN)
    assert len(narrowed(plain, truth, MIN)) > 0


def test_every_released_result_type_is_declared_and_its_relations_hold(sites):
    """Full diagnostics + study: every result type has a declaration, and every declared relation
    holds exactly on the unsuppressed truth (a declaration cannot claim what is not so)."""
    import numpy as np

    from optima_common.disclosure import audit as A
    from optima_common.disclosure import declarations as D
    from optima_common.disclosure.frame import audit_frame

    types = set()
    for released, truth in sites["attack_mid"]:
        types |= set(truth.settings["result_type"])
        f = audit_frame(truth)
        built = D.build_system(f)
        p = A.problem(f, built, f["num"].to_numpy())
        before = len(p.rel)
        A.fill_hidden_truth(p)
        assert len(p.rel) == before, "a declared relation does not hold on the true counts"
        assert built.system.n_rel > 0
        assert np.isfinite(p.true[: p.n][f["is_count"].to_numpy()]).all()
    assert D.undeclared(types) == []
    assert {"incidence", "code_use", "summarise_characteristics", "treatment_pathways", "survival_events"} <= types


def test_an_undeclared_result_type_is_not_released():
    from optima_common.disclosure import protect
    from optima_common.errors import DisclosureError

    r = SummarisedResult.from_records(
        [{"cdm_name": "x", "variable_name": "n", "estimate_name": "count", "estimate_type": "integer",
          "estimate_value": "12"}],
        [{"result_id": 1, "result_type": "something_new", "package_name": "p", "package_version": "1"}])
    with pytest.raises(DisclosureError, match="something_new"):
        protect(r, r, MIN)
    assert check_release(r, MIN) and "declare no relations" in check_release(r, MIN)[0]


def test_refresh_two_more_patients_survival_estimates_do_not_give_n_risk_back(tmp_path):
    """Two releases of one KM table, the second after 2 more patients: the history withholds the
    at-risk counts that moved by 1..min-1, and every estimate (and CI) derived from them goes too."""
    from optima_common.disclosure import protect
    from site_agent.governance.release_history import ReleaseHistory

    def release(n0: int) -> SummarisedResult:
        rows, times = [], [0, 182, 365]
        risk, s = n0, 1.0
        for t in times:
            ev = 10
            for est, v in (("n_risk_count", risk), ("n_events_count", ev), ("n_censor_count", 20)):
                rows.append({"result_id": 1, "cdm_name": "x", "group_name": "target_cohort", "group_level": "sclc",
                             "variable_name": "outcome", "variable_level": "death", "estimate_name": est,
                             "estimate_type": "integer", "estimate_value": str(v), "additional_name": "time",
                             "additional_level": str(t)})
            s *= 1 - ev / risk
            for est, v in (("estimate", s), ("estimate_95CI_lower", s * 0.9), ("estimate_95CI_upper", min(1, s * 1.1))):
                rows.append({"result_id": 2, "cdm_name": "x", "group_name": "target_cohort", "group_level": "sclc",
                             "variable_name": "outcome", "variable_level": "death", "estimate_name": est,
                             "estimate_type": "numeric", "estimate_value": f"{v:.6f}", "additional_name": "time",
                             "additional_level": str(t)})
            risk -= ev + 20
        settings = [{"result_id": 1, "result_type": "survival_events", "package_name": "p", "package_version": "1"},
                    {"result_id": 2, "result_type": "survival_estimates", "package_name": "p", "package_version": "1"}]
        return SummarisedResult.from_records(rows, settings)

    history = ReleaseHistory(tmp_path)
    first = protect(release(88), release(88), MIN).result
    history.record(first, "m1")
    second, report = history.guard(release(90), MIN)
    assert report.changed
    out = protect(release(90), second, MIN).result.data
    est = out[out["result_id"] == 2]
    withheld_times = set(out[(out["result_id"] == 1) & (out["estimate_value"] == "-")]["additional_level"])
    assert "0" in withheld_times  # n_risk 88 -> 90
    # every estimate at or after the first withheld count is withheld: S(t) and its CI would give n_risk back
    assert (est["estimate_value"] == "-").all()
    # and the attacker, holding both releases, cannot solve n_risk from S: no number of the curve is left
    assert not set(est["estimate_value"]) - {"-"}


def test_history_withheld_count_keeps_its_neighbourhood_of_the_old_value_open():
    """Subjects were 103 last time and are 105 now (withheld by the history); records 105 shown
    would tell the attacker that at most 2 persons came: the audit withholds records too."""
    from optima_common.disclosure import protect

    def table(subjects: str, records: str) -> SummarisedResult:
        rows = [{"cdm_name": "x", "group_name": "cohort_name", "group_level": "sclc", "variable_name": v,
                 "estimate_name": "count", "estimate_type": "integer", "estimate_value": val}
                for v, val in (("Number subjects", subjects), ("Number records", records))]
        return SummarisedResult.from_records(rows, [{"result_id": 1, "result_type": "summarise_cohort_count",
                                                     "package_name": "p", "package_version": "1"}])

    truth, released = table("105", "105"), table("-", "105")
    subjects_row = int((released.data["variable_name"] == "Number subjects").to_numpy().nonzero()[0][0])
    plain = protect(truth, released, MIN).result.data
    assert (plain["estimate_value"] == "-").sum() == 1  # without the history, 105 in [0, 105] is wide enough
    anchored = protect(truth, released, MIN, anchors={subjects_row: 103.0}).result.data
    assert (anchored["estimate_value"] == "-").all()  # 103+1..103+4 must stay possible: records goes too
    # the site finds the anchor from the history's own record of the withheld cell
    from site_agent.disclosure import history_anchors
    from site_agent.governance.release_history import BlockedCell

    blocked = [BlockedCell("summarise_cohort_count", "sclc", "overall", "Number subjects", None, "count",
                           105.0, 103.0, "m1")]
    found_truth, found = history_anchors(released, blocked)
    assert found == {subjects_row: 103.0}
    assert found_truth.data["estimate_value"].iat[subjects_row] == "105"
    assert released.data["estimate_value"].iat[subjects_row] == "-"
