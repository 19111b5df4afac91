"""Independent reference: R's survival package (survfit, coxph) on the clinical datasets it
ships, with sites split from them; our site release + coordinator pooling must agree.

Needs Rscript with the survival package (scripts/test.sh installs r-base-core and
r-cran-survival on Debian when run as root)."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from benchmarks.reference_r import (
    coxph_reference,
    dataset,
    rscript,
    survfit_reference,
)
from coordinator.pooling.cox import fit_federated_cox
from coordinator.pooling.survival import pooled_km, pooled_summary
from optima_common.protocol import COX_MAX_ABS_BETA
from site_agent.analyses.cox import SiteCoxData, design_matrix, site_score_information
from site_agent.analyses.survival import summarise_survival
from site_agent.study_spec import SurvivalSpec

if rscript() is None:
    if os.environ.get("CI"):
        pytest.fail("Rscript not found; scripts/test.sh installs r-base-core and r-cran-survival", pytrace=False)
    pytest.skip("Rscript not installed (scripts/test.sh installs r-base-core r-cran-survival)",
                allow_module_level=True)

HORIZONS = [365, 730, 1826]


def _sites(df: pd.DataFrame, k: int = 3, seed: int = 1) -> list[pd.DataFrame]:
    """k sites of unequal size, split at random from the dataset."""
    rng = np.random.default_rng(seed)
    which = rng.choice(k, size=len(df), p=np.arange(1, k + 1) / (k * (k + 1) / 2))
    return [df[which == i] for i in range(k)]


def _pooled(df: pd.DataFrame, grid: list[int], estimator: str) -> tuple[pd.DataFrame, pd.Series]:
    results = [summarise_survival(f"site_{i}", "t", "death", {"overall": s[["time", "event"]]}, grid,
                                  horizons=HORIZONS, estimator=estimator)
               for i, s in enumerate(_sites(df))]
    km = pooled_km(results)
    return km.sort_values("time").reset_index(drop=True), pooled_summary(km, HORIZONS).iloc[0]


@pytest.mark.parametrize("name", ["lung", "veteran", "colon"])
def test_pooled_kaplan_meier_on_a_daily_grid_equals_survfit(name):
    """A daily grid holds every event time: the pooled KM of three sites is R's exact KM -
    curve, log CI, median with its CI, survival (with CI) at 1/2/5 years, missing past follow-up."""
    df = dataset(name)
    ref = survfit_reference(df, HORIZONS)
    grid = list(range(int(df["time"].max()) + 1))
    km, summ = _pooled(df, grid, "kaplan_meier")
    at = km.set_index("time").loc[ref["time"]]
    np.testing.assert_allclose(at["survival"], ref["surv"], rtol=0, atol=1e-12)
    lower = np.array([np.nan if v is None else v for v in ref["lower"]], float)
    upper = np.array([np.nan if v is None else v for v in ref["upper"]], float)
    np.testing.assert_allclose(at["lower"], lower, rtol=1e-10, atol=1e-13, equal_nan=True)
    np.testing.assert_allclose(at["upper"], upper, rtol=1e-10, atol=1e-13, equal_nan=True)
    median = [np.nan if v is None else v for v in ref["median"]]
    got = [summ["median_survival"], summ["median_survival_95CI_lower"], summ["median_survival_95CI_higher"]]
    np.testing.assert_array_equal(got, median)
    for h, s, lo, up in zip(ref["h_time"], ref["h_surv"], ref["h_lower"], ref["h_upper"]):
        if h > ref["max_time"]:
            assert np.isnan(summ[f"survival_at_{h}"])  # R extends the last value; not estimable here
            continue
        assert summ[f"survival_at_{h}"] == pytest.approx(s, abs=1e-12)
        assert summ[f"survival_at_{h}_95CI_lower"] == pytest.approx(lo, rel=1e-10)
        assert summ[f"survival_at_{h}_95CI_upper"] == pytest.approx(up, rel=1e-10)


@pytest.mark.parametrize("name", ["lung", "veteran", "colon", "pbc"])
def test_released_survival_on_the_study_grid_is_within_001_of_exact_km(name):
    """The study's default grid and estimator (actuarial): survival at the seed's horizons within
    0.01 of R's exact-time KM, with pooling from three sites' aggregates."""
    df = dataset(name)
    ref = survfit_reference(df, HORIZONS)
    spec = SurvivalSpec()
    _, summ = _pooled(df, spec.grid, spec.estimator)
    checked = 0
    for h, s in zip(ref["h_time"], ref["h_surv"]):
        if h <= ref["max_time"]:
            assert abs(summ[f"survival_at_{h}"] - s) < 0.01, (name, h, summ[f"survival_at_{h}"], s)
            checked += 1
    assert checked >= 2


def _site_datas(df: pd.DataFrame, covariates: list[str], levels: dict | None = None) -> list[SiteCoxData]:
    """Each site's design (its own stratum), in site order."""
    datas = []
    for _, g in df.groupby("site", sort=True):
        X, names = design_matrix(g, covariates, levels or {})
        datas.append(SiteCoxData(X=X, time=g["time"].to_numpy(), event=g["event"].to_numpy(), columns=tuple(names)))
    return datas


