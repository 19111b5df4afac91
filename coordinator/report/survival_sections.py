"""The network report's survival sections: Kaplan-Meier curves with numbers at risk, and the
outcomes at fixed horizons (built from the network result, like :mod:`.sections`)."""

from __future__ import annotations

import pandas as pd

from coordinator.report.plots import km_png
from coordinator.report.sections import FLAG_KEY, View, _num, esc, table
from optima_common.results import SUPPRESSED


def _curves(v: View, g: pd.DataFrame, cdms: list[str], key: str = "cdm_name") -> dict:
    curves = {}
    for name in cdms:
        c = g[g[key] == name].pivot_table(index="additional_level", columns="estimate_name",
                                          values="estimate_value", aggfunc="first")
        if c.empty or "estimate" not in c.columns:
            continue
        c = c.apply(pd.to_numeric, errors="coerce").dropna(subset=["estimate"])
        c.index = c.index.astype(int)
        c = c.sort_index()
        lo = c.get("estimate_95CI_lower", c["estimate"]).fillna(c["estimate"])
        hi = c.get("estimate_95CI_upper", c["estimate"]).fillna(c["estimate"])
        curves[name] = (list(c.index), list(c["estimate"]), list(lo), list(hi))
    return curves


def _at_risk(v: View, ev: pd.DataFrame, t_max: float, ticks: int = 8) -> list[tuple[float, str]]:
    """Number at risk at about ``ticks`` grid times within the plotted range (labels outside the
    axis would stretch the figure)."""
    cells = sorted((float(r["additional_level"]), "<" if r["estimate_value"] == SUPPRESSED else
                    ("≥" if tuple("" if pd.isna(r[k]) else r[k] for k in FLAG_KEY) in v.lower else "")
                    + _num(r["estimate_value"])) for _, r in ev.iterrows())
    cells = [c for c in cells if c[0] <= t_max]
    step = max(1, -(-len(cells) // ticks))
    return cells[::step]


def _t_max(curves: dict) -> float:
    return max((c[0][-1] for c in curves.values() if c[0]), default=0.0)


def km_section(v: View) -> str:
    d = v.rows("survival_estimates")
    d = d[d["estimate_value"] != SUPPRESSED]
    overall = d[d["strata_level"] == "overall"]
    if overall.empty:
        return "<h2>Survival (pooled Kaplan-Meier)</h2><p>no released survival curve</p>"
    out = ["<h2>Survival (pooled Kaplan-Meier from the sites' risk tables)</h2>",
           ('<p class="legend">Bands: 95% CIs (Greenwood, log). Under each plot: number at risk in the network '
            "(&ge; = a lower bound that includes suppressed site cells; &lt; = suppressed).</p>")]
    events = v.rows("survival_events")
    events = events[events["estimate_name"] == "n_risk_count"]
    for (grp, outcome), g in overall.groupby(["group_level", "variable_level"], sort=False):
        ev = events[(events["cdm_name"] == v.pooled) & (events["strata_level"] == "overall")
                    & (events["group_level"] == grp) & (events["variable_level"] == outcome)]
        curves = _curves(v, g, v.cdms)
        png = km_png(f"{grp}: {outcome} — network and sites", curves, {v.pooled: _at_risk(v, ev, _t_max(curves))})
        out.append(f'<figure><img alt="KM {esc(grp)} {esc(outcome)}" src="data:image/png;base64,{png}"></figure>')
        # the seed's question: survival by treatment sequence, pooled
        seq = d[(d["cdm_name"] == v.pooled) & (d["group_level"] == grp) & (d["variable_level"] == outcome)
                & (d["strata_level"] != "overall")]
        levels = list(dict.fromkeys(seq["strata_level"]))
        seq_curves: dict = {}
        if levels:
            seq_curves = {k: c for k, c in _curves(v, seq, levels, "strata_level").items() if len(c[0]) >= 2}
            hidden = [lvl for lvl in levels if lvl not in seq_curves]
            if hidden:
                out.append(f'<p class="legend">Not drawn (no released step after day 0): {esc(", ".join(hidden))}</p>')
        if seq_curves:
            risk = {lvl: _at_risk(v, events[(events["cdm_name"] == v.pooled) & (events["strata_level"] == lvl)
                                             & (events["group_level"] == grp) & (events["variable_level"] == outcome)],
                                  _t_max(seq_curves)) for lvl in seq_curves}
            png = km_png(f"{grp}: {outcome} by treatment sequence (network)", seq_curves, risk)
            out.append(f'<figure><img alt="KM by sequence {esc(grp)}" src="data:image/png;base64,{png}"></figure>')
        risk = events[(events["group_level"] == grp) & (events["variable_level"] == outcome)]
        out.append(f"<h3>Number at risk, {esc(grp)}: {esc(outcome)}</h3>"
                   + v.wide(risk.assign(day=risk["additional_level"].astype(int)).sort_values(["strata_level", "day"]),
                            ["strata_level", "day"], name="number_at_risk", labels=["treatment sequence", "day"]))
    summ = v.rows("survival_summary")
    summ = summ[summ["estimate_name"].str.match(r"^(median_survival|survival_at_\d+)(_95CI_\w+)?$|_count$")]
    out.append("<h3>Median and survival at the horizons</h3>"
               + v.wide(summ, ["strata_level", "variable_level", "estimate_name"], name="survival_summary",
                        labels=["treatment sequence", "outcome", "estimate"]))
    return "".join(out)


def horizons_section(v: View) -> str:
    """Outcomes within/after the study horizons. 'Within' counts are cumulative, so a withheld
    horizon after a visible count c is shown as '&gt;c' (never '&lt;5' after a visible 5)."""
    d = v.rows("outcome_horizons")
    if d.empty:
        return ""
    d = d[d["estimate_name"].isin(["count", "percentage", "population_count"])].copy()
    shown = []
    last: dict[tuple, float] = {}
    d["_days"] = d["variable_level"].map(_horizon_days)
    d = d.sort_values(["cdm_name", "strata_level", "variable_name", "estimate_name", "_days"], kind="mergesort")
    for _, r in d.iterrows():
        key = (r["cdm_name"], r["strata_level"], r["variable_name"], r["estimate_name"])
        within = str(r["variable_level"]).startswith("within") and r["estimate_name"] == "count"
        if within and r["estimate_value"] == SUPPRESSED and last.get(key, 0) > 0:
            shown.append(f'<span class="sup" title="withheld: fewer than {esc(v.mcc.get(r["result_id"], 5))} more '
                         f'than the previous horizon">&gt;{esc(_num(str(last[key])))}</span>')
            continue
        if within:
            x = pd.to_numeric(r["estimate_value"], errors="coerce")
            if pd.notna(x):
                last[key] = float(x)
        shown.append(v.shown(r))
    d["_txt"] = shown
    w = d.pivot_table(index=["strata_level", "variable_name", "variable_level", "_days", "estimate_name"],
                      columns="cdm_name", values="_txt", aggfunc="first", sort=False).reset_index()
    w = w.sort_values(["strata_level", "variable_name", "_days", "estimate_name"], kind="mergesort")
    cdms = [c for c in v.cdms if c in w.columns]
    rows = [[esc(r["strata_level"]), esc(r["variable_name"]), esc(r["variable_level"]), esc(r["estimate_name"])]
            + [r[c] if isinstance(r[c], str) else "" for c in cdms] for _, r in w.iterrows()]
    return ("<h2>Outcomes at the study horizons</h2><p class=\"legend\">'within' counts are cumulative: a horizon "
            "withheld because it adds fewer than the minimum cell count to the previous one is shown as &gt;previous."
            "</p>" + table(["treatment sequence", "outcome", "horizon", "estimate", *cdms], rows, name="outcome_horizons"))


def _horizon_days(label: object) -> float:
    parts = str(label).split()
    try:
        n = float(parts[1])
    except (IndexError, ValueError):
        return -1.0
    unit = parts[2] if len(parts) > 2 else ""
    return n * (30.4375 if unit.startswith("month") else 365.25 if unit.startswith("year") else 1)
