"""KM / CIF on the study grid: site release, exact pooling, suppression, checked against lifelines
and independent numpy implementations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from lifelines import KaplanMeierFitter
from scipy.stats import norm

from coordinator.pooling.survival import (
    pool_tables,
    pooled_cif,
    pooled_km,
    pooled_summary,
)
from optima_common.results import SUPPRESSED
from site_agent.analyses.outcomes import (
    first_event,
    horizon_counts,
    observed_events,
    summarise_outcomes,
)
from site_agent.analyses.survival import plot_km, risk_table, summarise_survival
from site_agent.suppression import suppress

GRID = list(range(0, 3651, 30))
SITES = {"site_a": 900, "site_b": 350, "site_c": 120}
SEQS = ("chemo", "chemo+radio", "surgery+chemo")


def _patients(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """Per-patient rows with ties (integer days, some at 0 and on grid points) and censoring."""
    seq = rng.choice(SEQS, size=n, p=[0.5, 0.3, 0.2])
    scale = np.select([seq == "chemo", seq == "chemo+radio"], [300.0, 500.0], 1200.0)
    death = 1 + np.floor(rng.exponential(scale))  # CohortSurvival's minimumSurvivalDays = 1
    prog = np.where(rng.random(n) < 0.7, np.floor(rng.exponential(scale * 0.6)), np.nan)
    fu = np.floor(rng.uniform(0, 4200, n))
    fu = np.maximum(fu, 1.0)  # no day-0 rows: one suppressed day-0 cell would mark a whole curve
    on_grid = rng.random(n) < 0.1  # exact grid times: the ceiling must keep them
    death[on_grid] = 30.0 * rng.integers(1, 40, on_grid.sum())
    return pd.DataFrame({"seq": seq, "time_to_progression": prog, "time_to_death": death, "followup_end": fu})


@pytest.fixture(scope="module")
def sites() -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(20240607)
    return {name: _patients(rng, n) for name, n in SITES.items()}


def _surv_rows(df: pd.DataFrame) -> pd.DataFrame:
    death, fu = df["time_to_death"].to_numpy(), df["followup_end"].to_numpy()
    event = (death <= fu).astype(int)
    return pd.DataFrame({"time": np.where(event == 1, death, fu), "event": event, "seq": df["seq"].to_numpy()})


def _strata(df: pd.DataFrame, cols: list[str]) -> dict[str, pd.DataFrame]:
    out = {"overall": df[cols]}
    out.update({s: g[cols] for s, g in df.groupby("seq")})
    return out


def _site_results(sites):
    surv, outc = [], []
    for name, df in sites.items():
        rows = _surv_rows(df)
        surv.append(summarise_survival(name, "sclc", "death", _strata(rows, ["time", "event"]), GRID,
                                       estimator="kaplan_meier"))
        outc.append(summarise_outcomes(name, "sclc", _strata(df, ["time_to_progression", "time_to_death",
                                                                  "followup_end"]), GRID))
    return surv, outc


@pytest.fixture(scope="module")
def results(sites):
    return _site_results(sites)


def _ceil_grid(t: np.ndarray) -> np.ndarray:
    g = np.asarray(GRID)
    i = np.searchsorted(g, t, side="left")
    return np.where(i < len(g), g[np.minimum(i, len(g) - 1)], g[-1] + 1)


def _union(sites, level: str) -> pd.DataFrame:
    rows = pd.concat([_surv_rows(df) for df in sites.values()], ignore_index=True)
    return rows if level == "overall" else rows[rows["seq"] == level]


def _curve(df: pd.DataFrame, level: str) -> pd.DataFrame:
    return df[df["strata_level"] == level].sort_values("time").reset_index(drop=True)


def test_risk_table_counts_by_hand():
    t = np.array([0, 1, 30, 30, 31, 60, 61, 5000])
    e = np.array([1, 0, 1, 0, 1, 1, 0, 1])
    rt = risk_table(t, e, [0, 30, 60, 90])
    assert rt["n_risk"].tolist() == [8, 7, 4, 2]
    assert rt["n_event"].tolist() == [1, 1, 2, 0]
    assert rt["n_censor"].tolist() == [0, 2, 0, 2]  # 61 censored in (60, 90]; 5000 censored at the end


@pytest.mark.parametrize("level", ["overall", *SEQS])
def test_pooled_km_equals_lifelines_on_union(sites, results, level):
    km = _curve(pooled_km(results[0]), level)
    union = _union(sites, level)
    kmf = KaplanMeierFitter().fit(_ceil_grid(union["time"].to_numpy()), union["event"])
    expect = kmf.survival_function_at_times(GRID).to_numpy()
    assert not km["affected"].any()
    assert np.max(np.abs(km["survival"].to_numpy() - expect)) < 1e-12
    # Greenwood, "log" CI, computed independently from lifelines' event table
    et = kmf.event_table
    et = et[et["at_risk"] > 0]
    n, d = et["at_risk"].to_numpy(float), et["observed"].to_numpy(float)
    var = pd.Series(np.cumsum(d / (n * (n - d))), index=et.index)
    var_at = var.reindex(var.index.union(GRID)).ffill().reindex(GRID).to_numpy()
    live = km["n_risk"].to_numpy() > 0
    s = expect
    z = norm.ppf(0.975)
    lo, up = s * np.exp(-z * np.sqrt(var_at)), np.minimum(s * np.exp(z * np.sqrt(var_at)), 1)
    ok = live & (s > 0)
    assert np.allclose(km["lower"].to_numpy()[ok], lo[ok], rtol=1e-10, atol=1e-12)
    assert np.allclose(km["upper"].to_numpy()[ok], up[ok], rtol=1e-10, atol=1e-12)
    # median and its CI
    summ = pooled_summary(km)
    summ = summ.iloc[0]
    lf_med = kmf.median_survival_time_
    assert (np.isinf(lf_med) and np.isnan(summ["median_survival"])) or summ["median_survival"] == lf_med
    first = lambda v: next((GRID[k] for k in range(len(GRID)) if live[k] and v[k] <= 0.5), np.nan)
    # survfit: lower limit where the lower band reaches 0.5, upper where the upper band does;
    # bands are missing where S = 0 and then never reach it
    assert np.array_equal([summ["median_survival_95CI_lower"], summ["median_survival_95CI_higher"]],
                          [first(np.where(s > 0, lo, np.nan)), first(np.where(s > 0, up, np.nan))], equal_nan=True)
    assert summ["median_survival_95CI_lower"] <= summ["median_survival"] or np.isnan(summ["median_survival"])
    for h in (365, 730, 1826):
        k = max(i for i, g in enumerate(GRID) if g <= h)
        assert summ[f"survival_at_{h}"] == pytest.approx(float(kmf.predict(GRID[k])), abs=1e-12)


def test_site_release_matches_pooled_single_site(sites, results):
    """A site's own summary equals the pooled computation of that site alone; one site == itself."""
    res = results[0][0]
    summ = pooled_summary(pooled_km([res]))
    d = res.data[res.data["result_id"] == 3]
    ov = d[d["strata_name"] == "overall"].set_index("estimate_name")["estimate_value"]
    row = summ[summ["strata_level"] == "overall"].iloc[0]
    for k in ("median_survival", "survival_at_365", "survival_at_730_95CI_upper"):
        assert float(ov[k]) == pytest.approx(row[k], rel=1e-9)
    assert set(res.settings["result_type"]) == {"survival_estimates", "survival_events", "survival_summary"}
    ev = res.data[res.data["result_id"] == 2]
    assert set(ev["estimate_name"]) == {"n_risk_count", "n_events_count", "n_censor_count"}
    assert set(ev["additional_name"]) == {"time"}


