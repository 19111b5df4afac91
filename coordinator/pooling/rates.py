"""Pooled rates, proportions and survival for the network result (see :mod:`coordinator.pooling.results`).

* ``incidence``: events and person-years summed over the sites whose both cells are visible,
  rate per 100,000 person-years with the exact Poisson CI (as IncidencePrevalence); plus a
  DerSimonian-Laird random-effects rate on the log scale (metafor ``IRLN``: 1/2 added to a
  zero count) with ``i_squared``, ``tau_squared``, ``q_statistic``, ``q_p_value``,
  ``meta_sites`` when two or more sites contribute.
* ``prevalence``: numerators and denominators summed, Wilson CI; random effects on the logit
  scale (metafor ``PLO``, 1/2 added to zero cells).
  Sites with a suppressed cell are left out of a rate or proportion, counted in
  ``excluded_sites``; a left-out site never enters as "total minus the others".
* ``survival_events`` -> pooled KM (``survival_estimates`` rows, exact from the summed risk
  tables) and its median and survival at the horizons (``survival_summary`` rows); the sites'
  own survival at each horizon is also meta-analysed on the log scale
  (``survival_at_<h>_random_effects`` ...). Estimates that depend on a suppressed interval are
  ``-``. ``cumulative_incidence_events`` -> pooled Aalen-Johansen CIF (``cumulative_incidence``).
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pandas as pd

from coordinator.pooling.survival import (
    KEY,
    dersimonian_laird,
    dersimonian_laird_groups,
    poisson_rate_ci,
    pooled_cif,
    pooled_km,
    pooled_summary,
    wilson_ci,
)
from optima_common.results import RESULT_COLUMNS, SUPPRESSED, SummarisedResult

RATE_KEY = ["result_id", "group_name", "group_level", "strata_name", "strata_level",
            "additional_name", "additional_level"]
Z = NormalDist().inv_cdf(0.975)


def _fmt(x: float | None) -> str:
    if x is None or not np.isfinite(x):
        return SUPPRESSED
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:.10g}"


def _wide(data: pd.DataFrame, ids: list[int], names: list[str]) -> pd.DataFrame:
    d = data[data["result_id"].isin(ids) & data["estimate_name"].isin(names)]
    d = d.assign(v=pd.to_numeric(d["estimate_value"].where(d["estimate_value"] != SUPPRESSED), errors="coerce"))
    keys = [*RATE_KEY, "cdm_name"]
    wide = d.set_index([*keys, "estimate_name"])["v"]
    wide = wide[~wide.index.duplicated()].unstack("estimate_name")
    return wide.reindex(columns=names).reset_index()


def _row(key: dict, cdm: str, variable: str, name: str, value: float | str | None, etype: str = "numeric") -> dict:
    text = value if isinstance(value, str) else _fmt(value)
    return {**key, "cdm_name": cdm, "variable_name": variable, "variable_level": None, "estimate_name": name,
            "estimate_type": etype, "estimate_value": text}


def _meta_rows(key: dict, cdm: str, var: str, prefix: str, y: list[float], v: list[float], back) -> list[dict]:
    if len(y) < 2:
        return []
    m = dersimonian_laird(y, v)
    return [_row(key, cdm, var, f"{prefix}_random_effects", back(m.estimate)),
            _row(key, cdm, var, f"{prefix}_random_effects_95CI_lower", back(m.lower)),
            _row(key, cdm, var, f"{prefix}_random_effects_95CI_upper", back(m.upper)),
            _row(key, cdm, var, f"{prefix}_i_squared" if prefix.startswith("survival") else "i_squared", m.i2,
                 "percentage"),
            _row(key, cdm, var, f"{prefix}_tau_squared" if prefix.startswith("survival") else "tau_squared", m.tau2),
            _row(key, cdm, var, f"{prefix}_q_statistic" if prefix.startswith("survival") else "q_statistic", m.q),
            _row(key, cdm, var, f"{prefix}_q_p_value" if prefix.startswith("survival") else "q_p_value", m.q_p),
            _row(key, cdm, var, f"{prefix}_meta_sites" if prefix.startswith("survival") else "meta_sites", m.k,
                 "integer")]


_RE_STATS = (("i_squared", "i2", "percentage"), ("tau_squared", "tau2", "numeric"), ("q_statistic", "q", "numeric"),
             ("q_p_value", "q_p", "numeric"), ("meta_sites", "k", "integer"))


def _long(frame: pd.DataFrame, cols: list[tuple[str, str, str]], cdm: str) -> pd.DataFrame:
    """Wide per-key values -> long ``summarised_result`` rows on variable ``Outcome``."""
    parts = []
    for name, col, etype in cols:
        part = frame[RATE_KEY].copy()
        part["estimate_name"], part["estimate_type"] = name, etype
        part["estimate_value"] = [_fmt(x) for x in frame[col].to_numpy(float)]
        parts.append(part)
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=RATE_KEY)
    out["cdm_name"], out["variable_name"], out["variable_level"] = cdm, "Outcome", None
    return out[list(RESULT_COLUMNS)]


def _pool_kind(data: pd.DataFrame, ids: list[int], kind: str, cdm: str) -> pd.DataFrame:
    num, den = ("outcome_count", "person_years") if kind == "incidence" else ("outcome_count", "denominator_count")
    wide = _wide(data, ids, [num, den])
    wide["ok"] = wide[num].notna() & wide[den].notna() & (wide[den] > 0)
    keys = pd.DataFrame({"excluded": (~wide["ok"]).groupby([wide[k] for k in RATE_KEY], dropna=False,
                                                            sort=False).sum()})
    ok = wide[wide["ok"]]
    sums = ok.groupby(RATE_KEY, dropna=False, sort=False)[[num, den]].sum()
    keys = keys.join(sums).reset_index()
    e, t = ok[num].to_numpy(float), ok[den].to_numpy(float)
    if kind == "incidence":
        est = poisson_rate_ci(keys[num].to_numpy(float), keys[den].to_numpy(float))
        prefix = "incidence_100000_pys"
        ec = np.where(e > 0, e, 0.5)
        meta_in = ok[RATE_KEY].assign(y=np.log(ec / t), v=1.0 / ec)

        def back(x):
            return np.exp(x) * 1e5
    else:
        est = wilson_ci(keys[num].to_numpy(float), keys[den].to_numpy(float))
        prefix = "prevalence"
        zero = (e == 0) | (e == t)
        a, b = np.where(zero, e + 0.5, e), np.where(zero, t - e + 0.5, t - e)
        meta_in = ok[RATE_KEY].assign(y=np.log(a / b), v=1 / a + 1 / b)

        def back(x):
            return 1 / (1 + np.exp(-x))
    keys["est"], keys["lo"], keys["hi"] = est
    rows = [_long(keys, [(prefix, "est", "numeric"), (f"{prefix}_95CI_lower", "lo", "numeric"),
                         (f"{prefix}_95CI_upper", "hi", "numeric")], cdm),
            _long(keys[keys["excluded"] > 0], [("excluded_sites", "excluded", "integer")], cdm)]
    if len(meta_in):
        m = dersimonian_laird_groups(meta_in, RATE_KEY)
        for col in ("estimate", "lower", "upper"):
            m[col] = back(m[col].to_numpy(float))
        rows.append(_long(m, [(f"{prefix}_random_effects", "estimate", "numeric"),
                              (f"{prefix}_random_effects_95CI_lower", "lower", "numeric"),
                              (f"{prefix}_random_effects_95CI_upper", "upper", "numeric"),
                              *_RE_STATS], cdm))
    return pd.concat([r for r in rows if len(r)], ignore_index=True)


def pool_rates(data: pd.DataFrame, types: pd.Series, cdm: str, notes: list[str]) -> pd.DataFrame:
    parts = []
    for kind in ("incidence", "prevalence"):
        ids = [int(i) for i in types.index[types == kind]]
        if ids:
            parts.append(_pool_kind(data, ids, kind, cdm))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(RESULT_COLUMNS))


def _site_results(data: pd.DataFrame, settings: pd.DataFrame, rid: int) -> list[SummarisedResult]:
    d = data[data["result_id"] == rid]
    s = settings[settings["result_id"] == rid]
    return [SummarisedResult(g.drop(columns=[]), s) for _, g in d.groupby("cdm_name", sort=True)]


def _target_id(settings: pd.DataFrame, src: pd.Series, result_type: str, extra: list[dict]) -> int:
    """The result id of ``result_type`` whose outcome/analysis settings equal ``src``'s (created if none)."""
    same = settings["result_type"] == result_type
    for col in ("outcome", "analysis_type", "competing_outcome"):
        if col in settings.columns:
            same &= settings[col].fillna("") == (src.get(col) if pd.notna(src.get(col)) else "")
    if same.any():
        return int(settings.loc[same, "result_id"].iloc[0])
    for e in extra:
        if e["result_type"] == result_type and e.get("outcome") == src.get("outcome"):
            return e["result_id"]
    new_id = int(max(settings["result_id"].max(), max((e["result_id"] for e in extra), default=0))) + 1
    extra.append({**{k: v for k, v in src.items() if k not in ("group", "strata", "additional")},
                  "result_id": new_id, "result_type": result_type})
    return new_id


