"""Federated site-stratified Cox (Breslow) against independent fits.

The references are (1) a plain loop-based Breslow partial likelihood written here, per
stratum, maximised by plain Newton iterations (no shared code with the site module),
and (2) lifelines' CoxPHFitter(strata=["site"]) on data without ties (lifelines only has
Efron, which equals Breslow when no event times are tied).
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from coordinator.pooling.cox import fit_federated_cox
from site_agent.analyses.cox import (
    CoxGuard,
    CoxRefusal,
    SiteCoxData,
    cohort_survival_rows,
    design_matrix,
    site_score_information,
)

COVARIATES = ["treatment", "age", "sex", "stage"]
LEVELS = {
    "treatment": ["chemo", "chemo_radio", "surgery_chemo"],
    "sex": ["Female", "Male"],
    "stage": ["I", "II"],
}
SCALE = {"age": 10}
TRUE_BETA = np.array([-0.4, -0.8, 0.3, 0.25, 0.6])  # chemo_radio, surgery_chemo, age/10, Male, II


# ---------------------------------------------------------------- independent reference

def loop_breslow(X: np.ndarray, time: np.ndarray, event: np.ndarray, beta: np.ndarray):
    """Textbook Breslow log partial likelihood, score and information, one event time at a time."""
    p = X.shape[1]
    ll, u, v = 0.0, np.zeros(p), np.zeros((p, p))
    for t in sorted(set(time[event == 1].tolist())):
        at_risk = time >= t
        dead = (time == t) & (event == 1)
        d = int(dead.sum())
        w = np.exp(X[at_risk] @ beta)
        s0 = w.sum()
        s1 = (w[:, None] * X[at_risk]).sum(axis=0)
        s2 = (w[:, None] * X[at_risk]).T @ X[at_risk]  # sum of w x x'
        ll += float((X[dead] @ beta).sum()) - d * np.log(s0)
        u += X[dead].sum(axis=0) - d * s1 / s0
        v += d * (s2 / s0 - np.outer(s1, s1) / s0**2)
    return ll, u, v


def reference_fit(strata: list[tuple[np.ndarray, np.ndarray, np.ndarray]], p: int):
    """Stratified Breslow fit on the union: sum the loop likelihood over strata, maximise."""
    def total(beta):
        parts = [loop_breslow(X, t, e, beta) for X, t, e in strata]
        return (sum(a[0] for a in parts), sum(a[1] for a in parts), sum(a[2] for a in parts))

    beta = np.zeros(p)
    for _ in range(50):  # plain Newton; the Breslow log-likelihood is concave
        _, u, v = total(beta)
        step = np.linalg.solve(v, u)
        beta = beta + step
        if np.abs(step).max() < 1e-11:
            break
    else:
        raise AssertionError("reference Newton did not converge")
    _, u, v = total(beta)
    assert np.abs(u).max() < 1e-8  # the score vanishes at the maximum
    return beta, np.sqrt(np.diag(np.linalg.inv(v)))


# ---------------------------------------------------------------- synthetic sites

def make_site(name: str, n: int, seed: int, scale: float, shape: float, ties: bool) -> pd.DataFrame:
    """Weibull event times with site-specific baseline, exponential censoring, true log-HRs known."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "site": name,
        "treatment": rng.choice(LEVELS["treatment"], size=n, p=[0.5, 0.3, 0.2]),
        "age": np.round(rng.normal(66, 9, size=n)),
        "sex": rng.choice(LEVELS["sex"], size=n),
        "stage": rng.choice(LEVELS["stage"], size=n, p=[0.4, 0.6]),
    })
    X, _ = design_matrix(df, COVARIATES, LEVELS, SCALE)
    lin = (X - X.mean(axis=0)) @ TRUE_BETA
    t_event = scale * (rng.exponential(size=n) / np.exp(lin)) ** (1 / shape)
    t_cens = rng.exponential(scale * 1.5, size=n)
    time = np.minimum(t_event, t_cens)
    df["event"] = (t_event <= t_cens).astype(int)
    df["time"] = np.ceil(time / 7) * 7 if ties else time  # weekly follow-up visits: many ties
    return df