def test_suppressed_cells_mark_pooled_curve(sites):
    """Suppression at 5. With 30-day intervals and a 120-patient site every curve is affected from
    the first interval on, so a yearly grid is used here to have both affected and clean rows."""
    grid = list(range(0, 3651, 365))
    res = [summarise_survival(n, "sclc", "death", _strata(_surv_rows(df), ["time", "event"]), grid,
                              estimator="kaplan_meier") for n, df in sites.items()]
    clean = pooled_km(res)
    sup = [suppress(r, 5) for r in res]
    km = pooled_km(sup)
    assert km["affected"].any() and not km["affected"].all()
    dashed = set()
    for r in sup:
        d = r.data[(r.data["result_id"] == 2) & (r.data["estimate_value"] == SUPPRESSED)]
        dashed |= set(zip(d["strata_level"], pd.to_numeric(d["additional_level"])))
    for level, t in km.groupby("strata_level"):
        t = t.sort_values("time")
        first = min((tt for (lv, tt) in dashed if lv == level), default=None)
        expect_aff = t["time"] >= first if first is not None else pd.Series(False, index=t.index)
        assert (t["affected"] == expect_aff).all()
        assert t.loc[t["affected"], ["survival", "lower", "upper"]].isna().all().all()
        c = clean[clean["strata_level"] == level].set_index("time")
        ok = t[~t["affected"]].set_index("time")
        assert np.array_equal(ok["survival"], c.loc[ok.index, "survival"])  # unaffected: exactly the clean value
    summ = pooled_summary(km)
    for _, row in summ.iterrows():
        if not row["median_determined"]:
            assert np.isnan(row["median_survival"])


