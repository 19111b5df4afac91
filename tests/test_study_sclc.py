"""The SCLC study end to end: run at several synthetic sites, pool exactly, fit Cox federated.

Exactness is checked against computations on the union of the sites' patient rows, which
only a test may hold: lifelines' KM on grid-discretised times, and an independent,
loop-based Breslow fit (tests/test_federated_cox.py) stratified by site.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from coordinator.pooling.cox import fit_federated_cox
from coordinator.pooling.survival import pooled_km
from optima_common.results import SummarisedResult
from site_agent.analyses.cox import CoxGuard
from site_agent.analyses.study_run import run_study, site_cox_data, study_patients
from site_agent.cdm import connect_cdm
from site_agent.cdm.synth import generate_site
from site_agent.cohorts import collect_definitions
from site_agent.study_spec import load_study
from tests.conftest import DEFINITIONS, REPO
from tests.test_federated_cox import reference_fit

SPEC = DEFINITIONS / "studies" / "sclc_stage_i_ii.json"
# different sizes and (through the site name) different staging and coding habits
SITES = [("onco_north", 160_000, 11), ("onco_south", 90_000, 12), ("onco_west", 60_000, 13)]


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    root = tmp_path_factory.mktemp("study_sites")
    loaded = load_study(SPEC)
    # the exactness tests release everything (min cell count 1); suppression is tested below
    study = loaded.model_copy(update={"spec": loaded.spec.model_copy(update={"min_cell_count": 1})})
    out = []
    for name, n, seed in SITES:
        res = generate_site(out=root / f"{name}.duckdb", persons=n, site=name, profile="oncology", seed=seed)
        with connect_cdm(str(res.out)) as cdm:
            released = run_study(cdm, study, root / name, cdm_name=name, site_min_cell_count=1)
            patients, _ = study_patients(cdm, study)
        out.append((name, res.out, released, patients))
    return study, out


def test_pooled_km_equals_union_km(sites):
    """min cell count 1 (nothing suppressed): pooled KM from the released CSVs is exact."""
    study, out = sites
    grid = np.array(study.spec.survival.grid)
    released = [SummarisedResult.from_csv(r.results_csv) for _, _, r, _ in out]
    km = pooled_km(released)
    overall = km[(km["strata_level"] == "overall")].sort_values("time")
    union = pd.concat([p for *_, p in out], ignore_index=True)
    assert len(union) >= 20 and union["death"].sum() >= 10
    t = union["time_death"].to_numpy()
    idx = np.searchsorted(grid, t, side="left")  # ceil to the grid; beyond it: censored at its end
    t_grid = np.where(idx < len(grid), grid[np.minimum(idx, len(grid) - 1)], grid[-1])
    e = np.where(idx < len(grid), union["death"].to_numpy(), 0)
    # the spec's actuarial estimator by hand (textbook life table): in interval k, n at risk at its
    # start, d deaths and c censored in it; S_k = S_{k-1} (1 - d / (n - c/2))
    expected, s_k = [], 1.0
    for g in overall["time"].to_numpy():
        k = int(np.searchsorted(grid, g))
        n = np.sum(t_grid >= g)
        d, c = np.sum((t_grid == g) & (e == 1)), np.sum((t_grid == g) & (e == 0))
        s_k *= 1 - d / (n - c / 2) if n - c / 2 > 0 else 1.0
        expected.append(s_k)
        assert k < len(grid)
    assert study.spec.survival.estimator == "actuarial"
    got = overall["survival"].to_numpy(float)
    ok = ~np.isnan(got)
    assert ok.sum() >= len(grid) - 2 and not overall["affected"].any()
    np.testing.assert_allclose(got[ok], np.array(expected)[ok], atol=1e-12)


def test_federated_cox_equals_centralised_stratified_fit(sites):
    """Same design as the study's Cox, on the broader SCLC cohort (the stage I-II cohort of
    these small sites is too small for a 9-column model); exactness does not depend on it."""
    study, out = sites
    sclc = next(d for d in collect_definitions([DEFINITIONS / "lung"]) if d.cohort_name == "sclc")
    broad = study.model_copy(update={"target": sclc})
    datas = []
    for _, path, _, _ in out:
        with connect_cdm(str(path)) as cdm:
            patients, _ = study_patients(cdm, broad)
        datas.append(site_cox_data(broad, patients))
    assert all(d.n_events >= broad.spec.cox.min_events for d in datas)
    guards = [CoxGuard(max_iterations=broad.spec.cox.max_iterations, min_events=broad.spec.cox.min_events, data=d)
              for d in datas]
    fit = fit_federated_cox([lambda b, g=g: g.answer("sclc-m1", b) for g in guards], datas[0].p,
                            names=datas[0].columns)
    assert fit.converged
    free = ~np.isnan(fit.coef)
    beta, se = reference_fit([(d.X[:, free], d.time, d.event) for d in datas], int(free.sum()))
    np.testing.assert_allclose(fit.coef[free], beta, atol=1e-6)
    np.testing.assert_allclose(fit.se[free], se, rtol=1e-5)


def test_release_has_no_small_counts_and_plots(sites, tmp_path):
    """At the real floor (5), no released count is 1..4, survival tables included."""
    study, out = sites
    name, path, _, _ = out[1]
    cdm_file = tmp_path / "site.duckdb"
    shutil.copy(path, cdm_file)
    proc = subprocess.run([sys.executable, "-m", "site_agent", "run-study", str(SPEC), "--cdm", str(cdm_file),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    res = SummarisedResult.from_csv(tmp_path / "out" / "results.csv")
    d = res.data
    counts = pd.to_numeric(d.loc[d["estimate_name"].str.contains("count"), "estimate_value"], errors="coerce")
    assert not ((counts > 0) & (counts < 5)).any()
    types = set(res.settings["result_type"])
    assert {"treatment_pathways", "survival_events", "survival_estimates", "survival_summary",
            "outcome_horizons", "cumulative_incidence"} <= types
    assert set(res.settings["min_cell_count"]) == {"5"}
    for png in ("km_by_sequence.png", "treatment_pathways.png", "outcome_horizons.png"):
        assert (tmp_path / "out" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eunomia_reports_empty_cohorts_cleanly(eunomia_duckdb, tmp_path):
    cdm_file = tmp_path / "eunomia.duckdb"
    shutil.copy(eunomia_duckdb, cdm_file)
    proc = subprocess.run([sys.executable, "-m", "site_agent", "run-study", str(SPEC), "--cdm", str(cdm_file),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "0 patients" in proc.stderr
    res = SummarisedResult.from_csv(tmp_path / "out" / "results.csv")
    assert "treatment_pathways" in set(res.settings["result_type"])
    subjects = res.data[(res.data["variable_name"].str.lower() == "number subjects")]
    assert set(subjects["estimate_value"]) <= {"0"}
    # an empty target cohort releases its count, never survival estimates (no S = 1 with CI 1-1)
    d = res.data
    assert not d["estimate_name"].isin(["estimate", "median_survival"]).any()
    assert not d["estimate_name"].str.startswith("survival_at_").any()
    assert not d["estimate_name"].str.contains("percentage").any()
    assert set(d.loc[d["estimate_name"] == "number_records_count", "estimate_value"]) == {"0"}


def test_horizon_labels_stay_monotone():
    """'within' counts are cumulative: a horizon withheld after a visible 5 reads '>5', not '<5'."""
    from site_agent.analyses.study_run import monotone_labels

    d = pd.DataFrame({"variable_name": ["death"] * 4 + ["progression"],
                      "variable_level": ["within 6 months", "within 12 months", "within 18 months", "after 3 months",
                                         "within 6 months"],
                      "estimate_name": ["count"] * 5, "estimate_value": ["-", "5", "-", "-", "-"]})
    assert monotone_labels(d, 5).tolist() == ["<5", "5", ">5", "<5", "<5"]
