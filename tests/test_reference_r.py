"""Independent reference: R's survival package (survfit, coxph) on the clinical datasets it
ships, with sites split from them; our site release + coordinator pooling must agree.

Needs Rscript with the survival package (scripts/test.sh installs r-base-core and
r-cran-survival on Debian when run as root)."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from coordinator.pooling import pooled_km, pooled_summary
from site_agent.analyses.survival import summarise_survival
from site_agent.study_spec import SurvivalSpec
from tests.reference.rsurvival import dataset, rscript, survfit_reference

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
    grid = list(range(0, int(df["time"].max()) + 1))
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