def test_cif_matches_independent_aalen_johansen(sites, results):
    cif = pooled_cif(results[1])
    allp = pd.concat(sites.values(), ignore_index=True)
    for level in ("overall", *SEQS):
        df = allp if level == "overall" else allp[allp["seq"] == level]
        t, cause = first_event(df["time_to_progression"], df["time_to_death"], df["followup_end"])
        tg = _ceil_grid(t)
        # textbook Aalen-Johansen: product of 3-state transition matrices at each distinct time
        P = np.eye(3)
        got = {}
        for u in np.unique(tg):
            n = np.sum(tg >= u)
            d1, d2 = np.sum((tg == u) & (cause == 1)), np.sum((tg == u) & (cause == 2))
            dA = np.zeros((3, 3))
            dA[0, 1], dA[0, 2], dA[0, 0] = d1 / n, d2 / n, -(d1 + d2) / n
            P = P @ (np.eye(3) + dA)
            got[u] = P[0].copy()
        times = np.array(sorted(got))
        c = _curve(cif, level)
        for _, r in c.iterrows():
            k = np.searchsorted(times, r["time"], side="right") - 1
            p = got[times[k]] if k >= 0 else np.array([1.0, 0, 0])
            assert abs(r["cif"] - p[1]) < 1e-9 and abs(r["cif_competing"] - p[2]) < 1e-9
            assert abs(r["survival"] - p[0]) < 1e-9
        kmf = KaplanMeierFitter().fit(tg, cause > 0)  # event-free survival cross-check
        assert np.allclose(c["survival"], kmf.survival_function_at_times(GRID).to_numpy(), atol=1e-12)


def test_cif_suppression_marks_rows(results):
    sup = [suppress(r, 5) for r in results[1]]
    cif = pooled_cif(sup)
    assert cif["affected"].any()
    assert cif.loc[cif["affected"], ["cif", "cif_competing"]].isna().all().all()
    pooled = pool_tables(sup, "cumulative_incidence_events")
    assert (pooled.loc[pooled["suppressed"], "n_event"]).isna().all()


def test_horizon_counts_by_hand():
    prog = np.array([10, np.nan, 200, 50, 400, np.nan])
    death = np.array([100, 95, np.nan, 40, 5000, np.nan])
    fu = np.array([500, 500, 150, 500, 4000, 4000])
    p, d, f = observed_events(prog, death, fu)
    # prog 200 after fu 150 -> unobserved; prog 50 after death 40 -> unobserved; death 5000 after fu
    assert np.array_equal(p, [10, np.nan, np.nan, np.nan, 400, np.nan], equal_nan=True)
    rows = {(r["outcome"], r["label"]): r for r in horizon_counts(p, d, f)}
    assert rows[("death", "within 3 months")]["count"] == 1  # day 40
    assert rows[("death", "within 6 months")]["count"] == 3
    assert rows[("death", "after 3 months")]["count"] == 2  # 95, 100
    assert rows[("death", "after 3 months")]["population"] == 5  # all but the day-40 death
    assert rows[("progression", "after 3 months")]["count"] == 1  # day 400
    # event-free and followed > 91: #2 (death 95), #3 (fu 150), #5 (prog 400), #6
    assert rows[("progression", "after 3 months")]["population"] == 4
    assert rows[("death", "after 10 years")]["population"] == 2  # #5, #6 alive and followed to day 4000
    assert rows[("death", "after 10 years")]["count"] == 0  # the day-5000 death is after follow-up


def test_outcome_result_layout(results):
    res = results[1][0]
    h = res.data[res.data["result_id"] == 1]
    assert {"count", "population_count", "percentage"} <= set(h["estimate_name"])
    row = h[(h["strata_name"] == "overall") & (h["variable_level"] == "within 12 months")
            & (h["variable_name"] == "death")].set_index("estimate_name")["estimate_value"]
    assert float(row["percentage"]) == pytest.approx(100 * int(row["count"]) / int(row["population_count"]))