def _curve_rows(curve: pd.DataFrame, rid: int, cdm: str, cols: dict[str, str]) -> list[dict]:
    rows = []
    for r in curve.itertuples(index=False):
        base = {k: getattr(r, k) for k in KEY}
        for name, col in cols.items():
            val = getattr(r, col)
            rows.append({**base, "result_id": rid, "cdm_name": cdm, "estimate_name": name, "estimate_type": "numeric",
                         "estimate_value": _fmt(round(val, 4) if np.isfinite(val) else None),
                         "additional_name": "time", "additional_level": str(int(r.time))})
    return rows


def _horizon_meta(data: pd.DataFrame, sid: int, horizons: list[int], cdm: str) -> list[dict]:
    names = [f"survival_at_{h}{s}" for h in horizons for s in ("", "_95CI_lower", "_95CI_upper")]
    d = data[(data["result_id"] == sid) & data["estimate_name"].isin(names)]
    d = d.assign(v=pd.to_numeric(d["estimate_value"].where(d["estimate_value"] != SUPPRESSED), errors="coerce"))
    key = ["result_id", *KEY, "additional_name", "additional_level"]
    wide = d.set_index([*key, "cdm_name", "estimate_name"])["v"]
    wide = wide[~wide.index.duplicated()].unstack("estimate_name")
    rows = []
    for kv, g in wide.reset_index().groupby(key, dropna=False):
        base = dict(zip(key, kv, strict=True))
        for h in horizons:
            cols = [f"survival_at_{h}", f"survival_at_{h}_95CI_lower", f"survival_at_{h}_95CI_upper"]
            if not set(cols) <= set(g.columns):
                continue
            s, lo, up = (g[c].to_numpy(float) for c in cols)
            ok = np.isfinite(s + lo + up) & (lo > 0) & (s > 0) & (up > lo) & (s < 1)
            se = (np.log(up[ok]) - np.log(lo[ok])) / (2 * Z)
            for r in _meta_rows({}, cdm, base["variable_name"], f"survival_at_{h}", list(np.log(s[ok])),
                                list(se ** 2), math.exp):
                rows.append({**r, **base})
    return rows