def site_frames(ties: bool) -> list[pd.DataFrame]:
    return [make_site("site_a", 250, 1, 400, 1.0, ties), make_site("site_b", 450, 2, 900, 1.4, ties),
            make_site("site_c", 700, 3, 250, 0.8, ties)]


def to_data(df: pd.DataFrame) -> SiteCoxData:
    X, names = design_matrix(df, COVARIATES, LEVELS, SCALE)
    return SiteCoxData(X=X, time=df["time"].to_numpy(), event=df["event"].to_numpy(), columns=tuple(names))


def federated(datas: list[SiteCoxData], manifest: str = "m1"):
    guards = [CoxGuard(max_iterations=40, min_events=5, data=d) for d in datas]
    sites = [lambda b, g=g: g.answer(manifest, b) for g in guards]
    fit = fit_federated_cox(sites, datas[0].p, names=datas[0].columns)
    assert all(g.answers_given(manifest) == fit.evaluations for g in guards)
    return fit


# ---------------------------------------------------------------- tests

def test_site_pieces_equal_loop_breslow_with_ties():
    df = site_frames(ties=True)[2]
    data = to_data(df)
    assert df.loc[df.event == 1, "time"].duplicated().sum() > 50  # ties really present
    rng = np.random.default_rng(5)
    for beta in (np.zeros(5), TRUE_BETA, rng.normal(0, 1, 5)):
        ll, u, v = site_score_information(data, beta)
        rl, ru, rv = loop_breslow(data.X, data.time, data.event, beta)
        assert ll == pytest.approx(rl, rel=1e-12)
        np.testing.assert_allclose(u, ru, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(v, rv, rtol=1e-9, atol=1e-9)
        # score is the gradient of the log-likelihood (central differences)
        num = [(site_score_information(data, beta + h)[0] - site_score_information(data, beta - h)[0]) / 2e-6
               for h in np.eye(5) * 1e-6]
        np.testing.assert_allclose(u, num, rtol=1e-5, atol=1e-5)


def test_federated_equals_independent_breslow_with_ties():
    frames = site_frames(ties=True)
    datas = [to_data(df) for df in frames]
    fit = federated(datas)
    assert fit.converged and fit.iterations < 15 and fit.convergence == "converged"
    # stopped early, the same data read as not converged, in words
    early = fit_federated_cox([lambda b, d=d: site_score_information(d, b) for d in datas], 5, max_iter=2)
    assert not early.converged and not early.estimates_converged
    assert early.convergence == "did not converge after 2 iteration(s): treat its estimates with caution"
    coef, se = reference_fit([(d.X, d.time, d.event) for d in datas], 5)
    np.testing.assert_allclose(fit.coef, coef, atol=1e-6)
    np.testing.assert_allclose(fit.se, se, atol=1e-5)
    # sanity on the model: true log-HRs inside ~4 SE, HR/CI consistent
    assert np.all(np.abs(fit.coef - TRUE_BETA) < 4 * fit.se)
    np.testing.assert_allclose(fit.hr_lower, np.exp(fit.coef - 1.959963984540054 * fit.se), rtol=1e-12)
    assert fit.names == ("treatmentchemo_radio", "treatmentsurgery_chemo", "age", "sexMale", "stageII")
    # stratification matters: a pooled (unstratified) fit differs
    pooled = reference_fit([(np.vstack([d.X for d in datas]), np.concatenate([d.time for d in datas]),
                             np.concatenate([d.event for d in datas]))], 5)[0]
    assert np.abs(pooled - fit.coef).max() > 1e-3


def test_convergence_costs_no_round_beyond_the_estimate():
    """Every evaluation is a round of messages to every site: the fit stops on the Newton step
    computed from the answers it has, so the estimate is the last point the sites were asked
    about and its variance comes from their answers there; nothing is asked after it."""
    datas = [to_data(df) for df in site_frames(ties=True)]
    asked: list[np.ndarray] = []

    def site(b, d):
        if d is datas[0]:
            asked.append(b.copy())
        return site_score_information(d, b)

    fit = fit_federated_cox([lambda b, d=d: site(b, d) for d in datas], 5, names=datas[0].columns)
    assert fit.converged and len(asked) == fit.evaluations
    np.testing.assert_array_equal(asked[-1], fit.coef)
    info = sum(site_score_information(d, fit.coef)[2] for d in datas)
    np.testing.assert_allclose(fit.covariance, np.linalg.inv(info), rtol=1e-12)
    # at that point the pooled score is zero to within the Newton step's tolerance
    score = sum(site_score_information(d, fit.coef)[1] for d in datas)
    assert np.abs(np.linalg.solve(info, score)).max() <= 1e-9 * (1 + np.abs(fit.coef).max())
    # and it is the independent fit's optimum
    coef, _ = reference_fit([(d.X, d.time, d.event) for d in datas], 5)
    np.testing.assert_allclose(fit.coef, coef, atol=1e-8)


def test_federated_equals_lifelines_without_ties():
    from lifelines import CoxPHFitter

    frames = site_frames(ties=False)
    datas = [to_data(df) for df in frames]
    fit = federated(datas)
    union = pd.concat([pd.DataFrame(d.X, columns=d.columns).assign(time=d.time, event=d.event, site=i)
                       for i, d in enumerate(datas)], ignore_index=True)
    assert not union.loc[union.event == 1].duplicated(["site", "time"]).any()
    cph = CoxPHFitter().fit(union, duration_col="time", event_col="event", strata=["site"],
                            fit_options={"precision": 1e-12, "r_precision": 1e-14, "max_steps": 100})
    np.testing.assert_allclose(fit.coef, cph.params_[list(fit.names)].to_numpy(), atol=1e-6)
    np.testing.assert_allclose(fit.se, cph.standard_errors_[list(fit.names)].to_numpy(), atol=1e-5)
    assert fit.loglik == pytest.approx(cph.log_likelihood_, rel=1e-9)


def test_lifelines_efron_differs_on_ties():
    """Shows the tie handling is what is compared: on tied data Efron != our Breslow."""
    from lifelines import CoxPHFitter

    datas = [to_data(df) for df in site_frames(ties=True)]
    fit = federated(datas)
    union = pd.concat([pd.DataFrame(d.X, columns=d.columns).assign(time=d.time, event=d.event, site=i)
                       for i, d in enumerate(datas)], ignore_index=True)
    cph = CoxPHFitter().fit(union, duration_col="time", event_col="event", strata=["site"])
    assert np.abs(cph.params_[list(fit.names)].to_numpy() - fit.coef).max() > 1e-3


def test_guard_refusals():
    datas = [to_data(df) for df in site_frames(ties=True)]
    few = SiteCoxData(X=datas[0].X[:20], time=datas[0].time[:20], event=np.r_[np.ones(3), np.zeros(17)])
    with pytest.raises(CoxRefusal, match="fewer events than the minimum of 5") as refused:
        CoxGuard(max_iterations=10, min_events=5, data=few).answer("m", np.zeros(5))
    assert "3" not in str(refused.value)  # the refusal leaves the site: it must not carry the small count
    assert issubclass(CoxRefusal, ValueError)

    g = CoxGuard(max_iterations=3, min_events=5, data=datas[1])
    for bad in (np.array([np.nan, 0, 0, 0, 0]), np.array([np.inf, 0, 0, 0, 0]), np.array([0, 0, 21.0, 0, 0]),
                np.zeros(4)):
        with pytest.raises(ValueError):
            g.answer("m", bad)
    assert g.answers_given("m") == 0  # refused requests do not use the budget
    for _ in range(3):
        g.answer("m", np.full(5, 0.1))
    with pytest.raises(CoxRefusal, match="budget 3"):
        g.answer("m", np.zeros(5))
    g.answer("other", np.zeros(5))  # budget is per manifest
    # the federated fit stops with the site's refusal when the budget is too small
    small = [CoxGuard(max_iterations=2, min_events=5, data=d) for d in datas]
    with pytest.raises(CoxRefusal):
        fit_federated_cox([lambda b, g=g: g.answer("m2", b) for g in small], 5)


def test_design_matrix_fixed_columns_when_level_missing():
    a = pd.DataFrame({"treatment": ["chemo", "chemo_radio", "surgery_chemo"], "age": [60, 70, 80],
                      "sex": ["Male", "Female", "Male"], "stage": ["I", "II", "II"]})
    b = pd.DataFrame({"treatment": ["chemo", "chemo"], "age": [55, 65], "sex": ["Male", "Male"],
                      "stage": ["II", "II"]})
    Xa, na = design_matrix(a, COVARIATES, LEVELS, SCALE)
    Xb, nb = design_matrix(b, COVARIATES, LEVELS, SCALE)
    assert na == nb == ["treatmentchemo_radio", "treatmentsurgery_chemo", "age", "sexMale", "stageII"]
    np.testing.assert_array_equal(Xa, [[0, 0, 6, 1, 0], [1, 0, 7, 0, 1], [0, 1, 8, 1, 1]])
    np.testing.assert_array_equal(Xb, [[0, 0, 5.5, 1, 1], [0, 0, 6.5, 1, 1]])
    with pytest.raises(ValueError, match="not in the study spec"):
        design_matrix(b.assign(stage=["III", "II"]), COVARIATES, LEVELS, SCALE)
    with pytest.raises(ValueError, match="missing"):
        design_matrix(b.assign(age=[np.nan, 1]), COVARIATES, LEVELS, SCALE)


# ---------------------------------------------------------------- synthetic CDM sites

@pytest.fixture(scope="module")
def cdm_sites(tmp_path_factory):
    from site_agent.cdm import connect_cdm
    from site_agent.cdm.synth import generate_site
    from site_agent.cohorts import build_cohorts, collect_definitions
    from tests.conftest import DEFINITIONS

    defs = [d for d in collect_definitions([DEFINITIONS / "lung"]) if d.cohort_definition_id in (4, 7, 10)]
    frames = []
    for name, seed in (("onco_north", 21), ("onco_south", 22)):
        out = tmp_path_factory.mktemp(name) / f"{name}.duckdb"
        generate_site(out=out, persons=100_000, site=name, profile="oncology", seed=seed)
        with connect_cdm(str(out)) as cdm:
            build_cohorts(cdm, defs)
            frames.append(cohort_survival_rows(cdm, 4, 10, {"chemo": (7, 90)}))
            truth = cdm.query_df(  # plain check of the extraction on a few columns
                "SELECT count(*) AS n, count(d.subject_id) AS deaths FROM results.cohort c "
                "LEFT JOIN results.cohort d ON d.subject_id = c.subject_id AND d.cohort_definition_id = 10 "
                "AND d.cohort_start_date >= c.cohort_start_date AND d.cohort_start_date <= c.cohort_end_date "
                "WHERE c.cohort_definition_id = 4")
        assert len(frames[-1]) == truth.n[0] and frames[-1].event.sum() == truth.deaths[0]
        shutil.rmtree(out.parent, ignore_errors=True)
    return frames


def test_federated_cox_on_synthetic_cdm(cdm_sites):
    levels = {"sex": ["Female", "Male"], "chemo": ["0", "1"]}
    covs = ["age", "sex", "chemo"]
    datas = []
    for df in cdm_sites:
        assert len(df) > 300 and df.event.sum() > 100 and 0 < df.chemo.mean() < 1 and (df.time >= 0).all()
        assert set(df.sex) <= {"Female", "Male"}
        X, names = design_matrix(df, covs, levels, {"age": 10})
        datas.append(SiteCoxData(X=X, time=df.time.to_numpy(), event=df.event.to_numpy(), columns=tuple(names)))
    fit = federated(datas, "sclc-cox")
    assert fit.converged and fit.names == ("age", "sexMale", "chemo1")
    coef, se = reference_fit([(d.X, d.time, d.event) for d in datas], 3)
    np.testing.assert_allclose(fit.coef, coef, atol=1e-6)
    np.testing.assert_allclose(fit.se, se, atol=1e-5)
    assert np.all(fit.hr_lower < fit.hr) and np.all(fit.hr < fit.hr_upper)
