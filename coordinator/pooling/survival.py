"""Exact pooling of grid risk tables released by several sites (KM and Aalen-Johansen CIF).

Sites release, per stratum and grid time, ``n_risk_count``, ``n_events_count``,
``n_censor_count`` (``survival_events``, CohortSurvival layout) and for competing risks also
``n_competing_events_count`` (``cumulative_incidence_events``).  Times are discretised to
the same study grid at every site (ceiling to the grid), so summing the counts per
(target, stratum, outcome, time) and rebuilding the product-limit estimates gives exactly
the estimate of the pooled patient-level data - a federated "union" analysis without rows.

Suppressed cells (``"-"``) are never guessed: a pooled row whose counts include a
suppressed value from any site has NaN counts, and that row and every later row of the
same curve are ``affected`` (survival/CIF and CIs NaN), because the product-limit estimate
at ``t_k`` depends on all earlier steps.  Medians and horizon survivals are reported only
where they are determined by unaffected rows.

Also here: the exact Poisson CI of a rate (as IncidencePrevalence), the Wilson CI of a
proportion, and the DerSimonian-Laird random-effects meta-analysis (with Cochran's Q, its
p-value, tau^2 and I^2) used where raw pooling is not valid.

The product-limit arithmetic is re-implemented here (the coordinator imports only
``optima_common.results``), with the estimator the sites name in their settings
(``estimator``: ``actuarial`` = censored at risk for half their interval, the default;
``kaplan_meier``; results without the setting are ``kaplan_meier``, the earlier release):
Greenwood variance of log S with survfit's default "log" CI (missing where S = 0), median
by survfit's rule for kaplan_meier and linear within the interval for actuarial, its CI
limits by the same rule on the lower band (lower limit) and the upper band (upper limit);
survival at a horizon = S at that grid time, missing after the grid or the follow-up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import pandas as pd
from scipy.stats import chi2

from optima_common.results import SUPPRESSED, SummarisedResult

KEY = ["group_name", "group_level", "strata_name", "strata_level", "variable_name", "variable_level"]
Z95 = NormalDist().inv_cdf(0.975)
DEFAULT_HORIZONS = (365, 730, 1826)
SURVIVAL_COUNTS = {"n_risk_count": "n_risk", "n_events_count": "n_event", "n_censor_count": "n_censor"}
CIF_COUNTS = {**SURVIVAL_COUNTS, "n_competing_events_count": "n_competing"}
ESTIMATORS = ("actuarial", "kaplan_meier")


def survival_estimator(results: Sequence[SummarisedResult], result_type: str = "survival_events") -> str:
    """The estimator the sites used for ``result_type``; they must all agree."""
    names = set()
    for r in results:
        st = r.settings[r.settings["result_type"] == result_type]
        col = st["estimator"] if "estimator" in st else pd.Series(["kaplan_meier"] * len(st), dtype=object)
        names |= {str(v) if isinstance(v, str) and v else "kaplan_meier" for v in col}
    if len(names) > 1:
        raise ValueError(f"sites used different survival estimators: {sorted(names)}")
    name = names.pop() if names else "kaplan_meier"
    if name not in ESTIMATORS:
        raise ValueError(f"unknown survival estimator {name!r}")
    return name


def _site_table(result: SummarisedResult, result_type: str, counts: dict[str, str]) -> pd.DataFrame:
    """One site's risk table, wide: KEY + time + counts (float, NaN = suppressed) + suppressed flag."""
    ids = set(result.settings.loc[result.settings["result_type"] == result_type, "result_id"])
    d = result.data[result.data["result_id"].isin(ids) & result.data["estimate_name"].isin(list(counts))]
    if d.empty:
        return pd.DataFrame(columns=KEY + ["cdm_name", "time", *counts.values(), "suppressed"])
    if (d["additional_name"] != "time").any():
        raise ValueError(f"{result_type} rows must carry additional_name 'time'")
    d = d.assign(time=pd.to_numeric(d["additional_level"]).astype("int64"),
                 value=pd.to_numeric(d["estimate_value"].where(d["estimate_value"] != SUPPRESSED), errors="raise"),
                 sup=(d["estimate_value"] == SUPPRESSED) | d["estimate_value"].isna())
    keys = ["cdm_name", *KEY, "time"]
    wide = d.groupby([*keys, "estimate_name"], dropna=False)["value"].first().unstack("estimate_name")
    wide = wide.reindex(columns=list(counts)).rename(columns=counts)
    sup = d.groupby(keys, dropna=False)["sup"].any()
    wide["suppressed"] = sup.reindex(wide.index).to_numpy() | wide.isna().any(axis=1).to_numpy()
    return wide.reset_index()