def _veteran_with_noevent() -> pd.DataFrame:
    """The veteran sites plus a covariate that is 1 only for censored treated patients (monotone likelihood)."""
    df = _veteran_sites()
    df["noevent"] = ((df["event"] == 0) & (df["trt"] == 1)).astype(int)
    return df


def _federated_fit(df: pd.DataFrame, covariates: list[str], levels: dict | None = None):
    """Each site its own stratum: the sites answer (loglik, score, information), the coordinator sums."""
    datas = _site_datas(df, covariates, levels)
    sites = [lambda b, d=d: site_score_information(d, b) for d in datas]
    return fit_federated_cox(sites, datas[0].p, names=datas[0].columns, max_abs_beta=COX_MAX_ABS_BETA)


def _veteran_sites() -> pd.DataFrame:
    df = dataset("veteran")
    df["site"] = _site_labels(len(df))
    return df


def _site_labels(n: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.choice(["north", "south", "west"], size=n, p=[0.5, 0.3, 0.2])


def _assert_matches_r(fit, ref, coef_atol=1e-8, se_rtol=1e-7):
    assert list(fit.names) == ref["names"]
    for name, c, se, b, s in zip(fit.names, ref["coef"], ref["se"], fit.coef, fit.se):
        if c is None:
            assert np.isnan(b) and np.isnan(s), name
        else:
            assert b == pytest.approx(c, abs=coef_atol), name
            assert s == pytest.approx(se, rel=se_rtol), name


def test_stratified_cox_equals_coxph_on_lung_split_by_site():
    df = dataset("lung").dropna(subset=["ph_ecog"])
    df["site"] = _site_labels(len(df))
    covs = ["age", "sex", "ph_ecog"]
    fit = _federated_fit(df, covs)
    ref = coxph_reference(df, covs)
    assert fit.converged and not fit.aliased and not fit.diverging
    _assert_matches_r(fit, ref)
    assert fit.loglik == pytest.approx(ref["loglik"], abs=1e-9)


def test_stratified_cox_with_a_factor_equals_coxph_on_veteran():
    """A 4-level factor: R turns the text column into a factor with alphabetical levels (first =
    reference) and names the columns celltypelarge ...; design_matrix given the same levels must
    give the same columns and the same fit."""
    df = _veteran_sites()
    covs = ["trt", "celltype", "karno", "age"]
    fit = _federated_fit(df, covs, {"celltype": ["adeno", "large", "smallcell", "squamous"]})
    ref = coxph_reference(df, covs)
    assert fit.converged
    _assert_matches_r(fit, ref)


def test_collinear_column_is_not_estimable_like_coxph():
    """x3 = trt + karno: R reports NA for it and fits the rest; so must we."""
    df = _veteran_sites()
    df["x3"] = df["trt"] + df["karno"]
    covs = ["trt", "karno", "x3", "age"]
    fit = _federated_fit(df, covs)
    ref = coxph_reference(df, covs)
    assert ref["coef"][2] is None
    assert fit.aliased == ("x3",) and fit.converged
    _assert_matches_r(fit, ref)
    assert any("x3" in m and "not estimable" in m for m in fit.messages)


def test_level_without_events_is_reported_diverging_like_coxph():
    """A covariate that is 1 only for censored patients: its coefficient goes to -infinity.
    R warns "Loglik converged before variable 3; coefficient may be infinite"; the others
    agree with R's fit to within what the finite stopping point moves them."""
    df = _veteran_with_noevent()
    covs = ["trt", "karno", "noevent", "age"]
    fit = _federated_fit(df, covs)
    ref = coxph_reference(df, covs, control="eps = 1e-9")
    assert any("coefficient may be infinite" in w and "3" in w for w in ref["warnings"])
    assert fit.diverging == ("noevent",) and not fit.converged
    # the others did converge, and the note a reader sees says so rather than "converged: False"
    assert fit.estimates_converged and fit.convergence.startswith("the estimated coefficients converged")
    assert "noevent diverges" in fit.convergence
    assert fit.aliased == ()  # a diverging column is not also called aliased (R's coef is finite-but-huge, not NA)
    assert np.isnan(fit.coef[2]) and np.isnan(fit.hr[2])
    assert any("noevent" in m and "diverges" in m for m in fit.messages)
    for i in (0, 1, 3):
        assert fit.coef[i] == pytest.approx(ref["coef"][i], abs=1e-5)
        assert fit.se[i] == pytest.approx(ref["se"][i], rel=1e-4)


def test_diverging_coefficient_never_asks_sites_beyond_their_bound():
    """The fit stops before a coefficient passes the sites' |beta| bound (they would refuse, and
    over the network the fit would end as a lost site): the column is reported diverging."""
    df = _veteran_with_noevent()
    datas = _site_datas(df, ["trt", "karno", "noevent", "age"])
    asked: list[float] = []

    def site(b, d):
        asked.append(float(np.abs(b).max()))
        return site_score_information(d, b)

    fit = fit_federated_cox([lambda b, d=d: site(b, d) for d in datas], 4, names=datas[0].columns, max_abs_beta=5.0)
    assert max(asked) <= 5.0
    assert fit.diverging == ("noevent",) and np.isnan(fit.coef[2])
    ref = coxph_reference(df, ["trt", "karno", "noevent", "age"], control="eps = 1e-9")
    # the other columns are still fitted (not left at the start value 0) given the held column
    for i in (0, 1, 3):
        assert fit.coef[i] == pytest.approx(ref["coef"][i], rel=0.2, abs=2e-3), (i, fit.coef[i], ref["coef"][i])
    # at the sites' real bound the runaway column is held far out and the others are fitted
    # given it: they agree with R's fit (which lets the coefficient run to about -20)
    asked.clear()
    fit = fit_federated_cox([lambda b, d=d: site(b, d) for d in datas], 4, names=datas[0].columns, max_abs_beta=20.0)
    assert max(asked) <= 20.0 and fit.diverging == ("noevent",)
    for i in (0, 1, 3):
        assert fit.coef[i] == pytest.approx(ref["coef"][i], abs=1e-4)
        assert fit.se[i] == pytest.approx(ref["se"][i], rel=1e-3)


def test_a_held_column_and_the_others_next_step_cost_one_evaluation():
    """When a column would pass the sites' bound, the next point asked both holds it and moves
    the other columns by their Newton step from the answers in hand (no round at the held point
    alone); the others still end where their pooled score vanishes given the held column."""
    df = _veteran_with_noevent()
    datas = _site_datas(df, ["trt", "karno", "noevent", "age"])
    asked: list[np.ndarray] = []

    def site(b, d):
        if d is datas[0]:
            asked.append(b.copy())
        return site_score_information(d, b)

    fit = fit_federated_cox([lambda b, d=d: site(b, d) for d in datas], 4, names=datas[0].columns, max_abs_beta=5.0)
    assert fit.diverging == ("noevent",) and len(asked) == fit.evaluations
    others = [0, 1, 3]
    held = [i for i, b in enumerate(asked) if abs(b[2]) == 0.75 * 5.0]
    assert held and held[0] > 0, asked
    assert np.all(asked[held[0]][others] != asked[held[0] - 1][others])  # moved in the same evaluation
    last = asked[-1]
    assert np.allclose(np.where(np.isnan(fit.coef), last, fit.coef), last, rtol=0, atol=0)  # the estimate was asked
    score = sum(site_score_information(d, last)[1] for d in datas)
    assert np.abs(score[others]).max() < 1e-6 * len(df)


def test_a_runaway_column_leaves_the_others_fitted():
    """A column whose first Newton step passes the sites' bound is held and reported diverging;
    the other columns are fitted given it (their pooled score is zero at the estimate), not left at 0."""
    df = _veteran_sites()
    datas = _site_datas(df, ["trt", "karno", "age"])
    sites = [lambda b, d=d: site_score_information(d, b) for d in datas]
    fit = fit_federated_cox(sites, 3, names=datas[0].columns, max_abs_beta=0.05)  # trt's first step passes it
    assert fit.diverging == ("trt",) and fit.aliased == ()  # held, not aliased
    est = ~np.isnan(fit.coef)
    assert est.any() and np.all(fit.coef[est] != 0.0)
    held = np.where(est, fit.coef, 0.0)
    for i, n in enumerate(fit.names):
        if n in fit.diverging:
            held[i] = np.nan
    # the held value is on one side of the bound: the optimum of the others is where their score vanishes
    best = None
    for sign in (1.0, -1.0):
        b = np.where(np.isnan(held), sign * 0.75 * 0.05, held)
        ll = sum(site_score_information(d, b)[0] for d in datas)
        score = sum(site_score_information(d, b)[1] for d in datas)
        if best is None or ll > best[0]:
            best = (ll, score)
    assert np.abs(best[1][est]).max() < 1e-6 * len(df)
