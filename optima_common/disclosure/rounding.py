"""Site option ``round_counts_to = b``: released counts rounded to the nearest multiple of ``b``.

Applied to the bound table after primary suppression and before the audit (site_agent's
``study_exec``): every released count ``v >= min`` becomes ``b * round(v / b)`` (halves up), at
least ``b``; zeros stay exact zeros and withheld counts stay withheld. Risk tables already
released from rounded cumulative counts (``count_rounding = cumulative_<b>``) are left as they
are. Each rounded result says so in its settings (``count_rounding = nearest_<b>``), and a
reader, the coordinator's audit and the attacker tests take a released ``v`` to mean the
exact preimage of the rounding:

* ``v == b``: the true count lies in ``[min, b + ceil(b/2) - 1]``;
* ``v > b``: in ``[max(v - floor(b/2), min), v + ceil(b/2) - 1]``.

Estimates derived from rounded counts are recomputed from the rounded counts, so nothing
derived gives the exact count back: a ``percentage`` from its cell's count and its
denominator (the cell's ``population_count`` or ``denominator_count``, else the group's number of
records, else of subjects), an incidence rate and its exact Poisson CI from the rounded
``outcome_count`` and the person-years, a prevalence and its Wilson CI from the rounded outcome
and denominator counts. A percentage whose denominator cannot be found is withheld.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from optima_common.disclosure.frame import (
    CELL_KEY,
    GROUP_KEY,
    ROUNDING,
    audit_frame,
    key,
    norm_variable,
)
from optima_common.results import SUPPRESSED, SummarisedResult

PREFIX = "nearest_"


def rounded(v: np.ndarray, base: int) -> np.ndarray:
    r = base * np.floor(np.asarray(v, dtype=float) / base + 0.5)
    return np.where(v > 0, np.maximum(r, base), 0.0)


def preimage(v: np.ndarray, base: np.ndarray, minimum: int) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) of the true counts behind released rounded counts ``v`` (0 stays 0)."""
    v = np.asarray(v, dtype=float)
    b = np.asarray(base, dtype=float)
    lo = np.where(v == b, minimum, np.maximum(v - np.floor(b / 2), minimum))
    hi = v + np.ceil(b / 2) - 1
    return np.where(v > 0, lo, 0.0), np.where(v > 0, hi, 0.0)