def pool_tables(results: Sequence[SummarisedResult], result_type: str = "survival_events",
                counts: dict[str, str] | None = None) -> pd.DataFrame:
    """Sum the sites' risk tables per KEY and time.

    Returns KEY + ``time`` + pooled counts (NaN where any site's cell is suppressed) +
    ``n_sites`` + ``suppressed`` (this row) + ``affected`` (this row or an earlier one of the
    curve is suppressed).  A site that lacks a curve contributes zeros; a site whose curve lacks
    grid times that another site has is an error (different grids).
    """
    counts = counts or (CIF_COUNTS if result_type == "cumulative_incidence_events" else SURVIVAL_COUNTS)
    tabs = [_site_table(r, result_type, counts) for r in results]
    allt = pd.concat(tabs, ignore_index=True)
    if allt.empty:
        raise ValueError(f"no {result_type} rows in the results")
    if allt.duplicated(["cdm_name", *KEY, "time"]).any():
        raise ValueError("the same cdm_name/curve/time appears twice (a site given twice?)")
    grids = allt.groupby(["cdm_name", *KEY], dropna=False)["time"].apply(lambda s: tuple(sorted(s)))
    per_curve = grids.groupby(level=list(range(1, len(KEY) + 1)), dropna=False).nunique()
    if (per_curve > 1).any():
        raise ValueError("sites released different time grids for the same curve")
    cols = list(counts.values())
    g = allt.groupby([*KEY, "time"], dropna=False, sort=True)
    pooled = g[cols].sum(min_count=1)
    pooled["suppressed"] = g["suppressed"].any()
    pooled["n_sites"] = g["cdm_name"].nunique()
    pooled = pooled.reset_index()
    pooled.loc[pooled["suppressed"], cols] = np.nan
    pooled["affected"] = pooled.groupby(KEY, dropna=False, sort=False)["suppressed"].cummax().astype(bool)
    return pooled


def _km(t: pd.DataFrame, z: float, estimator: str) -> pd.DataFrame:
    n, d = t["n_risk"].to_numpy(float), t["n_event"].to_numpy(float)
    if estimator == "actuarial":
        n = n - t["n_censor"].to_numpy(float) / 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        surv = np.cumprod(np.where(n > 0, 1.0 - d / n, 1.0))
        se = np.sqrt(np.cumsum(np.where((n > 0) & (n > d), d / (n * (n - d)), 0.0)))
        pos = surv > 0
        lower = np.where(pos, surv * np.exp(-z * se), np.nan)
        upper = np.where(pos, np.minimum(surv * np.exp(z * se), 1.0), np.nan)
    aff = t["affected"].to_numpy(bool)
    out = t.copy()
    for name, v in (("survival", surv), ("se_log", np.where(pos, se, np.nan)), ("lower", lower), ("upper", upper)):
        out[name] = np.where(aff, np.nan, v)
    out["estimator"] = estimator
    return out


def pooled_km(results: Sequence[SummarisedResult], *, z: float = Z95) -> pd.DataFrame:
    """Pooled product-limit curves with Greenwood "log" CIs per curve from the sites'
    ``survival_events``, with the estimator the sites name (column ``estimator``)."""
    estimator = survival_estimator(results)
    pooled = pool_tables(results, "survival_events", SURVIVAL_COUNTS)
    parts = [_km(t, z, estimator) for _, t in pooled.groupby(KEY, dropna=False, sort=True)]
    return pd.concat(parts, ignore_index=True)


