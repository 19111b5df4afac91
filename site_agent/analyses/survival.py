"""Kaplan-Meier survival released as risk tables on a fixed time grid (CohortSurvival layout).

Mirrors CohortSurvival ``estimateSingleEventSurvival()`` (result types
``survival_estimates``, ``survival_events``, ``survival_summary``; docs/result_layouts.md §5),
which calls ``survival::survfit`` with its defaults.  What is released is chosen so that
the coordinator can pool sites *exactly* from the released counts:

* **Time is discretised to the study grid** ``t_0 = 0 < t_1 < ... < t_K`` (days, from the
  study spec, the same at every site): a time ``t`` with ``t_{k-1} < t <= t_k`` falls in
  interval ``k``; ``t = 0`` stays at ``t_0``.  Times after ``t_K`` are administratively
  censored at ``t_K``.  Released per grid time: ``n_k`` = at risk at the start of interval ``k``
  (true time > t_{k-1}), ``d_k`` events and ``c_k`` censorings in ``(t_{k-1}, t_k]``.
  Summing ``n/d/c`` over sites and rebuilding gives exactly the estimate of the pooled
  patient-level data on the same grid.
* **Estimator** (setting ``estimator``): ``actuarial`` (the default; the life-table
  correction) counts a person censored inside an interval as at risk for half of it,
  ``S(t_k) = S(t_{k-1}) * (1 - d_k / (n_k - c_k / 2))``; without it every person censored
  inside an interval stays at risk for all its events and a coarse grid biases S upward
  (benchmarks/bench_survival_grid.py measures it on R's public datasets).  Known limit: people
  followed beyond ``t_K`` are counted as censored in the last interval, so the actuarial
  ``S(t_K)`` is slightly low; study specs keep their summary horizons before ``t_K``.  ``kaplan_meier``
  uses ``n_k``: the ordinary KM of the grid-discretised times, which equals survfit's exact
  KM when the grid holds every event time (a daily grid).
* **Confidence intervals**: Greenwood variance of ``log S``, ``var = sum d/(n'(n'-d))`` with
  the effective ``n'`` of the estimator, survfit's default ``conf.type = "log"``:
  ``S * exp(+-z se)``, upper clipped to 1; missing where ``S = 0``.
* **Median** (and its CI): for ``kaplan_meier`` survfit's rule - the first grid time where
  ``S <= 0.5``, the midpoint to the next drop where ``S`` sits exactly at 0.5; for
  ``actuarial`` the life-table median, linear within the interval where ``S`` crosses 0.5.
  The CI limits are the same rule on the bands: lower limit from the lower band, upper
  limit from the upper band; missing where a band does not reach 0.5 (missing bands where
  ``S = 0`` never count as reaching it).
* **Survival at horizons** (1/2/5 years = 365/730/1826 days, grid points): ``S`` at the
  horizon; missing (not estimable) when the horizon lies after the grid's last point or
  after the follow-up (nobody at risk there and ``S`` not already 0).

Deviations from CohortSurvival: estimates are written to 10 significant digits, not rounded
to 4 dp; the curve is on the grid (CohortSurvival uses every ``estimateGap`` day of exact
times); ``survival_events`` holds every grid time (zeros after follow-up ends) so that
pooling needs no guessing; the horizon survival lives in ``survival_summary`` as
``survival_at_<days>[_95CI_lower|_95CI_upper]``; no ``survival_attrition`` and no
restricted mean.  Known limit: the risk-table rows are linked over time
(``n_risk(k+1) = n_risk(k) - d(k) - c(k)``) and the KM steps reveal ``d/n``; the generic
suppression families do not cover these links (same as in CohortSurvival).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd

from optima_common.results import OVERALL, SUPPRESSED, SummarisedResult
from site_agent.diagnostics.base import fmt_float, settings_row

RESULT_TYPES = ("survival_estimates", "survival_events", "survival_summary")
ESTIMATORS = ("actuarial", "kaplan_meier")
DEFAULT_HORIZONS = (365, 730, 1826)
Z95 = NormalDist().inv_cdf(0.975)
_COUNTS = ("n_risk", "n_event", "n_censor")


def check_grid(grid: Sequence[int]) -> np.ndarray:
    """The grid as an int array; it must start at 0 and increase strictly."""
    g = np.asarray(grid, dtype=np.int64)
    if g.ndim != 1 or len(g) < 2 or g[0] != 0 or np.any(np.diff(g) <= 0):
        raise ValueError("grid must be strictly increasing integers starting at 0, with >= 2 points")
    return g


def grid_index(time: np.ndarray, grid: Sequence[int]) -> np.ndarray:
    """Index of the grid point each time is rounded UP to; times after the grid -> last index."""
    g = check_grid(grid)
    t = np.asarray(time, dtype=float)
    if np.isnan(t).any() or (t < 0).any():
        raise ValueError("times must be non-negative and not missing")
    return np.minimum(np.searchsorted(g, t, side="left"), len(g) - 1)


def risk_table(time: np.ndarray, event: np.ndarray, grid: Sequence[int]) -> pd.DataFrame:
    """Risk table on the grid: one row per grid time ``t_k`` with ``n_risk`` (at risk at ``t_k``),
    ``n_event`` and ``n_censor`` in ``(t_{k-1}, t_k]`` (row 0: times equal to 0).

    ``event`` is 1 (event) / 0 (censored).  Rows sum consistently:
    ``n_risk[k+1] = n_risk[k] - n_event[k] - n_censor[k]``.
    """
    g = check_grid(grid)
    ev = np.asarray(event)
    if len(ev) != len(time) or not np.isin(ev, (0, 1)).all():
        raise ValueError("event must be 0/1 and as long as time")
    idx = grid_index(time, g)
    ev = ev.astype(bool) & (np.asarray(time, dtype=float) <= g[-1])  # after the grid: censored at its end
    d = np.bincount(idx[ev], minlength=len(g))
    c = np.bincount(idx[~ev], minlength=len(g))
    n = (d + c)[::-1].cumsum()[::-1]
    return pd.DataFrame({"time": g, "n_risk": n, "n_event": d, "n_censor": c}).astype("int64")


def _estimator(name: str) -> str:
    if name not in ESTIMATORS:
        raise ValueError(f"unknown survival estimator {name!r}; expected one of {ESTIMATORS}")
    return name


def km_from_table(table: pd.DataFrame, z: float = Z95, estimator: str = "actuarial") -> pd.DataFrame:
    """Product-limit estimate with Greenwood "log" CIs from a risk table (columns time, n_risk,
    n_event, n_censor); ``estimator`` "actuarial" (censored at risk for half the interval) or
    "kaplan_meier".

    Adds ``survival``, ``se_log`` (sd of log S), ``lower``, ``upper`` (missing where S = 0).
    Rows after the risk set is empty keep the last value (they are not released).
    """
    n = table["n_risk"].to_numpy(dtype=float)
    d = table["n_event"].to_numpy(dtype=float)
    if _estimator(estimator) == "actuarial":
        n = n - table["n_censor"].to_numpy(dtype=float) / 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        step = np.where(n > 0, 1.0 - d / n, 1.0)
        gw = np.where((n > 0) & (n > d), d / (n * (n - d)), 0.0)
    surv = np.cumprod(step)
    var = np.cumsum(gw)
    se = np.sqrt(var)
    ok = surv > 0
    with np.errstate(invalid="ignore", over="ignore"):
        lower = np.where(ok, surv * np.exp(-z * se), np.nan)
        upper = np.where(ok, np.minimum(surv * np.exp(z * se), 1.0), np.nan)
    out = table.copy()
    out["survival"], out["se_log"], out["lower"], out["upper"] = surv, np.where(ok, se, np.nan), lower, upper
    return out


def quantile_time(times: np.ndarray, values: np.ndarray, estimator: str, q: float = 0.5) -> float:
    """When a curve on the grid first reaches ``q`` (missing values never do); NaN if it does not.

    kaplan_meier: survfit's rule (first time ``<= q``; where the curve sits exactly at ``q``,
    the midpoint to the next time it drops below). actuarial: linear within the interval."""
    v = np.asarray(values, dtype=float)
    t = np.asarray(times, dtype=float)
    hit = np.flatnonzero(v <= q)  # NaN compares False
    if not len(hit):
        return float("nan")
    k = int(hit[0])
    if _estimator(estimator) == "kaplan_meier":
        if abs(v[k] - q) < 1e-12:
            below = np.flatnonzero(v[k:] < q - 1e-12)
            return float((t[k] + t[k + below[0]]) / 2) if len(below) else float(t[k])
        return float(t[k])
    if k == 0 or not np.isfinite(v[k - 1]) or v[k - 1] == v[k]:
        return float(t[k])
    return float(t[k - 1] + (v[k - 1] - q) / (v[k - 1] - v[k]) * (t[k] - t[k - 1]))


def summary_from_km(km: pd.DataFrame, horizons: Sequence[int] = DEFAULT_HORIZONS,
                    estimator: str = "actuarial") -> dict[str, float]:
    """Median with CI and survival at the horizons, from :func:`km_from_table`."""
    t = km["time"].to_numpy()
    s = km["survival"].to_numpy()
    out = {
        "number_records_count": float(km["n_risk"].iloc[0]),
        "n_events_count": float(km["n_event"].sum()),
        "median_survival": quantile_time(t, s, estimator),
        "median_survival_95CI_lower": quantile_time(t, km["lower"].to_numpy(), estimator),
        "median_survival_95CI_higher": quantile_time(t, km["upper"].to_numpy(), estimator),
    }
    for h in horizons:
        k = int(np.searchsorted(t, h, side="right")) - 1
        observed = 0 <= k and h <= t[-1] and (km["n_risk"].iloc[k] > 0 or s[k] == 0)
        row = km.iloc[k]
        vals = (row["survival"], row["lower"], row["upper"]) if observed else (np.nan,) * 3
        out[f"survival_at_{h}"], out[f"survival_at_{h}_95CI_lower"], out[f"survival_at_{h}_95CI_upper"] = vals
    return out


def _num(x: float) -> str | None:
    return None if x is None or not np.isfinite(x) else fmt_float(float(x))


def summarise_survival(cdm_name: str, target_name: str, outcome_name: str,
                       strata: Mapping[str, pd.DataFrame], grid: Sequence[int], *,
                       strata_name: str = "treatment_sequence",
                       horizons: Sequence[int] = DEFAULT_HORIZONS,
                       estimator: str = "actuarial", count_rounding: int = 0) -> SummarisedResult:
    """KM per stratum as ``survival_estimates`` (1), ``survival_events`` (2), ``survival_summary`` (3).

    ``strata`` maps a strata level (e.g. a treatment sequence; the key ``"overall"`` gives the
    unstratified curve) to per-patient rows with columns ``time`` (days) and ``event`` (0/1).
    Everything released is computed from the grid risk table.  Unsuppressed.
    ``count_rounding`` (a base >= 2): the risk tables are released from rounded cumulative
    counts and every estimate is recomputed from them (:mod:`site_agent.analyses.rounding`);
    the summary's ``number_records_count`` stays the stratum's exact size.
    """
    from site_agent.analyses.rounding import SETTING, round_risk_table, setting_value

    g = check_grid(grid)
    base = {"cdm_name": cdm_name, "group_name": "target_cohort", "group_level": target_name,
            "variable_name": "outcome", "variable_level": outcome_name}
    rows: list[dict] = []
    for level in sorted(strata):
        df = strata[level]
        st = {"strata_name": OVERALL, "strata_level": OVERALL} if level == OVERALL else \
            {"strata_name": strata_name, "strata_level": str(level)}
        exact = risk_table(df["time"].to_numpy(), df["event"].to_numpy(), g)
        km = km_from_table(round_risk_table(exact, count_rounding), estimator=estimator)
        for r in km.itertuples(index=False):
            add = {"additional_name": "time", "additional_level": str(int(r.time))}
            for est, val in (("n_risk_count", r.n_risk), ("n_events_count", r.n_event),
                             ("n_censor_count", r.n_censor)):
                rows.append({**base, **st, **add, "result_id": 2, "estimate_name": est,
                             "estimate_type": "numeric", "estimate_value": str(int(val))})
            if r.n_risk > 0:
                for est, val in (("estimate", r.survival), ("estimate_95CI_lower", r.lower),
                                 ("estimate_95CI_upper", r.upper)):
                    rows.append({**base, **st, **add, "result_id": 1, "estimate_name": est,
                                 "estimate_type": "numeric", "estimate_value": _num(val)})
        summary = summary_from_km(km, horizons, estimator)
        summary["number_records_count"] = float(len(df))
        for est, val in summary.items():
            rows.append({**base, **st, "additional_name": OVERALL, "additional_level": OVERALL,
                         "result_id": 3, "estimate_name": est, "estimate_type": "numeric",
                         "estimate_value": _num(val) if "count" not in est else str(int(val))})
    common = {"analysis_type": "single_event", "outcome": outcome_name, "competing_outcome": "none",
              "time_grid": ",".join(str(int(x)) for x in g), "time_discretisation": "ceiling_to_grid",
              "estimator": _estimator(estimator), "conf_type": "log", "horizons": ",".join(str(int(h)) for h in horizons)}
    if count_rounding >= 2:
        common[SETTING] = setting_value(count_rounding)
    settings = [settings_row(i + 1, rt, **common) for i, rt in enumerate(RESULT_TYPES)]
    data = pd.DataFrame(rows, columns=["result_id", "cdm_name", "group_name", "group_level", "strata_name",
                                       "strata_level", "variable_name", "variable_level", "estimate_name",
                                       "estimate_type", "estimate_value", "additional_name", "additional_level"])
    return SummarisedResult(data, pd.DataFrame(settings))


def _rows_of(result: SummarisedResult, result_type: str) -> pd.DataFrame:
    ids = result.settings.loc[result.settings["result_type"] == result_type, "result_id"]
    return result.data[result.data["result_id"].isin(set(ids))]


def plot_km(result: SummarisedResult, png: str | Path, *, n_ticks: int = 7) -> Path:
    """KM curves (with "log" CI bands) by stratum and a risk table underneath, as a PNG.

    Reads ``survival_estimates`` and ``survival_events`` of ``result`` (suppressed or not;
    suppressed estimates are left out of the curve, suppressed counts shown as "-").
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    est = _rows_of(result, "survival_estimates")
    ev = _rows_of(result, "survival_events")
    fig, (ax, axt) = plt.subplots(2, 1, figsize=(8, 6.5), gridspec_kw={"height_ratios": [3, 1.2]}, sharex=True)
    keys = est[["strata_level"]].drop_duplicates()["strata_level"].tolist()
    all_t = pd.to_numeric(ev["additional_level"], errors="coerce")
    t_max = float(all_t.max()) if len(all_t) else 1.0
    ticks = np.unique(np.linspace(0, t_max, n_ticks).round())
    for i, level in enumerate(keys):
        e = est[est["strata_level"] == level].copy()
        e["t"] = pd.to_numeric(e["additional_level"])
        wide = e.pivot_table(index="t", columns="estimate_name", values="estimate_value", aggfunc="first")
        wide = wide.apply(pd.to_numeric, errors="coerce").sort_index()
        if "estimate" not in wide:
            continue
        line, = ax.step(wide.index, wide["estimate"], where="post", label=level)
        if {"estimate_95CI_lower", "estimate_95CI_upper"} <= set(wide.columns):
            ax.fill_between(wide.index, wide["estimate_95CI_lower"], wide["estimate_95CI_upper"],
                            step="post", alpha=0.15, color=line.get_color())
        r = ev[(ev["strata_level"] == level) & (ev["estimate_name"] == "n_risk_count")].copy()
        r["t"] = pd.to_numeric(r["additional_level"])
        r = r.set_index("t")["estimate_value"].sort_index()
        for tk in ticks:
            at = r[r.index <= tk]
            txt = at.iloc[-1] if len(at) else ""
            axt.text(tk, -i, SUPPRESSED if txt == SUPPRESSED else txt, ha="center", va="center", fontsize=8,
                     color=line.get_color())
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("Survival probability")
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3)
    axt.set_ylim(-len(keys) + 0.5, 0.5)
    axt.set_yticks([-i for i in range(len(keys))], keys, fontsize=8)
    axt.set_xticks(ticks)
    axt.set_xlabel("Days since index (grid-discretised)")
    axt.set_title("Number at risk", fontsize=9, loc="left")
    for side in ("top", "right", "bottom"):
        axt.spines[side].set_visible(False)
    fig.tight_layout()
    out = Path(png)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