def released_intervals(v: np.ndarray, rounding: np.ndarray, minimum: int) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) of the true counts a reader can infer from released counts ``v`` with their result's
    ``count_rounding`` setting: ``""`` exact (lo = hi = v); ``nearest_<b>`` the preimage above;
    ``cumulative_<b>`` (differences of counts rounded cumulatively, or read off such a table) within
    ``b - 1`` either way, never below 0. Used by the release history to compare like with like."""
    v = np.asarray(v, dtype=float)
    rk = pd.Series(np.asarray(rounding, dtype=object)).fillna("").astype(str)
    base = pd.to_numeric(rk.str.extract(r"_(\d+)$")[0], errors="coerce").fillna(0).to_numpy(dtype=float)
    lo, hi = v.copy(), v.copy()
    near = rk.str.startswith(PREFIX).to_numpy() & (base >= 2)
    if near.any():
        lo[near], hi[near] = preimage(v[near], base[near], minimum)
    cum = rk.str.startswith("cumulative_").to_numpy() & (base >= 2)
    if cum.any():
        lo[cum] = np.maximum(v[cum] - (base[cum] - 1), 0.0)
        hi[cum] = v[cum] + base[cum] - 1
    return lo, hi


def _fmt(x: float) -> str | None:
    return None if x is None or not np.isfinite(x) else f"{x:.10g}"


def round_counts(result: SummarisedResult, base: int, minimum: int) -> SummarisedResult:
    if base < 2 or result.data.empty:
        return result
    f = audit_frame(result)
    d = result.data.copy()
    target = f["is_count"].to_numpy() & ~f["suppressed"].to_numpy() & ~f["rounding"].str.startswith("cumulative").to_numpy(dtype=bool)
    num = f["num"].to_numpy()
    new = num.copy()
    new[target] = rounded(num[target], base)
    d.loc[target, "estimate_value"] = [str(int(x)) for x in new[target]]
    ids = set(d.loc[target, "result_id"])
    settings = result.settings.copy()
    if ROUNDING not in settings.columns:
        settings[ROUNDING] = None
    mark = settings["result_id"].isin(ids) & ~settings[ROUNDING].fillna("").astype(str).str.startswith("cumulative")
    settings.loc[mark, ROUNDING] = f"{PREFIX}{int(base)}"
    _recompute(d, f, new, target)
    return result.with_data(d, settings)


def _recompute(d: pd.DataFrame, f: pd.DataFrame, new: np.ndarray, rounded_rows: np.ndarray) -> None:
    from scipy.stats import (  # here: the audit imports this module and needs neither
        chi2,
        norm,
    )
    est = f["estimate_name"].to_numpy()
    ck, gk = key(f, CELL_KEY), key(f, GROUP_KEY)
    var = norm_variable(f["variable_name"])
    val = pd.Series(new, index=f.index)

    def by(keys: pd.Series, mask) -> dict:
        m = np.asarray(mask) & ~np.isnan(new)
        return dict(zip(keys[m], val[m]))

    touched_cells = set(ck[rounded_rows])
    cell_count = by(ck, est == "count")
    cell_den = by(ck, est == "population_count") | {k: v for k, v in by(ck, est == "denominator_count").items()}
    grp_rec = by(gk, (var == "number records").to_numpy() & (est == "count"))
    grp_sub = by(gk, (var == "number subjects").to_numpy() & (est == "count"))
    pct = (est == "percentage") & ck.isin(touched_cells | set(ck[rounded_rows])).to_numpy()
    for i in np.flatnonzero(pct):
        k, g = ck.iat[i], gk.iat[i]
        n = cell_den.get(k, grp_rec.get(g, grp_sub.get(g)))
        c = cell_count.get(k)
        d.iat[i, d.columns.get_loc("estimate_value")] = (
            _fmt(100.0 * c / n) if c is not None and n else SUPPRESSED)
    # incidence: rate and exact Poisson CI from the rounded outcome count and the person-years
    inc = (f["result_type"] == "incidence").to_numpy()
    if inc.any():
        gkey = key(f, ["result_id", "group_level", "strata_level", "additional_level"])
        out = by(gkey, inc & (est == "outcome_count"))
        py = dict(zip(gkey[inc & (est == "person_years")], pd.to_numeric(f.loc[inc & (est == "person_years"), "estimate_value"],
                                                                          errors="coerce")))
        for i in np.flatnonzero(inc & np.isin(est, ["incidence_100000_pys", "incidence_100000_pys_95CI_lower",
                                                    "incidence_100000_pys_95CI_upper"])):
            k_, p_ = out.get(gkey.iat[i]), py.get(gkey.iat[i])
            if k_ is None or not p_ or not rounded_rows[(gkey == gkey.iat[i]).to_numpy() & (est == "outcome_count")].any():
                continue
            x = {"incidence_100000_pys": k_ / p_,
                 "incidence_100000_pys_95CI_lower": (chi2.ppf(0.025, 2 * k_) / 2 / p_) if k_ > 0 else 0.0,
                 "incidence_100000_pys_95CI_upper": chi2.ppf(0.975, 2 * (k_ + 1)) / 2 / p_}[est[i]] * 1e5
            d.iat[i, d.columns.get_loc("estimate_value")] = _fmt(x)
    # prevalence: proportion and Wilson CI from the rounded counts
    prev = (f["result_type"] == "prevalence").to_numpy()
    if prev.any():
        gkey = key(f, ["result_id", "group_level", "strata_level", "additional_level"])
        o, n = by(gkey, prev & (est == "outcome_count")), by(gkey, prev & (est == "denominator_count"))
        z = norm.ppf(0.975)
        for i in np.flatnonzero(prev & np.isin(est, ["prevalence", "prevalence_95CI_lower", "prevalence_95CI_upper"])):
            k_, n_ = o.get(gkey.iat[i]), n.get(gkey.iat[i])
            if k_ is None or not n_:
                continue
            p = k_ / n_
            centre, half = (p + z * z / (2 * n_)) / (1 + z * z / n_), z * math.sqrt(p * (1 - p) / n_ + z * z / (4 * n_ * n_)) / (1 + z * z / n_)
            x = {"prevalence": p, "prevalence_95CI_lower": max(centre - half, 0.0),
                 "prevalence_95CI_upper": min(centre + half, 1.0)}[est[i]]
            d.iat[i, d.columns.get_loc("estimate_value")] = _fmt(x)