def pooled_cif(results: Sequence[SummarisedResult]) -> pd.DataFrame:
    """Pooled Aalen-Johansen CIF (``cif``, ``cif_competing``, event-free ``survival``) per curve."""
    pooled = pool_tables(results, "cumulative_incidence_events", CIF_COUNTS)
    parts = []
    for _, t in pooled.groupby(KEY, dropna=False, sort=True):
        n = t["n_risk"].to_numpy(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            h1 = np.where(n > 0, t["n_event"].to_numpy(float) / n, 0.0)
            h2 = np.where(n > 0, t["n_competing"].to_numpy(float) / n, 0.0)
        surv = np.cumprod(1.0 - h1 - h2)
        prev = np.concatenate([[1.0], surv[:-1]])
        aff = t["affected"].to_numpy(bool)
        t = t.copy()
        for name, v in (("survival", surv), ("cif", np.cumsum(prev * h1)), ("cif_competing", np.cumsum(prev * h2))):
            t[name] = np.where(aff, np.nan, v)
        parts.append(t)
    return pd.concat(parts, ignore_index=True)


def _quantile(time: np.ndarray, v: np.ndarray, aff: np.ndarray, estimator: str, q: float = 0.5) -> float:
    """When the curve first reaches q, among the unaffected prefix (missing values never do);
    NaN if undetermined or not reached. kaplan_meier: survfit's rule (midpoint of a flat stretch
    exactly at q); actuarial: linear within the interval."""
    for k in range(len(v)):
        if aff[k]:
            return float("nan")
        if v[k] <= q:
            if estimator == "kaplan_meier":
                if abs(v[k] - q) >= 1e-12:
                    return float(time[k])
                for j in range(k + 1, len(v)):
                    if aff[j]:
                        return float("nan")
                    if v[j] < q - 1e-12:
                        return float((time[k] + time[j]) / 2)
                return float(time[k])
            if k == 0 or not np.isfinite(v[k - 1]) or v[k - 1] == v[k]:
                return float(time[k])
            return float(time[k - 1] + (v[k - 1] - q) / (v[k - 1] - v[k]) * (time[k] - time[k - 1]))
    return float("nan")


def pooled_summary(km: pd.DataFrame, horizons: Sequence[int] = DEFAULT_HORIZONS) -> pd.DataFrame:
    """Per curve of :func:`pooled_km`: median (+ CI) and survival (+ CI) at the horizons.

    ``median_determined`` is False when the answer lies behind a suppressed row (NaN then);
    a median that is simply not reached is NaN with ``median_determined`` True. A horizon
    after the grid's last time or after the follow-up is missing (not estimable).
    """
    out = []
    for key, t in km.groupby(KEY, dropna=False, sort=True):
        t = t.sort_values("time")
        estimator = str(t["estimator"].iloc[0]) if "estimator" in t else "kaplan_meier"
        time, aff = t["time"].to_numpy(), t["affected"].to_numpy(bool)
        s = t["survival"].to_numpy()
        reached = np.flatnonzero(np.nan_to_num(s, nan=1.0) <= 0.5)
        row = dict(zip(KEY, key, strict=True))
        row.update({"n": t["n_risk"].iloc[0], "median_survival": _quantile(time, s, aff, estimator),
                    "median_survival_95CI_lower": _quantile(time, t["lower"].to_numpy(), aff, estimator),
                    "median_survival_95CI_higher": _quantile(time, t["upper"].to_numpy(), aff, estimator),
                    "median_determined": bool(len(reached)) or not aff.any()})
        for h in horizons:
            k = int(np.searchsorted(time, h, side="right")) - 1
            seen = 0 <= k and h <= time[-1] and (t["n_risk"].iloc[k] > 0 or s[k] == 0)
            vals = (s[k], t["lower"].iloc[k], t["upper"].iloc[k]) if seen else (np.nan,) * 3
            row[f"survival_at_{h}"], row[f"survival_at_{h}_95CI_lower"], row[f"survival_at_{h}_95CI_upper"] = vals
        out.append(row)
    return pd.DataFrame(out)


# ---------- rates, proportions, meta-analysis ----------

def poisson_rate_ci(events, person_years, *, per: float = 100_000.0, level: float = 0.95):
    """Rate per ``per`` person-years with the exact (Garwood) Poisson CI, as IncidencePrevalence:
    (rate, lower, upper), element-wise over arrays (floats for scalars); NaN where the
    person-years are not above 0."""
    e, t = np.broadcast_arrays(np.asarray(events, dtype=float), np.asarray(person_years, dtype=float))
    a = (1 - level) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        ok = t > 0
        lower = np.where(e > 0, chi2.ppf(a, 2 * e) / 2, 0.0)
        upper = chi2.ppf(1 - a, 2 * (e + 1)) / 2
        out = tuple(np.where(ok, x / t * per, np.nan) for x in (e, lower, upper))
    return _scalars(out, events, person_years)


def wilson_ci(x, n, *, level: float = 0.95):
    """Proportion x/n with the Wilson score interval: (p, lower, upper), element-wise over arrays
    (floats for scalars); NaN where n is not above 0."""
    k, m = np.broadcast_arrays(np.asarray(x, dtype=float), np.asarray(n, dtype=float))
    z = NormalDist().inv_cdf(1 - (1 - level) / 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / m
        centre = (p + z * z / (2 * m)) / (1 + z * z / m)
        half = z * np.sqrt(p * (1 - p) / m + z * z / (4 * m * m)) / (1 + z * z / m)
        lo = np.where(k <= 0, 0.0, np.maximum(0.0, centre - half))
        hi = np.where(k >= m, 1.0, np.minimum(1.0, centre + half))
        out = tuple(np.where(m > 0, v, np.nan) for v in (p, lo, hi))
    return _scalars(out, x, n)


def _scalars(out: tuple, *inputs):
    return tuple(float(v) for v in out) if all(np.ndim(i) == 0 for i in inputs) else out


@dataclass(frozen=True)
class MetaResult:
    """DerSimonian-Laird random-effects pooling of k estimates ``y`` with variances ``v``."""

    k: int
    estimate: float  # random effects, on the scale of y
    se: float
    lower: float
    upper: float
    fixed: float  # inverse-variance fixed effect
    tau2: float
    q: float
    q_df: int
    q_p: float
    i2: float  # percent, 0-100


def dersimonian_laird(y: Sequence[float], v: Sequence[float], *, level: float = 0.95) -> MetaResult:
    """Random-effects meta-analysis (DerSimonian & Laird 1986) with Cochran's Q and Higgins' I^2."""
    y, v = np.asarray(y, float), np.asarray(v, float)
    if len(y) != len(v) or len(y) < 1 or (v <= 0).any() or not np.isfinite(np.r_[y, v]).all():
        raise ValueError("meta-analysis needs k >= 1 finite estimates with positive variances")
    z = NormalDist().inv_cdf(1 - (1 - level) / 2)
    w = 1.0 / v
    fixed = float((w * y).sum() / w.sum())
    q = float((w * (y - fixed) ** 2).sum())
    df = len(y) - 1
    c = float(w.sum() - (w * w).sum() / w.sum())
    tau2 = max(0.0, (q - df) / c) if df > 0 else 0.0
    ws = 1.0 / (v + tau2)
    est = float((ws * y).sum() / ws.sum())
    se = float(np.sqrt(1.0 / ws.sum()))
    i2 = max(0.0, (q - df) / q) * 100 if q > 0 else 0.0
    p = float(chi2.sf(q, df)) if df > 0 else float("nan")
    return MetaResult(len(y), est, se, est - z * se, est + z * se, fixed, tau2, q, df, p, i2)


def dersimonian_laird_groups(frame: pd.DataFrame, by: list[str], y: str = "y", v: str = "v",
                             *, level: float = 0.95) -> pd.DataFrame:
    """:func:`dersimonian_laird` for many groups at once (vectorised; groups with k >= 2 only).

    Returns one row per group: ``by`` + k, estimate, se, lower, upper, tau2, q, q_df, q_p, i2.
    """
    z = NormalDist().inv_cdf(1 - (1 - level) / 2)
    f = frame[by].copy()
    f["w"] = 1.0 / frame[v].to_numpy(float)
    f["y"] = frame[y].to_numpy(float)
    f["wy"], f["wyy"], f["ww"] = f["w"] * f["y"], f["w"] * f["y"] ** 2, f["w"] ** 2
    g = f.groupby(by, dropna=False, sort=False)
    s = g[["w", "wy", "wyy", "ww"]].sum()
    s["k"] = g.size()
    s = s[s["k"] >= 2]
    df = s["k"] - 1
    q = np.maximum(s["wyy"] - s["wy"] ** 2 / s["w"], 0.0)
    c = s["w"] - s["ww"] / s["w"]
    s["tau2"] = np.maximum(0.0, (q - df) / c)
    s["q"], s["q_df"] = q, df
    s["q_p"] = chi2.sf(q, df)
    s["i2"] = np.where(q > 0, np.maximum(0.0, (q - df) / q.where(q > 0, 1.0)) * 100, 0.0)
    f = f.merge(s[["tau2"]].reset_index(), on=by, how="inner")
    f["ws"] = 1.0 / (1.0 / f["w"] + f["tau2"])
    f["wsy"] = f["ws"] * f["y"]
    r = f.groupby(by, dropna=False, sort=False)[["ws", "wsy"]].sum()
    s = s.join(r)
    s["estimate"] = s["wsy"] / s["ws"]
    s["se"] = np.sqrt(1.0 / s["ws"])
    s["lower"], s["upper"] = s["estimate"] - z * s["se"], s["estimate"] + z * s["se"]
    return s[["k", "estimate", "se", "lower", "upper", "tau2", "q", "q_df", "q_p", "i2"]].reset_index()