def test_plot_km_writes_png(results, tmp_path):
    out = plot_km(suppress(results[0][1], 5), tmp_path / "km.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000


def _summary(time, event, grid, estimator, horizons=(365, 730, 1826)):
    res = summarise_survival("s", "t", "death", {"overall": pd.DataFrame({"time": time, "event": event})}, grid,
                             horizons=horizons, estimator=estimator)
    d = res.data[res.data["result_id"] == 3].set_index("estimate_name")["estimate_value"]
    return ({k: float(v) if v is not None else np.nan for k, v in d.items()},
            pooled_summary(pooled_km([res]), list(horizons)).iloc[0])


def test_median_ci_limits_all_events_1_to_100():
    """Events at days 1..100, no censoring, daily grid. By hand (Greenwood, log CI): S(t) = 1 - t/100,
    var log S = sum_{i<=t} 1/((101-i)(100-i)) = t/(100(100-t)); the lower limit is the first day the
    lower band is <= 0.5 and the upper limit the first day the upper band is (R gives 42 and 61)."""
    t = np.arange(1, 101)
    z = norm.ppf(0.975)
    s = 1 - t / 100
    se = np.sqrt(t / (100 * np.maximum(100 - t, 1)))
    lo_day = int(t[np.argmax(s * np.exp(-z * se) <= 0.5)])
    up_day = int(t[np.argmax(np.minimum(s * np.exp(z * se), 1) <= 0.5)])
    assert (lo_day, up_day) == (42, 61)
    site, pooled = _summary(t, np.ones(100, int), list(range(101)), "kaplan_meier")
    # S = 0.5 exactly from day 50 to 51: survfit takes the midpoint
    for got in (site, pooled):
        assert (got["median_survival"], got["median_survival_95CI_lower"], got["median_survival_95CI_higher"]) == \
            (50.5, 42.0, 61.0)


def test_not_estimable_past_follow_up_grid_end_and_where_s_is_zero():
    """By hand: deaths at 5, 10, 15, 20 (S = .75, .5, .25, 0). survfit: median 12.5 (S sits at
    exactly 0.5 from 10 to 15), lower limit 5 (lower band .75 exp(-1.96 sqrt(1/12)) = .43), upper
    limit missing (the upper band is clipped at 1 until S = 0, where the bands are missing)."""
    t, e = np.array([5, 10, 15, 20]), np.ones(4, int)
    site, pooled = _summary(t, e, [0, 5, 10, 15, 20, 25], "kaplan_meier", horizons=(20, 25, 30))
    for got in (site, pooled):
        assert got["median_survival"] == 12.5
        assert got["median_survival_95CI_lower"] == 5.0
        assert np.isnan(got["median_survival_95CI_higher"])
        assert got["survival_at_20"] == 0.0 and np.isnan(got["survival_at_20_95CI_lower"])
        assert got["survival_at_25"] == 0.0  # everybody has died: S stays 0
        assert np.isnan(got["survival_at_30"])  # after the grid's last point: not estimable
    # censored at 20: nobody is followed into (20, 25], so S(25) is not estimable
    site, pooled = _summary(t, np.array([1, 0, 1, 0]), [0, 5, 10, 15, 20, 25], "kaplan_meier", horizons=(20, 25))
    for got in (site, pooled):
        assert got["survival_at_20"] == pytest.approx(0.75 * 0.5)
        assert np.isnan(got["survival_at_25"])


def test_actuarial_estimator_by_hand():
    """Life-table estimator on a 2-interval grid, computed by hand."""
    # interval (0,10]: 10 at risk, 2 events, 4 censored -> n' = 8, S1 = 1 - 2/8 = 0.75
    # interval (10,20]: 4 at risk, 1 event, 1 censored (2 more in (20, 40]) -> n' = 3.5, S2 = 0.75 * (1 - 1/3.5)
    t = np.array([3, 4, 2, 5, 6, 7, 12, 15, 25, 30])
    e = np.array([1, 1, 0, 0, 0, 0, 1, 0, 1, 0])  # (20,40]: 2 at risk, 1 event, 1 censored -> n' = 1.5
    km = pooled_km([summarise_survival("s", "t", "d", {"overall": pd.DataFrame({"time": t, "event": e})},
                                       [0, 10, 20, 40], estimator="actuarial")])
    s = km.sort_values("time")["survival"].to_numpy()
    assert s == pytest.approx([1.0, 0.75, 0.75 * (1 - 1 / 3.5), 0.75 * (1 - 1 / 3.5) * (1 - 1 / 1.5)], abs=1e-15)
    var = 2 / (8 * 6) + 1 / (3.5 * 2.5)
    assert km.sort_values("time")["lower"].iloc[2] == pytest.approx(s[2] * np.exp(-norm.ppf(0.975) * np.sqrt(var)))
    # life-table median: S crosses 0.5 in (20, 40]: 20 + (s2 - 0.5) / (s2 - s3) * 20
    summ = pooled_summary(km, [20, 40, 50]).iloc[0]
    assert summ["median_survival"] == pytest.approx(20 + (s[2] - 0.5) / (s[2] - s[3]) * 20, abs=1e-12)
    assert summ["survival_at_20"] == pytest.approx(s[2]) and np.isnan(summ["survival_at_50"])
