"""Kaplan-Meier survival released as risk tables on a fixed time grid (CohortSurvival layout).

Mirrors CohortSurvival ``estimateSingleEventSurvival()`` (result types
``survival_estimates``, ``survival_events``, ``survival_summary``; docs/result_layouts.md §5),
which calls ``survival::survfit`` with its defaults.  What is released is chosen so that
the coordinator can pool sites *exactly* from the released counts:

* **Time is discretised to the study grid** ``t_0 = 0 < t_1 < ... < t_K`` (days, from the
  study spec, the same at every site): a time ``t`` with ``t_{k-1} < t <= t_k`` is moved UP to
  ``t_k`` (ceiling to the grid); ``t = 0`` stays at ``t_0``.  Times after ``t_K`` are
  administratively censored at ``t_K``.  The released curve is therefore the ordinary KM
  estimate of the grid-discretised times: ``S(t_k) = S(t_{k-1}) * (1 - d_k / n_k)`` with
  ``n_k`` = at risk at ``t_k`` (discretised time >= t_k, i.e. true time > t_{k-1}),
  ``d_k`` = events in ``(t_{k-1}, t_k]`` and censorings in that interval counted after the
  events (survfit/lifelines convention for ties).  Summing ``n/d/c`` over sites and
  rebuilding gives exactly the KM of the pooled discretised data.
* **Confidence intervals**: Greenwood variance of ``log S``, ``var = sum d/(n(n-d))``, with
  survfit's default ``conf.type = "log"``: ``S * exp(+-z se)``, upper clipped to 1; NA where
  ``S = 0``.  (lifelines uses "log-log" by default; we follow survfit/CohortSurvival.)
* **Median** (and its CI): survfit's rule - the first grid time where ``S <= 0.5`` (the
  smallest point if ``S`` sits at 0.5 over an interval; newer survfit takes the midpoint);
  lower/upper limit = first time where the upper/lower band is ``<= 0.5``; NA if not reached.
* **Survival at horizons** (1/2/5 years = 365/730/1826 days): the step function at the
  horizon, i.e. ``S`` at the last grid time ``<= horizon``.

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


def km_from_table(table: pd.DataFrame, z: float = Z95) -> pd.DataFrame:
    """KM with Greenwood "log" CIs from a risk table (columns time, n_risk, n_event, n_censor).

    Adds ``survival``, ``se_log`` (sd of log S), ``lower``, ``upper``.  Rows after the risk
    set is empty keep the last value (they are not released).
    """
    n = table["n_risk"].to_numpy(dtype=float)
    d = table["n_event"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        step = np.where(n > 0, 1.0 - d / n, 1.0)
        gw = np.where(n > 0, d / (n * (n - d)), 0.0)
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


def _first_time_at_or_below(times: np.ndarray, values: np.ndarray, q: float = 0.5) -> float:
    hit = np.flatnonzero(values <= q)
    return float(times[hit[0]]) if len(hit) else float("nan")


def summary_from_km(km: pd.DataFrame, horizons: Sequence[int] = DEFAULT_HORIZONS) -> dict[str, float]:
    """Median (survfit rule) with CI and survival at the horizons, from :func:`km_from_table`."""
    t = km["time"].to_numpy()
    s = km["survival"].to_numpy()
    lo = np.nan_to_num(km["lower"].to_numpy(), nan=0.0)  # S = 0 -> bands at 0
    up = np.nan_to_num(km["upper"].to_numpy(), nan=0.0)
    out = {
        "number_records_count": float(km["n_risk"].iloc[0]),
        "n_events_count": float(km["n_event"].sum()),
        "median_survival": _first_time_at_or_below(t, s),
        "median_survival_95CI_lower": _first_time_at_or_below(t, up),
        "median_survival_95CI_higher": _first_time_at_or_below(t, lo),
    }
    for h in horizons:
        k = int(np.searchsorted(t, h, side="right")) - 1
        observed = km["n_risk"].iloc[k] > 0 or km["n_event"].iloc[: k + 1].sum() == km["n_risk"].iloc[0]
        row = km.iloc[k]
        vals = (row["survival"], row["lower"], row["upper"]) if observed else (np.nan,) * 3
        out[f"survival_at_{h}"], out[f"survival_at_{h}_95CI_lower"], out[f"survival_at_{h}_95CI_upper"] = vals
    return out


def _num(x: float) -> str | None:
    return None if x is None or not np.isfinite(x) else fmt_float(float(x))


def summarise_survival(cdm_name: str, target_name: str, outcome_name: str,
                       strata: Mapping[str, pd.DataFrame], grid: Sequence[int], *,
                       strata_name: str = "treatment_sequence",
                       horizons: Sequence[int] = DEFAULT_HORIZONS) -> SummarisedResult:
    """KM per stratum as ``survival_estimates`` (1), ``survival_events`` (2), ``survival_summary`` (3).

    ``strata`` maps a strata level (e.g. a treatment sequence; the key ``"overall"`` gives the
    unstratified curve) to per-patient rows with columns ``time`` (days) and ``event`` (0/1).
    Everything released is computed from the grid risk table.  Unsuppressed.
    """
    g = check_grid(grid)
    base = {"cdm_name": cdm_name, "group_name": "target_cohort", "group_level": target_name,
            "variable_name": "outcome", "variable_level": outcome_name}
    rows: list[dict] = []
    for level in sorted(strata):
        df = strata[level]
        st = {"strata_name": OVERALL, "strata_level": OVERALL} if level == OVERALL else \
            {"strata_name": strata_name, "strata_level": str(level)}
        km = km_from_table(risk_table(df["time"].to_numpy(), df["event"].to_numpy(), g))
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
        for est, val in summary_from_km(km, horizons).items():
            rows.append({**base, **st, "additional_name": OVERALL, "additional_level": OVERALL,
                         "result_id": 3, "estimate_name": est, "estimate_type": "numeric",
                         "estimate_value": _num(val) if "count" not in est else str(int(val))})
    common = {"analysis_type": "single_event", "outcome": outcome_name, "competing_outcome": "none",
              "time_grid": ",".join(str(int(x)) for x in g), "time_discretisation": "ceiling_to_grid",
              "conf_type": "log", "horizons": ",".join(str(int(h)) for h in horizons)}
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
