"""Rates, proportions and DerSimonian-Laird against textbook values and independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from coordinator.pooling.survival import dersimonian_laird, poisson_rate_ci, wilson_ci

# BCG vaccine trials (Colditz et al. 1994; metafor's dat.bcg): tpos, tneg, cpos, cneg
BCG = [(4, 119, 11, 128), (6, 300, 29, 274), (3, 228, 11, 209), (62, 13536, 248, 12619), (33, 5036, 47, 5761),
       (180, 1361, 372, 1079), (8, 2537, 10, 619), (505, 87886, 499, 87892), (29, 7470, 45, 7232),
       (17, 1699, 65, 1600), (186, 50448, 141, 27197), (5, 2493, 3, 2338), (27, 16886, 29, 17825)]


def bcg_log_rr():
    y = [math.log((a / (a + b)) / (c / (c + d))) for a, b, c, d in BCG]
    v = [1 / a - 1 / (a + b) + 1 / c - 1 / (c + d) for a, b, c, d in BCG]
    return y, v


def test_dersimonian_laird_matches_metafor_bcg():
    """metafor: rma(yi, vi, data = escalc("RR", ...dat.bcg), method = "DL") as printed in its docs."""
    m = dersimonian_laird(*bcg_log_rr())
    assert m.k == 13 and m.q_df == 12
    assert m.estimate == pytest.approx(-0.7141, abs=5e-5)
    assert m.se == pytest.approx(0.1787, abs=5e-5)
    assert (m.lower, m.upper) == (pytest.approx(-1.0644, abs=5e-5), pytest.approx(-0.3638, abs=5e-5))
    assert m.tau2 == pytest.approx(0.3088, abs=5e-5)
    assert m.q == pytest.approx(152.2330, abs=5e-4)
    assert m.i2 == pytest.approx(92.12, abs=5e-3)
    assert m.q_p < 1e-4


def test_dersimonian_laird_equals_a_hand_loop():
    """The textbook steps written out with plain floats on a small example."""
    y, v = [0.10, 0.30, 0.35, -0.05], [0.010, 0.020, 0.015, 0.040]
    w = [1 / x for x in v]
    fe = sum(a * b for a, b in zip(w, y)) / sum(w)
    q = sum(a * (b - fe) ** 2 for a, b in zip(w, y))
    tau2 = max(0.0, (q - 3) / (sum(w) - sum(a * a for a in w) / sum(w)))
    ws = [1 / (x + tau2) for x in v]
    re = sum(a * b for a, b in zip(ws, y)) / sum(ws)
    m = dersimonian_laird(y, v)
    assert (m.fixed, m.q, m.tau2, m.estimate) == pytest.approx((fe, q, tau2, re), rel=1e-12)
    assert m.se == pytest.approx(sum(ws) ** -0.5, rel=1e-12)
    assert m.q_p == pytest.approx(1 - stats.chi2.cdf(q, 3), rel=1e-9)
    assert m.i2 == pytest.approx(max(0, (q - 3) / q) * 100)


def test_homogeneous_sites_give_no_heterogeneity():
    m = dersimonian_laird([0.2, 0.2, 0.2], [0.01, 0.02, 0.03])
    assert m.tau2 == 0 and m.i2 == 0 and m.estimate == pytest.approx(0.2) and m.q_p == pytest.approx(1.0)
    one = dersimonian_laird([0.5], [0.04])
    assert (one.estimate, one.se, one.tau2) == (0.5, pytest.approx(0.2), 0.0) and math.isnan(one.q_p)
    with pytest.raises(ValueError):
        dersimonian_laird([0.1, 0.2], [0.0, 0.1])


@pytest.mark.parametrize("k,py", [(0, 120.0), (1, 70.9), (14, 234.812), (338, 27011.488)])
def test_poisson_ci_is_the_exact_garwood_interval(k, py):
    """Independent: the gamma-quantile form of the exact interval (Ulm 1990)."""
    rate, lo, hi = poisson_rate_ci(k, py)
    assert rate == pytest.approx(k / py * 1e5)
    assert lo == pytest.approx((stats.gamma.ppf(0.025, k) if k else 0.0) / py * 1e5, rel=1e-9)
    assert hi == pytest.approx(stats.gamma.ppf(0.975, k + 1) / py * 1e5, rel=1e-9)
    # coverage definition: P(X >= k | upper) = P(X <= k | lower) = 2.5%
    assert stats.poisson.cdf(k, hi * py / 1e5) == pytest.approx(0.025, abs=1e-9)
    if k:
        assert stats.poisson.sf(k - 1, lo * py / 1e5) == pytest.approx(0.025, abs=1e-9)


def test_wilson_ci_textbook_and_score_test_inversion():
    # Newcombe (1998), example 81/263: Wilson 0.2553 to 0.3662
    p, lo, hi = wilson_ci(81, 263)
    assert p == pytest.approx(81 / 263) and (lo, hi) == (pytest.approx(0.2553, abs=1e-4), pytest.approx(0.3662, abs=1e-4))
    # the Wilson limits are the p0 at which the score statistic equals 1.96
    for bound in (lo, hi):
        z = (81 / 263 - bound) / math.sqrt(bound * (1 - bound) / 263)
        assert abs(z) == pytest.approx(stats.norm.ppf(0.975), rel=1e-9)
    assert wilson_ci(0, 143)[1] == pytest.approx(0, abs=1e-12) and wilson_ci(0, 143)[2] == pytest.approx(0.02616, abs=1e-5)
    assert all(np.isnan(wilson_ci(0, 0)))


def test_rate_and_proportion_intervals_work_over_arrays():
    """The pooling computes every key's interval in one call; each element is the exact Garwood
    interval (gamma quantiles) or the Wilson score interval (score statistic = 1.96 at the ends),
    with NaN where the denominator is 0 or missing."""
    k = np.array([0, 1, 14, 338, 5, 3])
    py = np.array([120.0, 70.9, 234.812, 27011.488, 0.0, np.nan])
    rate, lo, hi = poisson_rate_ci(k, py)
    ok = np.array([True, True, True, True, False, False])
    assert np.isnan(rate[~ok]).all() and np.isnan(lo[~ok]).all() and np.isnan(hi[~ok]).all()
    np.testing.assert_allclose(rate[ok], k[ok] / py[ok] * 1e5, rtol=1e-12)
    np.testing.assert_allclose(lo[ok], np.where(k[ok] > 0, stats.gamma.ppf(0.025, np.maximum(k[ok], 1)), 0) / py[ok] * 1e5,
                               rtol=1e-9)
    np.testing.assert_allclose(hi[ok], stats.gamma.ppf(0.975, k[ok] + 1) / py[ok] * 1e5, rtol=1e-9)
    x, n = np.array([81, 0, 7, 40, 3]), np.array([263, 143, 7, 1000, 0])
    p, wl, wh = wilson_ci(x, n)
    assert np.isnan([p[4], wl[4], wh[4]]).all() and wl[1] == 0 and wh[2] == 1
    for i in (0, 3):
        for bound in (wl[i], wh[i]):
            z = (x[i] / n[i] - bound) / math.sqrt(bound * (1 - bound) / n[i])
            assert abs(z) == pytest.approx(stats.norm.ppf(0.975), rel=1e-9)


def test_grouped_dersimonian_laird_equals_the_scalar_one():
    import pandas as pd

    from coordinator.pooling.survival import dersimonian_laird_groups

    rng = np.random.default_rng(3)
    rows = []
    for g in range(40):
        for _ in range(int(rng.integers(1, 6))):
            rows.append({"g": g, "h": "x" if g % 2 else None, "y": rng.normal(0, 1), "v": rng.uniform(0.01, 0.5)})
    y, v = bcg_log_rr()
    rows += [{"g": 99, "h": "bcg", "y": a, "v": b} for a, b in zip(y, v)]
    frame = pd.DataFrame(rows)
    out = dersimonian_laird_groups(frame, ["g", "h"])
    sizes = frame.groupby("g").size()
    assert sorted(out["g"]) == sorted(sizes.index[sizes >= 2])
    for r in out.itertuples():
        sub = frame[frame["g"] == r.g]
        m = dersimonian_laird(sub["y"], sub["v"])
        got = (r.k, r.estimate, r.se, r.lower, r.upper, r.tau2, r.q, r.q_p, r.i2)
        assert got == pytest.approx((m.k, m.estimate, m.se, m.lower, m.upper, m.tau2, m.q, m.q_p, m.i2),
                                    rel=1e-9, abs=1e-12)