def pool_survival(data: pd.DataFrame, settings: pd.DataFrame, cdm: str,
                  notes: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pooled KM/CIF curves, summaries and horizon meta-analyses; new settings rows if needed."""
    rows: list[dict] = []
    extra: list[dict] = []
    by_type = settings.set_index("result_id")["result_type"]
    for rid in [int(i) for i in by_type.index[by_type == "survival_events"]]:
        src = settings[settings["result_id"] == rid].iloc[0]
        try:
            km = pooled_km(_site_results(data, settings, rid))
        except ValueError as exc:
            notes.append(f"pooled KM of result {rid} not computed: {exc}")
            continue
        est_id = _target_id(settings, src, "survival_estimates", extra)
        rows += _curve_rows(km, est_id, cdm, {"estimate": "survival", "estimate_95CI_lower": "lower",
                                              "estimate_95CI_upper": "upper"})
        horizons = [int(h) for h in str(src.get("horizons") or "365,730,1826").split(",") if h.strip().isdigit()]
        sum_id = _target_id(settings, src, "survival_summary", extra)
        for r in pooled_summary(km, horizons).to_dict("records"):
            base = {**{k: r[k] for k in KEY}, "result_id": sum_id, "cdm_name": cdm, "additional_name": "overall",
                    "additional_level": "overall", "estimate_type": "numeric"}
            for name in ["median_survival", "median_survival_95CI_lower", "median_survival_95CI_higher",
                         *[f"survival_at_{h}{s}" for h in horizons for s in ("", "_95CI_lower", "_95CI_upper")]]:
                val = r[name]
                rows.append({**base, "estimate_name": name,
                             "estimate_value": _fmt(round(val, 4) if pd.notna(val) else None)})
        rows += _horizon_meta(data, sum_id, horizons, cdm)
    for rid in [int(i) for i in by_type.index[by_type == "cumulative_incidence_events"]]:
        src = settings[settings["result_id"] == rid].iloc[0]
        try:
            cif = pooled_cif(_site_results(data, settings, rid))
        except ValueError as exc:
            notes.append(f"pooled CIF of result {rid} not computed: {exc}")
            continue
        cid = _target_id(settings, src, "cumulative_incidence", extra)
        rows += _curve_rows(cif, cid, cdm, {"estimate": "cif"})
        competing = src.get("competing_outcome")
        if isinstance(competing, str) and competing not in ("", "none"):
            rows += _curve_rows(cif.assign(variable_level=competing), cid, cdm, {"estimate": "cif_competing"})
    out = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    return out, pd.DataFrame(extra)
